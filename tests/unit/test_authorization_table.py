"""The method-to-role table, against the API's own descriptors and the documented table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor

from modelroute.v1 import access_token_pb2, audit_pb2, model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2
from modelroute_server.domain.access import Role
from modelroute_server.entrypoints.authorization import METHOD_ROLES

A, R, S, U = Role.ADMIN, Role.READER, Role.RESOLVER, Role.USER_KEYS
FILES = (provider_config_pb2, model_config_pb2, user_key_pb2, resolver_pb2, audit_pb2, access_token_pb2)

# The table as specified, row by row.
DOCUMENTED: dict[str, set[Role]] = {
    "ProviderConfigService/CreateProviderConfig": {A},
    "ProviderConfigService/UpdateProviderConfig": {A},
    "ProviderConfigService/DeleteProviderConfig": {A},
    "ProviderConfigService/ResetProviderHealth": {A},
    "ModelConfigService/CreateModelConfig": {A},
    "ModelConfigService/UpdateModelConfig": {A},
    "ModelConfigService/DeleteModelConfig": {A},
    "ModelConfigService/UndeleteModelConfig": {A},
    "ProviderConfigService/GetProviderConfig": {A, R},
    "ProviderConfigService/ListProviderConfigs": {A, R},
    "ModelConfigService/GetModelConfig": {A, R},
    "ModelConfigService/ListModelConfigs": {A, R},
    "UserKeyService/SetUserProviderKey": {U},
    "UserKeyService/DeleteUserProviderKey": {A, U},
    "UserKeyService/ListUserProviderConfigs": {A, R, U},
    "ResolverService/ResolveModel": {S},
    "ResolverService/ListAvailableModels": {A, R, S, U},
    "ResolverService/ExplainResolution": {A, R},
    "ResolverService/ReportAttempts": {S},
    "AuditService/ListAuditEvents": {A, R},
    "AccessTokenService/CreateAccessToken": {A},
    "AccessTokenService/ListAccessTokens": {A},
    "AccessTokenService/RevokeAccessToken": {A},
}


def api_methods() -> dict[str, Descriptor]:
    """Every method of every modelroute service, by full gRPC path, with its response type."""
    return {
        f"/{service.full_name}/{method.name}": method.output_type
        for module in FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_method_has_exactly_one_row_and_no_row_names_a_missing_method() -> None:
    assert set(METHOD_ROLES) == set(api_methods())


@pytest.mark.parametrize(("method", "roles"), sorted(DOCUMENTED.items()))
def test_each_row_matches_the_documented_table(method: str, roles: set[Role]) -> None:
    assert METHOD_ROLES[f"/modelroute.v1.{method}"] == roles


def test_the_documented_table_covers_every_method() -> None:
    assert {f"/modelroute.v1.{m}" for m in DOCUMENTED} == set(api_methods())


def _carries_a_secret(message: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a response can carry an API key: an output field named api_key, at any depth."""
    if message.full_name in seen:
        return False
    for field in message.fields:
        if field.name == "api_key" and message.full_name != "modelroute.v1.ProviderConfig":
            return True
        if field.message_type is not None and _carries_a_secret(field.message_type, seen | {message.full_name}):
            return True
    return False


def test_only_the_resolver_role_reaches_a_response_that_carries_secrets() -> None:
    # ProviderConfig.api_key is input only: the server never fills it in a response.
    secret_bearing = {path for path, output in api_methods().items() if _carries_a_secret(output)}
    assert secret_bearing == {"/modelroute.v1.ResolverService/ResolveModel"}
    for path in secret_bearing:
        assert METHOD_ROLES[path] == {Role.RESOLVER}


def documented_table() -> dict[str, set[Role]]:
    """The roles table of docs/security.md, by method name."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    section = text[text.index("| method | admin | reader | resolver | user-keys |") :].split("\n\n", 1)[0]
    columns = (A, R, S, U)
    table: dict[str, set[Role]] = {}
    for line in section.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        roles = {role for role, cell in zip(columns, cells[1:], strict=True) if cell == "yes"}
        for method in re.findall(r"`(\w+)`", cells[0]):
            table[method] = roles
    return table


def test_the_operators_documentation_shows_the_table_the_code_enforces() -> None:
    enforced = {path.rsplit("/", 1)[1]: roles for path, roles in METHOD_ROLES.items()}
    assert documented_table() == enforced
