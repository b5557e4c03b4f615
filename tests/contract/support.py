"""What the contract tests share: requests built from the client package's messages, and error checks.

Only the `modelroute` client package (and grpc) here: this is what any client of the protos sees.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from modelroute import TLS, Client, ModelrouteError
from modelroute.v1 import common_pb2, error_reason_pb2, model_config_pb2, provider_config_pb2


@dataclass
class ContractTarget:
    """The server under test: its address, channel security, and the tokens the suite made for itself."""

    address: str
    tls: TLS | None
    mode: str
    token: str = field(default="", repr=False)
    reader_token: str = field(default="", repr=False)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # ResolveModel's error for the default model before the suite wrote anything (None: it answered, or
    # failed otherwise): a service holding no enabled model answers NO_DEFAULT_MODEL.
    default_probe: ModelrouteError | None = None
    _clients: list[Client] = field(default_factory=list, repr=False)

    def client(self, token: str | None = None, timeout: float = 30.0) -> Client:
        """A client with `token` (default: the suite's all-roles token; "" for none)."""
        made = Client(self.address, timeout, token=self.token if token is None else token, tls=self.tls)
        self._clients.append(made)
        return made

    def close(self) -> None:
        for made in self._clients:
            made.close()


# No contract test creates a provider config of this family, so that on a server started for the suite none
# exists (NO_PROVIDER_CONFIG_TO_ATTACH needs a family without one).
RESERVED_FAMILY = common_pb2.FAMILY_VERCEL
CENTRAL_KEY = "sk-contract-central"


def policy(c: bool, u: bool, f: bool) -> common_pb2.CredentialPolicy:
    return common_pb2.CredentialPolicy(
        central_api_key_enabled=c, allow_user_api_key=u, allow_central_api_key_fallback=f
    )


def make_provider(
    client: Client,
    provider_id: str,
    family: common_pb2.Family.ValueType = common_pb2.FAMILY_OPENAI,
    api_key: str = CENTRAL_KEY,
    **fields: Any,
) -> provider_config_pb2.ProviderConfig:
    assert family != RESERVED_FAMILY
    message = provider_config_pb2.ProviderConfig(family=family, api_key=api_key, **fields)
    return client.create_provider_config(provider_id, message).value


def attachment(provider_id: str, upstream: str = "") -> model_config_pb2.Attachment:
    return model_config_pb2.Attachment(provider_config=f"providerConfigs/{provider_id}", model=upstream)


def model_message(
    providers: Sequence[str | tuple[str, str]],
    family: common_pb2.Family.ValueType = common_pb2.FAMILY_OPENAI,
    model: str = "gpt-4o",
    **fields: Any,
) -> model_config_pb2.ModelConfig:
    attachments = [attachment(p) if isinstance(p, str) else attachment(*p) for p in providers]
    return model_config_pb2.ModelConfig(
        family=family,
        model=model,
        context_limit=fields.pop("context_limit", 128_000),
        attachments=attachments,
        **fields,
    )


def make_model(
    client: Client, model_id: str, providers: Sequence[str | tuple[str, str]], **fields: Any
) -> model_config_pb2.ModelConfig:
    return client.create_model_config(model_id, model_message(providers, **fields)).value


def short(name: str) -> str:
    """`providerConfigs/x` -> `x`."""
    return name.rsplit("/", 1)[-1]


def status_code_of(reason: str) -> grpc.StatusCode:
    """The status code the protos give a reason (its `status_code` option)."""
    value = error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name[f"ERROR_REASON_{reason}"]
    number = value.GetOptions().Extensions[error_reason_pb2.status_code]
    return next(code for code in grpc.StatusCode if code.value[0] == number)


def all_reasons() -> set[str]:
    return {
        value.name.removeprefix("ERROR_REASON_")
        for value in error_reason_pb2.ErrorReason.DESCRIPTOR.values
        if value.number != 0
    }


def raised(call: Callable[[], object]) -> ModelrouteError:
    """The error `call` fails with (it must fail); a raw stub's grpc.RpcError is decoded as the client does."""
    try:
        call()
    except ModelrouteError as error:
        return error
    except grpc.RpcError as rpc_error:
        return ModelrouteError.from_rpc_error(rpc_error)
    raise AssertionError("expected the call to fail; it succeeded")
