"""Huge or heavily invalid requests still get a whole, structured client error (never a transport failure),
and reads stay consistent while a forced delete runs."""

from __future__ import annotations

import threading

import grpc

from modelroute.v1 import model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2

from ..helpers import call_error, create_model, create_provider, model_request, policy, stubs

LONG_ID = "p" + "x" * 60  # slugs are at most 63 characters


def test_too_many_attachments_is_one_clear_violation(channel: grpc.Channel) -> None:
    s = stubs(channel)
    error = call_error(s.models.CreateModelConfig, model_request("m", providers=tuple(f"p{i}" for i in range(30))))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ATTACHMENTS_INVALID")
    assert error.field_violations == [("model_config.provider_configs", "must name at most 25 provider configs")]


def test_many_unknown_ids_are_capped_and_still_arrive(channel: grpc.Channel) -> None:
    s = stubs(channel)
    ids = tuple(f"{LONG_ID}{i:02d}" for i in range(25))
    error = call_error(s.models.CreateModelConfig, model_request("m", providers=ids))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ATTACHMENTS_INVALID")
    assert len(error.field_violations) == 21
    assert error.field_violations[0] == ("model_config.provider_configs[0]", f"providerConfigs/{ids[0]} does not exist")
    assert error.field_violations[-1][1] == "... and 5 more violation(s)"


def test_huge_strings_are_quoted_short(channel: grpc.Channel) -> None:
    s = stubs(channel)
    huge = "x" * 20_000
    checks = [
        (
            s.providers.ListProviderConfigs,
            provider_config_pb2.ListProviderConfigsRequest(filter=huge),
            "FILTER_INVALID",
        ),
        (
            s.providers.ListProviderConfigs,
            provider_config_pb2.ListProviderConfigsRequest(page_token=huge),
            "PAGE_TOKEN_INVALID",
        ),
        (s.providers.GetProviderConfig, provider_config_pb2.GetProviderConfigRequest(name=huge), "FIELD_INVALID"),
        (s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="modelConfigs/" + huge), "FIELD_INVALID"),
    ]
    for method, request, reason in checks:
        error = call_error(method, request)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert len(error.message) < 1100
        assert all(len(description) < 300 for _, description in error.field_violations)


def test_no_usable_attachment_lists_all_25_attachments(channel: grpc.Channel) -> None:
    s = stubs(channel)
    ids = tuple(f"{LONG_ID}{i:02d}" for i in range(25))
    for provider_id in ids:
        create_provider(s, provider_id, api_key="", credential_policy=policy(True, True, False))
    create_model(s, "m", providers=ids)
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m"))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_USABLE_ATTACHMENT")
    assert [(kind, subject) for kind, subject, _ in error.precondition_violations] == [
        ("USER_KEY_REQUIRED", f"providerConfigs/{i}") for i in ids
    ]
    assert error.precondition_violations[24][2] == "position 24; fixable by user"


def test_model_reads_never_fail_while_providers_are_force_deleted(channel: grpc.Channel) -> None:
    s = stubs(channel)
    providers = [f"p{i}" for i in range(6)]
    for provider_id in providers:
        create_provider(s, provider_id)
    create_model(s, "anchor", providers=("p0",))
    failures: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest(show_deleted=True), timeout=10)
                s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name="modelConfigs/m"), timeout=10)
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.NOT_FOUND:
                    failures.append(f"{error.code().name}: {error.details()}")
            except Exception as error:  # a dying reader must fail the test, not vanish
                failures.append(repr(error))
                return

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for round_number in range(8):
            create_model(s, "m" if round_number == 0 else f"m{round_number}", providers=tuple(providers[1:]))
            for provider_id in providers[1:]:
                s.providers.DeleteProviderConfig(
                    provider_config_pb2.DeleteProviderConfigRequest(name=f"providerConfigs/{provider_id}", force=True)
                )
                create_provider(s, provider_id)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
    assert not any(reader.is_alive() for reader in readers)
    assert failures == []


def test_auto_attachment_respects_the_cap(channel: grpc.Channel) -> None:
    s = stubs(channel)
    for i in range(26):
        create_provider(s, f"v{i:02d}", "vercel", api_key="", credential_policy=policy(False, True, False))
    error = call_error(s.models.CreateModelConfig, model_request("m", "vercel", upstream="v0"))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH")
    assert error.precondition_violations == [("TOO_MANY_PROVIDER_CONFIGS", "family/vercel", "26 > 25")]
    assert s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest(show_deleted=True)).model_configs == []


def test_a_huge_list_is_refused_before_any_database_work(channel: grpc.Channel) -> None:
    s = stubs(channel)
    names = tuple(f"p{i}" for i in range(70_000))
    error = call_error(s.models.CreateModelConfig, model_request("m", providers=names))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ATTACHMENTS_INVALID")
    assert error.field_violations == [("model_config.provider_configs", "must name at most 25 provider configs")]


def test_failed_preconditions_name_their_subject(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "off", enabled=False, credential_policy=policy(True, True, False), api_key="")
    create_provider(s, "central")
    for provider_id, reason in (("off", "PROVIDER_CONFIG_DISABLED"), ("central", "USER_KEYS_NOT_ALLOWED")):
        error = call_error(
            s.user_keys.SetUserProviderKey,
            user_key_pb2.SetUserProviderKeyRequest(
                user="u", provider_config=f"providerConfigs/{provider_id}", api_key="k"
            ),
        )
        assert (error.reason, error.resource_name) == (reason, f"providerConfigs/{provider_id}")
        assert [(kind, subject) for kind, subject, _ in error.precondition_violations] == [
            (reason, f"providerConfigs/{provider_id}")
        ]
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest())
    assert [(kind, subject) for kind, subject, _ in error.precondition_violations] == [
        ("NO_DEFAULT_MODEL", "modelConfigs")
    ]
