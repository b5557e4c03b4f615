"""Secrets never appear in logs, error messages, error details or admin reads."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import field_mask_pb2

from modelroute.v1 import model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2

from ..helpers import call_error, create_model, create_provider, policy, provider_request, stubs

CENTRAL = "sk-central-SECRET-4f1e"
USER = "sk-user-SECRET-9a7c"
REJECTED = "sk-rejected-SECRET-77b2"


def test_no_secret_in_logs_errors_or_admin_reads(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = stubs(channel)
    reads: list[bytes] = []
    errors: list[str] = []

    created = create_provider(s, "a", api_key=CENTRAL, credential_policy=policy(True, True, True))
    reads.append(created.SerializeToString())
    reads.append(
        s.user_keys.SetUserProviderKey(
            user_key_pb2.SetUserProviderKeyRequest(user="u", provider_config="providerConfigs/a", api_key=USER)
        ).SerializeToString()
    )
    reads.append(create_model(s, "m").SerializeToString())
    reads.append(s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest()).SerializeToString())
    reads.append(s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest()).SerializeToString())
    reads.append(
        s.user_keys.ListUserProviderConfigs(user_key_pb2.ListUserProviderConfigsRequest(user="u")).SerializeToString()
    )
    reads.append(
        s.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model="m", user="u")).SerializeToString()
    )
    reads.append(s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(user="u")).SerializeToString())

    # Rejected keys: the messages say which rule failed, never the key.
    for bad in (f" {REJECTED}", f"{REJECTED}\n", REJECTED + "x" * 10_241):
        errors.append(str(call_error(s.providers.CreateProviderConfig, provider_request("b", api_key=bad))))
        errors.append(
            str(
                call_error(
                    s.user_keys.SetUserProviderKey,
                    user_key_pb2.SetUserProviderKeyRequest(user="u", provider_config="providerConfigs/a", api_key=bad),
                )
            )
        )
        update = provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/a", api_key=bad),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        )
        err = call_error(s.providers.UpdateProviderConfig, update)
        errors.append(str(err) + repr(err.field_violations) + repr(err.metadata))

    # Only ResolveModel hands out secrets: the user's key, then the central key as the fallback of a second config.
    create_provider(s, "c", api_key=CENTRAL)
    create_model(s, "two", providers=("a", "c"))
    answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="two", user="u"))
    handed_out = [answer.selected.api_key, *(f.api_key for f in answer.fallbacks)]
    if handed_out != [USER, CENTRAL]:  # compared without rendering the keys
        raise AssertionError("ResolveModel did not hand out the expected keys")

    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for secret in (CENTRAL, USER, REJECTED):
        assert all(secret.encode() not in read for read in reads), "a read returned key material"
        assert all(secret not in text for text in errors), "an error echoed key material"
        assert secret not in logged, "a log record carried key material"
