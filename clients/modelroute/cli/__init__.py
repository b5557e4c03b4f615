"""`modelroute-admin`: administer and inspect modelroute from a shell.

Tables with status badges for people; `--output json` (or `--json`) prints exactly one JSON document per
command, with zero and false values present, for scripts. Global options may come anywhere on the line.

Credentials: MODELROUTE_TOKEN, else the file MODELROUTE_TOKEN_FILE names, else the embedded server's token
file of the role the command needs (`<MODELROUTE_DATA_DIR, default .modelroute>/<role>.token`).
Keys are never taken on the command line: they come from stdin (no echo at a terminal) or a variable.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..channel import DEFAULT_TARGET
from ..credentials import TLS
from . import access, configs, resolution
from .session import EXIT_CODES_HELP, ExitCode, Output, Session

app = typer.Typer(
    name="modelroute-admin",
    help=__doc__.split("\n\n")[0] + "\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(configs.providers, name="providers")
app.add_typer(configs.models, name="models")
app.add_typer(access.user_keys, name="user-keys")
app.add_typer(access.tokens, name="tokens")
app.add_typer(access.audit, name="audit")
app.add_typer(resolution.importing, name="import")
resolution.register(app)

# Global options and whether they take a value: accepted anywhere on the line, moved before the command.
GLOBAL_OPTIONS = {
    "--target": True,
    "--output": True,
    "-o": True,
    "--timeout": True,
    "--ca-file": True,
    "--cert-file": True,
    "--key-file": True,
    "--server-name": True,
    "--tls": False,
    "--json": False,
}


@app.callback()
def root(
    ctx: typer.Context,
    target: Annotated[str, typer.Option(envvar="MODELROUTE_TARGET", help="host:port of the service")] = DEFAULT_TARGET,
    output: Annotated[Output, typer.Option("--output", "-o", help="table for people, json for scripts")] = Output.table,
    json_output: Annotated[bool, typer.Option("--json", help="the same as --output json")] = False,
    timeout: Annotated[float, typer.Option(help="deadline of each call, in seconds")] = 10.0,
    tls: Annotated[bool, typer.Option("--tls", help="use TLS with the system's trusted roots")] = False,
    ca_file: Annotated[
        str | None,
        typer.Option(
            envvar="MODELROUTE_SERVER_CA_FILE", help="verify the server's certificate with this CA; implies TLS"
        ),
    ] = None,
    cert_file: Annotated[
        str | None, typer.Option(envvar="MODELROUTE_CLIENT_CERT_FILE", help="client certificate (mutual TLS)")
    ] = None,
    key_file: Annotated[
        str | None, typer.Option(envvar="MODELROUTE_CLIENT_KEY_FILE", help="client key (mutual TLS)")
    ] = None,
    server_name: Annotated[str | None, typer.Option(help="the name to check the server's certificate against")] = None,
) -> None:
    settings = None
    if tls or ca_file or cert_file:
        settings = TLS.from_files(ca_file, cert_file, key_file, server_name)
    session = Session(target, Output.json if json_output else output, timeout, settings)
    ctx.obj = session
    ctx.call_on_close(session.close)


def hoisted(argv: list[str]) -> list[str]:
    """The global options moved to the front, so `models list --output json` works like
    `--output json models list`."""
    front: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            rest += argv[index:]
            break
        name = word.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in word
            front += argv[index : index + (2 if takes_value else 1)]
            index += 2 if takes_value else 1
            continue
        rest.append(word)
        index += 1
    return front + rest


def main(argv: list[str] | None = None) -> int:
    arguments = hoisted(list(sys.argv[1:] if argv is None else argv))
    try:
        result = app(args=arguments, prog_name="modelroute-admin", standalone_mode=False)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return int(ExitCode.FAILED)
    except typer.TyperException as error:  # a usage error: typer's vendored click says what was wrong
        show = getattr(error, "show", None)
        if show is None:
            raise
        show()
        return int(ExitCode.USAGE)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
