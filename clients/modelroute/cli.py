"""`modelroute-admin`: administer and inspect modelroute from a shell.

Keys are never taken on the command line (it leaks into process lists and
shell history): pass `--api-key-env VAR` or `--api-key-stdin`. Secrets in
ResolveModel answers are redacted unless `--show-secrets` is given.

Credentials: MODELROUTE_TOKEN, else the file MODELROUTE_TOKEN_FILE names, else
the embedded server's token file of the role the command needs
(`<MODELROUTE_DATA_DIR, default .modelroute>/<role>.token`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from .client import (
    ModelMutation,
    ModelrouteClient,
    ModelrouteError,
    family_from_name,
    model_config_name,
    role_from_name,
)
from .credentials import TLS, CredentialsError, read_token_file, token_from_env
from .v1 import common_pb2, model_config_pb2, provider_config_pb2

# The role each command needs, for finding an embedded token file when no token is configured.
COMMAND_ROLES = {
    ("providers", "create"): "admin",
    ("providers", "delete"): "admin",
    ("models", "create"): "admin",
    ("models", "set-providers"): "admin",
    ("models", "delete"): "admin",
    ("models", "undelete"): "admin",
    ("tokens", "create"): "admin",
    ("tokens", "list"): "admin",
    ("tokens", "revoke"): "admin",
    ("resolve", None): "resolver",
}
DEFAULT_ROLE = "reader"

POLICIES = {
    "central-only": (True, False, False),
    "user-only": (False, True, False),
    "user-required": (True, True, False),
    "user-preferred": (True, True, True),
}


def _print(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


def _print_mutation(mutation: ModelMutation) -> None:
    _print(mutation.model_config)
    if mutation.default_changed:
        # On stderr: stdout stays one JSON document per resource.
        print(f"default model is now {mutation.default_model_config or '(none)'}", file=sys.stderr)


def _print_all(messages: Iterable[Message]) -> None:
    for message in messages:
        _print(message)


def _api_key(options: argparse.Namespace) -> str:
    if options.api_key_env:
        value = os.environ.get(options.api_key_env)
        if value is None:
            raise SystemExit(f"modelroute-admin: environment variable {options.api_key_env} is not set")
        return value
    if options.api_key_stdin:
        return sys.stdin.readline().rstrip("\n")
    return ""


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--api-key-env", metavar="VAR", help="read the API key from this environment variable")
    group.add_argument("--api-key-stdin", action="store_true", help="read the API key from the first line of stdin")


def _attachment(text: str) -> model_config_pb2.Attachment:
    """`ID` or `ID=UPSTREAM`: a provider config, and the upstream model name to send it instead of the model's."""
    provider_config_id, _, upstream = text.partition("=")
    if not provider_config_id:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ID or ID=UPSTREAM_MODEL")
    return model_config_pb2.Attachment(provider_config=f"providerConfigs/{provider_config_id}", model=upstream)


_ATTACHMENT_HELP = (
    "provider config id, in priority order; ID=UPSTREAM sends that provider UPSTREAM instead of the model's "
    "name (needed for a provider of another family)"
)


def _family(text: str) -> common_pb2.Family.ValueType:
    try:
        return family_from_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _role(text: str) -> str:
    try:
        role_from_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelroute-admin", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default=os.environ.get("MODELROUTE_TARGET", "127.0.0.1:50051"), help="host:port of the service"
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("MODELROUTE_SERVER_CA_FILE"),
        help="verify the server's TLS certificate with this CA (env MODELROUTE_SERVER_CA_FILE); implies TLS",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's trusted roots")
    parser.add_argument(
        "--cert-file", default=os.environ.get("MODELROUTE_CLIENT_CERT_FILE"), help="client certificate (mutual TLS)"
    )
    parser.add_argument(
        "--key-file", default=os.environ.get("MODELROUTE_CLIENT_KEY_FILE"), help="client key (mutual TLS)"
    )
    parser.add_argument("--server-name", help="the name to check the server's certificate against")
    groups = parser.add_subparsers(dest="group", required=True)

    providers = groups.add_parser("providers").add_subparsers(dest="verb", required=True)
    providers.add_parser("list").add_argument("--filter", default="")
    providers.add_parser("get").add_argument("id")
    create = providers.add_parser("create")
    create.add_argument("id")
    create.add_argument("--family", type=_family, required=True, help="case-insensitive family name")
    create.add_argument("--display-name", default="")
    create.add_argument("--base-url", default="")
    create.add_argument("--disabled", action="store_true")
    create.add_argument("--policy", choices=sorted(POLICIES), default="central-only")
    _add_key_options(create)
    delete = providers.add_parser("delete")
    delete.add_argument("id")
    delete.add_argument("--force", action="store_true", help="detach from every model first")

    models = groups.add_parser("models").add_subparsers(dest="verb", required=True)
    models.add_parser("list").add_argument("--show-deleted", action="store_true")
    models.add_parser("get").add_argument("id")
    mcreate = models.add_parser("create")
    mcreate.add_argument("id")
    mcreate.add_argument("--family", type=_family, required=True)
    mcreate.add_argument("--model", required=True, help="upstream model name")
    mcreate.add_argument("--context-limit", type=int, required=True)
    mcreate.add_argument("--provider", action="append", default=[], type=_attachment, help=_ATTACHMENT_HELP)
    set_providers = models.add_parser("set-providers", help="replace a model's ordered attachments")
    set_providers.add_argument("id")
    set_providers.add_argument("providers", nargs="+", type=_attachment, metavar="ID[=UPSTREAM]", help=_ATTACHMENT_HELP)
    models.add_parser("delete").add_argument("id")
    models.add_parser("undelete").add_argument("id")

    resolve = groups.add_parser("resolve", help="ResolveModel")
    resolve.add_argument("model", nargs="?", default="")
    resolve.add_argument("--user", default="")
    resolve.add_argument("--show-secrets", action="store_true")
    explain = groups.add_parser("explain", help="ExplainResolution (never shows secrets)")
    explain.add_argument("model", nargs="?", default="")
    explain.add_argument("--user", default="")
    available = groups.add_parser("available", help="ListAvailableModels")
    available.add_argument("--user", default="")
    user_keys = groups.add_parser("user-keys").add_subparsers(dest="verb", required=True)
    user_keys.add_parser("list").add_argument("user")

    tokens = groups.add_parser("tokens", help="access tokens (admin)").add_subparsers(dest="verb", required=True)
    tcreate = tokens.add_parser("create", help="create a token; its secret is printed once")
    tcreate.add_argument("id", help="the token's name: a lower-case slug")
    tcreate.add_argument(
        "--role", action="append", required=True, type=_role, help="admin, reader, resolver or user-keys; repeatable"
    )
    tcreate.add_argument("--ttl-seconds", type=int, help="lifetime in seconds (default: none)")
    tokens.add_parser("list", help="every token, revoked and expired ones included")
    tokens.add_parser("revoke", help="revoke a token on every replica").add_argument("id")
    audit = groups.add_parser("audit", help="the audit log").add_subparsers(dest="verb", required=True)
    audit.add_parser("list", help="newest first").add_argument(
        "--filter", default="", help='for example: resource = "providerConfigs/openai-main"'
    )
    return parser


def token_file_for(role: str, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("MODELROUTE_DATA_DIR", ".modelroute")) / f"{role}.token"


def command_token(options: argparse.Namespace) -> str | None:
    """MODELROUTE_TOKEN, else MODELROUTE_TOKEN_FILE, else the embedded token file of the role needed."""
    token = token_from_env()
    if token is not None:
        return token
    role = COMMAND_ROLES.get((options.group, getattr(options, "verb", None)), DEFAULT_ROLE)
    path = token_file_for(role)
    return read_token_file(path) if path.exists() else None


def _tls(options: argparse.Namespace) -> TLS | None:
    if not (options.tls or options.ca_file or options.cert_file):
        return None
    return TLS.from_files(options.ca_file, options.cert_file, options.key_file, options.server_name)


def run(options: argparse.Namespace, client: ModelrouteClient) -> None:
    group, verb = options.group, getattr(options, "verb", None)
    if group == "providers" and verb == "list":
        _print_all(client.list_provider_configs(filter=options.filter))
    elif group == "providers" and verb == "get":
        _print(client.get_provider_config(options.id))
    elif group == "providers" and verb == "create":
        c, u, f = POLICIES[options.policy]
        message = provider_config_pb2.ProviderConfig(
            family=options.family,
            display_name=options.display_name,
            base_url=options.base_url,
            enabled=not options.disabled,
            credential_policy=common_pb2.CredentialPolicy(
                central_api_key_enabled=c, allow_user_api_key=u, allow_central_api_key_fallback=f
            ),
            api_key=_api_key(options),
        )
        _print(client.create_provider_config(options.id, message))
    elif group == "providers" and verb == "delete":
        _print(client.delete_provider_config(options.id, force=options.force))
    elif group == "models" and verb == "list":
        _print_all(client.list_model_configs(show_deleted=options.show_deleted))
    elif group == "models" and verb == "get":
        _print(client.get_model_config(options.id))
    elif group == "models" and verb == "create":
        model = model_config_pb2.ModelConfig(
            family=options.family,
            model=options.model,
            context_limit=options.context_limit,
            attachments=options.provider,
        )
        _print_mutation(client.create_model_config(options.id, model))
    elif group == "models" and verb == "set-providers":
        model = model_config_pb2.ModelConfig(name=model_config_name(options.id), attachments=options.providers)
        _print_mutation(client.update_model_config(model, ["attachments"]))
    elif group == "models" and verb == "delete":
        _print_mutation(client.delete_model_config(options.id))
    elif group == "models" and verb == "undelete":
        _print_mutation(client.undelete_model_config(options.id))
    elif group == "resolve":
        answer = client.resolve(options.model, options.user)
        if not options.show_secrets:
            for attachment in (answer.selected, *answer.fallbacks):
                if attachment.api_key:
                    attachment.api_key = "<redacted>"
        _print(answer)
    elif group == "explain":
        _print(client.explain(options.model, options.user))
    elif group == "available":
        _print_all(client.available_models(options.user))
    elif group == "user-keys":
        _print_all(client.user_provider_configs(options.user))
    elif group == "tokens" and verb == "create":
        created = client.create_access_token(options.id, options.role, options.ttl_seconds)
        print("the token's secret follows, shown this once:", file=sys.stderr)
        _print(created)
    elif group == "tokens" and verb == "list":
        _print_all(client.list_access_tokens())
    elif group == "tokens" and verb == "revoke":
        _print(client.revoke_access_token(options.id))
    elif group == "audit":
        _print_all(client.list_audit_events(options.filter))


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        token, tls = command_token(options), _tls(options)
    except (CredentialsError, OSError) as exc:
        print(f"modelroute-admin: {exc}", file=sys.stderr)
        return 2
    with ModelrouteClient(options.target, token=token or "", tls=tls) as client:
        try:
            run(options, client)
        except ModelrouteError as error:
            print(f"modelroute-admin: {error}", file=sys.stderr)
            for field_path, description in error.field_violations:
                print(f"  {field_path}: {description}", file=sys.stderr)
            for kind, subject, description in error.precondition_violations:
                print(f"  {subject} [{kind}]: {description}", file=sys.stderr)
            if error.code is grpc.StatusCode.UNAUTHENTICATED and not token:
                print(
                    "  no token: set MODELROUTE_TOKEN or MODELROUTE_TOKEN_FILE (an embedded server writes "
                    "its tokens to .modelroute/<role>.token)",
                    file=sys.stderr,
                )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
