"""Every error reason a remote caller can provoke, provoked: its status code is the one the protos give it,
the client raises its own class, and the details a caller needs are there.

The reasons that need the server's own state broken (a database away, a schema mid-upgrade, a replica at
its limit) are listed in NOT_REMOTELY_PROVOKABLE with the in-process test that covers each; together the two
name every value of the ErrorReason enum.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from modelroute import Client, ModelrouteError, errors
from modelroute.client import stubs_for
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2

from .support import (
    RESERVED_FAMILY,
    ContractTarget,
    all_reasons,
    make_model,
    make_provider,
    model_message,
    policy,
    raised,
    status_code_of,
)

MAX_ATTACHMENTS = 25  # a model's attachments at most (the protos' TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH)
NOT_REMOTELY_PROVOKABLE = {
    "SCHEMA_UPGRADE_PENDING": "tests/integration/test_rolling_upgrade.py",
    "DATABASE_UNAVAILABLE": "tests/integration/test_database_outage.py",
    "DATABASE_BUSY": "tests/integration/test_isolation.py",
    "TOO_MANY_CALLS": "tests/integration/test_overload.py",
    "CONFIGURATION_STALE": "tests/integration/test_database_outage.py",
    "CREDENTIALS_NOT_LOADED": "tests/unit/test_authenticator.py",
    "INTERNAL_ERROR": "tests/integration/test_cascade_atomicity.py, tests/unit/test_errors_catalogue.py",
}


@dataclass
class World:
    client: Client
    target: ContractTarget
    new_id: Callable[[str], str]

    def provider(self, family: common_pb2.Family.ValueType = common_pb2.FAMILY_OPENAI, **fields: object) -> str:
        provider_id = self.new_id("p")
        make_provider(self.client, provider_id, family, **fields)  # type: ignore[arg-type]
        return provider_id

    def model(self, *providers: str, **fields: object) -> str:
        model_id = self.new_id("m")
        make_model(self.client, model_id, providers, **fields)
        return model_id


def _base62(number: int, width: int) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(alphabet[digit])
    return "".join(reversed(digits))


def well_formed_unknown_token() -> str:
    """A token of the documented shape (mrt_, 43 base62 characters, their CRC-32 in 6) that was never issued."""
    body = _base62(int.from_bytes(uuid.uuid4().bytes * 2), 43)
    return "mrt_" + body + _base62(zlib.crc32(body.encode()), 6)


def eventually(reason: str, call: Callable[[], object], seconds: float = 30) -> ModelrouteError:
    """The error of `call` once it is `reason` (a token change reaches a replica within a bound, not at once)."""
    deadline = time.monotonic() + seconds
    while True:
        error = raised(call)
        if error.reason == reason or time.monotonic() > deadline:
            return error
        time.sleep(0.2)


# ------------------------------------------------------------------ how to provoke each reason


def field_invalid(w: World) -> ModelrouteError:
    error = raised(
        lambda: w.client.create_provider_config(
            "Not A Slug", provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-x")
        )
    )
    assert "provider_config_id" in error.fields
    return error


def credential_policy_invalid(w: World) -> ModelrouteError:
    message = provider_config_pb2.ProviderConfig(
        family=common_pb2.FAMILY_OPENAI, api_key="sk-x", credential_policy=policy(False, False, False)
    )
    error = raised(lambda: w.client.create_provider_config(w.new_id("p"), message))
    assert error.fields == ["provider_config.credential_policy"]
    return error


def family_immutable(w: World) -> ModelrouteError:
    provider_id = w.provider()
    message = provider_config_pb2.ProviderConfig(
        name=f"providerConfigs/{provider_id}", family=common_pb2.FAMILY_ANTHROPIC
    )
    error = raised(lambda: w.client.update_provider_config(message, ["family"]))
    assert error.fields == ["provider_config.family"]
    return error


def update_mask_invalid(w: World) -> ModelrouteError:
    provider_id = w.provider()
    message = provider_config_pb2.ProviderConfig(name=f"providerConfigs/{provider_id}")
    error = raised(lambda: w.client.update_provider_config(message, ["no_such_field"]))
    assert error.fields == ["update_mask"]
    return error


def filter_invalid(w: World) -> ModelrouteError:
    error = raised(lambda: list(w.client.list_provider_configs(filter="colour = blue")))
    assert error.fields == ["filter"]
    return error


def page_token_invalid(w: World) -> ModelrouteError:
    request = provider_config_pb2.ListProviderConfigsRequest(page_token="bm90LWEtdG9rZW4")
    stub = stubs_for(w.client.channel)["providers"]  # a raw page token: the pager only sends the server's own

    error = raised(lambda: stub.ListProviderConfigs(request, timeout=30))
    assert error.fields == ["page_token"]
    return error


def request_malformed(w: World) -> ModelrouteError:
    method = w.client.channel.unary_unary(
        "/modelroute.v1.ProviderConfigService/GetProviderConfig", request_serializer=None, response_deserializer=None
    )

    error = raised(lambda: method(bytes([0x0A, 0x05]) + b"ab", timeout=30))  # a length promising more than follows
    assert error.fields == ["request"]
    return error


def attachments_invalid(w: World) -> ModelrouteError:
    provider_id = w.provider()
    message = model_message([provider_id, provider_id])
    error = raised(lambda: w.client.create_model_config(w.new_id("m"), message))
    assert error.fields and all(f.startswith("model_config.attachments") for f in error.fields)
    return error


def provider_config_not_found(w: World) -> ModelrouteError:
    missing = w.new_id("missing")
    error = raised(lambda: w.client.get_provider_config(missing))
    assert error.resource_name == f"providerConfigs/{missing}"
    return error


def model_config_not_found(w: World) -> ModelrouteError:
    missing = w.new_id("missing")
    error = raised(lambda: w.client.get_model_config(missing))
    assert error.resource_name == f"modelConfigs/{missing}"
    return error


def provider_config_already_exists(w: World) -> ModelrouteError:
    provider_id = w.provider()
    return raised(lambda: make_provider(w.client, provider_id))


def model_config_already_exists(w: World) -> ModelrouteError:
    model_id = w.model(w.provider())
    return raised(lambda: make_model(w.client, model_id, [w.provider()]))


def etag_mismatch(w: World) -> ModelrouteError:
    provider_id = w.provider()
    current = w.client.get_provider_config(provider_id)
    w.client.update_provider_config(
        provider_config_pb2.ProviderConfig(name=current.name, display_name="moved on"), ["display_name"]
    )
    stale = provider_config_pb2.ProviderConfig(name=current.name, etag=current.etag, display_name="stale")
    error = raised(lambda: w.client.update_provider_config(stale, ["display_name"]))
    assert error.metadata["current_etag"] == w.client.get_provider_config(provider_id).etag != current.etag
    return error


def provider_config_in_use(w: World) -> ModelrouteError:
    provider_id = w.provider()
    model_id = w.model(provider_id)
    error = raised(lambda: w.client.delete_provider_config(provider_id))
    assert f"modelConfigs/{model_id}" in str(error.precondition_violations) + error.message
    return error


def provider_config_disabled(w: World) -> ModelrouteError:
    provider_id = w.provider(credential_policy=policy(True, True, True), enabled=False)
    return raised(lambda: w.client.set_user_key("contract-alice", provider_id, "uk-contract"))


def user_keys_not_allowed(w: World) -> ModelrouteError:
    provider_id = w.provider(credential_policy=policy(True, False, False))
    return raised(lambda: w.client.set_user_key("contract-alice", provider_id, "uk-contract"))


def no_provider_config_to_attach(w: World) -> ModelrouteError:
    reserved = f"family = {common_pb2.Family.Name(RESERVED_FAMILY)} AND enabled = true"
    if list(w.client.list_provider_configs(filter=reserved)):
        # Only a deployment given from outside can hold one: a server the suite starts never does.
        assert w.target.mode == "external", "a contract test created a provider config of the reserved family"
        pytest.skip("this deployment holds an enabled vercel provider config, so every family has one to attach")
    message = model_message([], family=RESERVED_FAMILY)
    return raised(lambda: w.client.create_model_config(w.new_id("m"), message))


def too_many_provider_configs_to_attach(w: World) -> ModelrouteError:
    for _ in range(MAX_ATTACHMENTS + 1):  # more than a model may hold, whatever the server held before
        w.provider(common_pb2.FAMILY_GOOGLE)
    message = model_message([], family=common_pb2.FAMILY_GOOGLE, model="gemini-2.5-pro")
    return raised(lambda: w.client.create_model_config(w.new_id("m"), message))


def model_config_disabled(w: World) -> ModelrouteError:
    model_id = w.model(w.provider(), enabled=False)
    return raised(lambda: w.client.resolve(model_id))


def model_config_deleted(w: World) -> ModelrouteError:
    model_id = w.model(w.provider())
    w.client.delete_model_config(model_id)
    message = model_config_pb2.ModelConfig(name=f"modelConfigs/{model_id}", display_name="after delete")
    return raised(lambda: w.client.update_model_config(message, ["display_name"]))


def model_config_not_deleted(w: World) -> ModelrouteError:
    model_id = w.model(w.provider())
    return raised(lambda: w.client.undelete_model_config(model_id))


def disabled_model_cannot_be_default(w: World) -> ModelrouteError:
    message = model_message([w.provider()], enabled=False, is_default=True)
    return raised(lambda: w.client.create_model_config(w.new_id("m"), message))


def no_default_model(w: World) -> ModelrouteError:
    # Only a service holding no enabled model has no default: the suite asked for it before its first write.
    if w.target.default_probe is None:
        # A server the suite starts is empty at its first call; only a deployment given from outside may not be.
        assert w.target.mode == "external", "the suite's own server answered the default model before any write"
        pytest.skip("this deployment held an enabled model when the suite started, so it always had a default")
    return w.target.default_probe


def no_usable_attachment(w: World) -> ModelrouteError:
    provider_id = w.provider(credential_policy=policy(False, True, False), api_key="")
    model_id = w.model(provider_id)
    error = raised(lambda: w.client.resolve(model_id, user="contract-nobody"))
    assert [(kind, subject) for kind, subject, _ in error.precondition_violations] == [
        ("USER_KEY_REQUIRED", f"providerConfigs/{provider_id}")
    ]
    return error


def revision_not_reached(w: World) -> ModelrouteError:
    model_id = w.model(w.provider())
    error = raised(lambda: w.client.resolve(model_id, min_revision=2**62))
    assert int(error.metadata["config_revision"]) < 2**62
    return error


def access_token_not_found(w: World) -> ModelrouteError:
    return raised(lambda: w.client.revoke_access_token(w.new_id("missing-token")))


def access_token_already_exists(w: World) -> ModelrouteError:
    token_id = w.new_id("token")
    w.client.create_access_token(token_id, ["reader"])
    try:
        return raised(lambda: w.client.create_access_token(token_id, ["reader"]))
    finally:
        w.client.revoke_access_token(token_id)


def credentials_missing(w: World) -> ModelrouteError:
    return raised(lambda: list(w.target.client(token="").list_provider_configs()))


def credentials_malformed(w: World) -> ModelrouteError:
    stub = stubs_for(w.target.client(token="").channel)["providers"]

    request = provider_config_pb2.ListProviderConfigsRequest()
    return raised(lambda: stub.ListProviderConfigs(request, metadata=[("authorization", "Basic YTpi")], timeout=30))


def token_unknown(w: World) -> ModelrouteError:
    return raised(lambda: list(w.target.client(token=well_formed_unknown_token()).list_provider_configs()))


def token_expired(w: World) -> ModelrouteError:
    created = w.client.create_access_token(w.new_id("short-lived"), ["reader"], ttl_seconds=1).value
    short_lived = w.target.client(token=created.token)
    time.sleep(1.5)
    return eventually("TOKEN_EXPIRED", lambda: list(short_lived.list_provider_configs()))


def token_revoked(w: World) -> ModelrouteError:
    token_id = w.new_id("revoked")
    created = w.client.create_access_token(token_id, ["reader"]).value
    w.client.revoke_access_token(token_id)
    revoked = w.target.client(token=created.token)
    return eventually("TOKEN_REVOKED", lambda: list(revoked.list_provider_configs()))


def role_required(w: World) -> ModelrouteError:
    reader = w.target.client(token=w.target.reader_token)
    message = provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-x")
    error = raised(lambda: reader.create_provider_config(w.new_id("p"), message))
    assert error.metadata["required_roles"] == "admin"
    return error


PROVOKE: dict[str, Callable[[World], ModelrouteError]] = {
    "FIELD_INVALID": field_invalid,
    "CREDENTIAL_POLICY_INVALID": credential_policy_invalid,
    "FAMILY_IMMUTABLE": family_immutable,
    "UPDATE_MASK_INVALID": update_mask_invalid,
    "FILTER_INVALID": filter_invalid,
    "PAGE_TOKEN_INVALID": page_token_invalid,
    "REQUEST_MALFORMED": request_malformed,
    "ATTACHMENTS_INVALID": attachments_invalid,
    "PROVIDER_CONFIG_NOT_FOUND": provider_config_not_found,
    "MODEL_CONFIG_NOT_FOUND": model_config_not_found,
    "PROVIDER_CONFIG_ALREADY_EXISTS": provider_config_already_exists,
    "MODEL_CONFIG_ALREADY_EXISTS": model_config_already_exists,
    "ETAG_MISMATCH": etag_mismatch,
    "PROVIDER_CONFIG_IN_USE": provider_config_in_use,
    "PROVIDER_CONFIG_DISABLED": provider_config_disabled,
    "USER_KEYS_NOT_ALLOWED": user_keys_not_allowed,
    "NO_PROVIDER_CONFIG_TO_ATTACH": no_provider_config_to_attach,
    "TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH": too_many_provider_configs_to_attach,
    "MODEL_CONFIG_DISABLED": model_config_disabled,
    "MODEL_CONFIG_DELETED": model_config_deleted,
    "MODEL_CONFIG_NOT_DELETED": model_config_not_deleted,
    "DISABLED_MODEL_CANNOT_BE_DEFAULT": disabled_model_cannot_be_default,
    "NO_DEFAULT_MODEL": no_default_model,
    "NO_USABLE_ATTACHMENT": no_usable_attachment,
    "REVISION_NOT_REACHED": revision_not_reached,
    "ACCESS_TOKEN_NOT_FOUND": access_token_not_found,
    "ACCESS_TOKEN_ALREADY_EXISTS": access_token_already_exists,
    "CREDENTIALS_MISSING": credentials_missing,
    "CREDENTIALS_MALFORMED": credentials_malformed,
    "TOKEN_UNKNOWN": token_unknown,
    "TOKEN_EXPIRED": token_expired,
    "TOKEN_REVOKED": token_revoked,
    "ROLE_REQUIRED": role_required,
}


def test_the_provoked_and_the_in_process_reasons_are_every_reason_of_the_protos() -> None:
    assert set(PROVOKE).isdisjoint(NOT_REMOTELY_PROVOKABLE)
    assert set(PROVOKE) | set(NOT_REMOTELY_PROVOKABLE) == all_reasons()


@pytest.mark.parametrize("reason", sorted(PROVOKE))
def test_each_reason_a_caller_can_provoke(
    reason: str, client: Client, contract_target: ContractTarget, new_id: Callable[[str], str]
) -> None:
    error = PROVOKE[reason](World(client, contract_target, new_id))
    assert (error.reason, error.domain) == (reason, "modelroute.internal"), error
    assert error.code is status_code_of(reason)
    assert type(error) is errors.REASON_CLASSES[reason]  # one class per reason, below one per status code
    assert isinstance(error, errors.STATUS_CLASSES[error.code])
    assert error.message and "sk-" not in error.message and "uk-" not in error.message
    if error.code is grpc.StatusCode.INVALID_ARGUMENT:
        assert error.field_violations, "a rejected request names the fields at fault"


def test_errors_name_no_secret_and_change_nothing(client: Client, new_id: Callable[[str], str]) -> None:
    provider_id = new_id("p")
    make_provider(client, provider_id)
    before = client.get_provider_config(provider_id)
    bad = provider_config_pb2.ProviderConfig(name=before.name, base_url="not a url", api_key="sk-contract-secret")
    error = raised(lambda: client.update_provider_config(bad, ["base_url", "api_key"]))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and "sk-contract-secret" not in str(error)
    assert client.get_provider_config(provider_id) == before
