"""What every command shares: the connection options, the token of the role it needs, reading keys,
printing, and turning failures into one message and an exit code by class."""

from __future__ import annotations

import enum
import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
import typer
from rich.console import Console

from ..client import Client
from ..credentials import TLS, CredentialsError, read_token_file, token_from_env
from ..errors import ModelrouteError


class Output(enum.StrEnum):
    table = "table"
    json = "json"


class ExitCode(enum.IntEnum):
    """By the class of the failure, so that scripts can branch without parsing messages."""

    OK = 0
    FAILED = 1  # anything else: the service failed (INTERNAL, UNKNOWN) or the input file is unusable
    USAGE = 2  # the command line, or a request the service rejected as INVALID_ARGUMENT
    NOT_FOUND = 3
    PRECONDITION = 4  # FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED (a stale etag: read again and retry)
    UNAVAILABLE = 5  # UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED: retry later
    PERMISSION = 6  # UNAUTHENTICATED, PERMISSION_DENIED


EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.USAGE,
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.PRECONDITION,
    grpc.StatusCode.ABORTED: ExitCode.PRECONDITION,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.PERMISSION,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.PERMISSION,
}

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 the service failed; 2 usage or an invalid request; 3 not found; "
    "4 a precondition failed (already exists, stale etag, in use); 5 unavailable, retry later; "
    "6 not authenticated or not permitted."
)


class CommandFailed(Exception):
    """A failure found before or after a call, with the exit code it gives."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


def token_file_for(role: str, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("MODELROUTE_DATA_DIR", ".modelroute")) / f"{role}.token"


def console_for(stream: Any) -> Console:
    # Not a terminal (a pipe, a test): no colours and a width that keeps table rows on one line.
    terminal = stream.isatty()
    return Console(file=stream, width=None if terminal else 200, no_color=not terminal, highlight=False)


@dataclass
class Session:
    """The global options, and the client of the role a command needs (opened once, on first use)."""

    target: str
    output: Output = Output.table
    timeout: float = 10.0
    tls: TLS | None = None
    _client: Client | None = field(default=None, repr=False)
    _token_source: str = ""

    @property
    def json(self) -> bool:
        return self.output is Output.json

    def client(self, role: str) -> Client:
        """The client, with MODELROUTE_TOKEN, else MODELROUTE_TOKEN_FILE, else the embedded server's token
        file of `role` (`<MODELROUTE_DATA_DIR or .modelroute>/<role>.token`)."""
        if self._client is None:
            token = token_from_env()
            self._token_source = "MODELROUTE_TOKEN or MODELROUTE_TOKEN_FILE"
            if token is None:
                path = token_file_for(role)
                self._token_source = str(path)
                token = read_token_file(path) if path.exists() else None
            if token is None:
                self._token_source = ""
            self._client = Client(self.target, self.timeout, token=token or "", tls=self.tls)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def emit(self, document: Any, render: Any = None) -> None:
        """One JSON document (with --output json), else the table `render` draws (or the document)."""
        if self.json:
            print(json.dumps(document, indent=2, sort_keys=False))
        elif render is not None:
            render(console_for(sys.stdout))
        else:
            console_for(sys.stdout).print_json(data=document)

    def note(self, text: str) -> None:
        """A remark for people (stderr, so that stdout stays one document)."""
        console_for(sys.stderr).print(text)

    def fail(self, error: ModelrouteError | CommandFailed | CredentialsError) -> NoReturn:
        """Prints the failure once (reason, message, field and precondition violations) and exits."""
        if isinstance(error, ModelrouteError):
            code = EXIT_CODES.get(error.code, ExitCode.FAILED)
            document: dict[str, Any] = {
                "code": error.code.name,
                "reason": error.reason,
                "message": error.message,
                "field_violations": [{"field": f, "description": d} for f, d in error.field_violations],
                "precondition_violations": [
                    {"type": t, "subject": s, "description": d} for t, s, d in error.precondition_violations
                ],
            }
            lines = [f"error: {error.code.name} {error.reason}: {error.message}".replace("  ", " ")]
            lines += [f"  {f}: {d}" for f, d in error.field_violations]
            lines += [f"  {s} [{t}]: {d}" for t, s, d in error.precondition_violations]
            if error.code is grpc.StatusCode.UNAUTHENTICATED and not self._token_source:
                lines.append(
                    "  no token: set MODELROUTE_TOKEN or MODELROUTE_TOKEN_FILE (an embedded server writes "
                    "one per role to .modelroute/<role>.token)"
                )
        else:
            code = error.code if isinstance(error, CommandFailed) else ExitCode.USAGE
            document = {"code": code.name, "reason": "", "message": str(error)}
            lines = [f"error: {error}"]
        if self.json:
            print(json.dumps({"error": document}, indent=2), file=sys.stderr)
        else:
            err = console_for(sys.stderr)
            for line in lines:
                err.print(line, markup=False)
        raise typer.Exit(int(code))


@contextmanager
def failures(session: Session) -> Iterator[None]:
    """Every expected failure of a command becomes one message and its exit code."""
    try:
        yield
    except (ModelrouteError, CommandFailed, CredentialsError) as error:
        session.fail(error)


def read_secret(env_var: str | None, prompt: str) -> str:
    """A key from an environment variable, else from stdin: typed without echo at a terminal, else its
    first line. Never from the command line (it would sit in the process list and the shell history)."""
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise CommandFailed(f"environment variable {env_var} is not set")
        return value
    value = getpass.getpass(f"{prompt}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise CommandFailed("no key given: type it, pipe it on stdin, or name a variable with --api-key-env")
    return value
