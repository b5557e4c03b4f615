"""The two typed clients offer the same operations with the same parameters, and the service config
retries what it says it retries."""

from __future__ import annotations

import inspect
import json

import modelroute
from modelroute import channel
from modelroute.v1 import (
    access_token_pb2,
    audit_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)

# Methods that are not one RPC each.
HELPERS = {"call_with_failover"}


def operations(cls: type) -> dict[str, list[tuple[str, object]]]:
    return {
        name: [(p.name, p.default) for p in inspect.signature(member).parameters.values()]
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name != "close"
    }


def test_the_asyncio_client_has_every_operation_of_the_sync_one() -> None:
    sync, aio = operations(modelroute.Client), operations(modelroute.aio.Client)
    assert sync == aio
    assert set(sync) >= HELPERS
    assert len(set(sync) - HELPERS) == len(rpcs())  # one method per RPC
    assert isinstance(inspect.getattr_static(modelroute.aio.Client, "failover_statistics"), property)
    assert isinstance(inspect.getattr_static(modelroute.Client, "failover_statistics"), property)
    # Every List is a pager there and an async pager here; every other operation is awaited here.
    for name in sync:
        coroutine = inspect.iscoroutinefunction(getattr(modelroute.aio.Client, name))
        pager = inspect.signature(getattr(modelroute.Client, name)).return_annotation.startswith("Pager")
        assert coroutine is not pager, name


def rpcs() -> set[tuple[str, str]]:
    return {
        (service.name, method.name)
        for module in (access_token_pb2, audit_pb2, model_config_pb2, provider_config_pb2, resolver_pb2, user_key_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_the_retry_policy_names_real_methods_every_read_and_no_create() -> None:
    methods = rpcs()
    retried = set(channel.RESOLUTION_METHODS + channel.READ_METHODS + channel.REPEATABLE_WRITES)
    assert retried <= methods
    # Every read is retried; no create is.
    reads = {m for m in methods if m[1].startswith(("Get", "List", "Explain", "Resolve"))}
    assert reads <= retried
    assert not {m for m in retried if m[1].startswith(("Create", "Undelete"))}
    # Attempt reports are best effort: a repeated batch would count its failures twice.
    assert ("ResolverService", "ReportAttempts") in methods
    assert ("ResolverService", "ReportAttempts") not in retried


def test_the_service_config_is_round_robin_with_resolution_waiting_for_a_ready_replica() -> None:
    options = dict(channel.channel_options())
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    [resolution] = [c for c in config["methodConfig"] if c.get("waitForReady")]
    assert resolution["name"] == [{"service": "modelroute.v1.ResolverService", "method": "ResolveModel"}]
    for method_config in config["methodConfig"]:
        assert set(method_config["retryPolicy"]["retryableStatusCodes"]) == {
            "UNAVAILABLE",
            "RESOURCE_EXHAUSTED",
            "CANCELLED",
        }
    assert options["grpc.keepalive_time_ms"] > 0
