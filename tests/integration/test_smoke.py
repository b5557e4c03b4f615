from __future__ import annotations

import grpc

from modelroute.v1 import provider_config_pb2, resolver_pb2

from ..helpers import create_model, create_provider, stubs


def test_create_read_resolve(channel: grpc.Channel) -> None:
    s = stubs(channel)
    created = create_provider(s, "openai-main", api_key="sk-one")
    assert created.name == "providerConfigs/openai-main"
    assert created.has_api_key and not created.api_key
    got = s.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name=created.name))
    assert got == created
    model = create_model(s, "gpt")
    assert list(model.provider_configs) == ["providerConfigs/openai-main"]
    assert model.is_default
    answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="gpt"))
    assert answer.selected.api_key == "sk-one"
    assert answer.config_revision >= 2
