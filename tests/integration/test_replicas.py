"""Two replicas on one database: a write on one is seen by the other (NOTIFY), and min_revision."""

from __future__ import annotations

import time

import grpc

from modelroute.v1 import common_pb2, model_config_pb2, resolver_pb2, user_key_pb2

from ..conftest import RunningServer
from ..helpers import call_error, create_model, create_provider, policy, stubs


def etag_revision(etag: str) -> int:
    return int(etag.strip('"'))


def test_a_deleted_model_stops_resolving_on_the_other_replica(
    channel: grpc.Channel, second_replica: RunningServer
) -> None:
    writer, reader = stubs(channel), stubs(second_replica.channel)
    create_provider(writer, "a")
    create_model(writer, "m")
    written = create_model(writer, "other")
    # Read-your-writes across replicas is asked for (without it the other replica may not have applied it yet).
    seen = resolver_pb2.ResolveModelRequest(model="m", min_revision=etag_revision(written.etag))
    assert reader.resolver.ResolveModel(seen).selected.provider_config
    writer.models.DeleteModelConfig(model_config_pb2.DeleteModelConfigRequest(name="modelConfigs/m"))
    deadline = time.monotonic() + 5
    while True:
        try:
            reader.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m"))
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.NOT_FOUND
            break
        assert time.monotonic() < deadline, "the other replica kept routing a deleted model"
        time.sleep(0.02)


def test_min_revision_reads_your_writes_across_replicas(channel: grpc.Channel, second_replica: RunningServer) -> None:
    writer, reader = stubs(channel), stubs(second_replica.channel)
    create_provider(writer, "a", api_key="sk-first")
    model = create_model(writer, "m")
    before = reader.resolver.ResolveModel(
        resolver_pb2.ResolveModelRequest(model="m", min_revision=etag_revision(model.etag))
    )
    created = create_provider(writer, "b", api_key="sk-second")
    updated = writer.models.UpdateModelConfig(
        model_config_pb2.UpdateModelConfigRequest(
            model_config=model_config_pb2.ModelConfig(
                name="modelConfigs/m", provider_configs=[created.name, "providerConfigs/a"]
            )
        )
    )
    revision = etag_revision(updated.etag)
    after = reader.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", min_revision=revision))
    assert after.config_revision >= revision > before.config_revision
    assert after.selected.provider_config == "providerConfigs/b"
    assert after.selected.key_source == common_pb2.KEY_SOURCE_STORED


def test_a_revision_that_does_not_exist_yet_is_a_precondition_error(channel: grpc.Channel) -> None:
    s = stubs(channel)
    create_provider(s, "a")
    create_model(s, "m")
    error = call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="m", min_revision=10**12))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "REVISION_NOT_REACHED"


def test_a_user_key_set_on_one_replica_serves_on_the_other(
    channel: grpc.Channel, second_replica: RunningServer
) -> None:
    writer, reader = stubs(channel), stubs(second_replica.channel)
    create_provider(writer, "a", credential_policy=policy(True, True, True), api_key="sk-central")
    written = create_model(writer, "m")
    seen = resolver_pb2.ResolveModelRequest(model="m", user="u", min_revision=etag_revision(written.etag))
    assert reader.resolver.ResolveModel(seen).selected.key_source == common_pb2.KEY_SOURCE_STORED
    writer.user_keys.SetUserProviderKey(
        user_key_pb2.SetUserProviderKeyRequest(user="u", provider_config="providerConfigs/a", api_key="uk-u")
    )
    deadline = time.monotonic() + 5
    while True:
        answer = reader.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="u"))
        if answer.selected.key_source == common_pb2.KEY_SOURCE_USER:
            break
        assert time.monotonic() < deadline, "the other replica never served the new user key"
        time.sleep(0.02)
    assert answer.selected.api_key == "uk-u"
    assert reader.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="v")).selected.key_source == (
        common_pb2.KEY_SOURCE_STORED
    )
