"""A flood of admin reads from one client: every call ends OK or RESOURCE_EXHAUSTED (TOO_MANY_CALLS, with a
retry delay), none CANCELLED, the server's memory stays bounded, and a bystander's resolutions keep being
answered throughout (docs/operations.md, "Overload"; how fast: bench/bench_overload.py)."""

from __future__ import annotations

import asyncio
import collections
import subprocess
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from modelroute.v1 import (
    common_pb2,
    model_config_pb2,
    model_config_pb2_grpc,
    provider_config_pb2,
    resolver_pb2,
    resolver_pb2_grpc,
)

from ..conftest import ServerProcesses
from ..helpers import free_port, stubs

# Part of the fault suite (docs/operations.md).
pytestmark = pytest.mark.faults

FLOOD = 2000
MODELS = 250
MAX_GROWTH_BYTES = 100 * 1024 * 1024


def resident_bytes(process: subprocess.Popen[bytes]) -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def status_details(error: grpc.aio.AioRpcError) -> tuple[str, error_details_pb2.RetryInfo | None]:
    """The error's ErrorInfo reason and its RetryInfo, if any."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no rich status on {error.code()}: {error.details()}"
    status = status_pb2.Status.FromString(raw if isinstance(raw, bytes) else raw.encode())
    reason, retry = "", None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    return reason, retry


def test_a_flood_of_list_calls_is_shed_not_cancelled(server_process: ServerProcesses, tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    process = server_process.start(tmp_path, f"127.0.0.1:{port}", data_dir)
    token = (data_dir / "admin.token").read_text().strip()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        s = stubs(channel)
        s.providers.CreateProviderConfig(
            provider_config_pb2.CreateProviderConfigRequest(
                provider_config_id="p",
                provider_config=provider_config_pb2.ProviderConfig(
                    family=common_pb2.FAMILY_OPENAI, api_key="sk-flood-1"
                ),
            ),
            metadata=metadata,
        )
        for number in range(MODELS):
            s.models.CreateModelConfig(
                model_config_pb2.CreateModelConfigRequest(
                    model_config_id=f"m{number}",
                    model_config=model_config_pb2.ModelConfig(
                        family=common_pb2.FAMILY_OPENAI,
                        model=f"gpt-{number}",
                        display_name="a long display name " * 10,
                        context_limit=128_000,
                        provider_configs=["providerConfigs/p"],
                    ),
                ),
                metadata=metadata,
            )
    before = resident_bytes(process)

    resolver_metadata = (("authorization", f"Bearer {(data_dir / 'resolver.token').read_text().strip()}"),)
    resolutions: collections.Counter[str] = collections.Counter()

    async def flood() -> tuple[collections.Counter[str], list[grpc.aio.AioRpcError], int]:
        codes: collections.Counter[str] = collections.Counter()
        shed: list[grpc.aio.AioRpcError] = []
        peak = before
        flooding = True

        async def resolve() -> None:
            # A bystander on a connection of its own: resolution keeps answering through the flood.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as own:
                resolver = resolver_pb2_grpc.ResolverServiceStub(own)
                while flooding:
                    try:
                        await resolver.ResolveModel(
                            resolver_pb2.ResolveModelRequest(model="m0"), metadata=resolver_metadata, timeout=10
                        )
                        resolutions["OK"] += 1
                    except grpc.aio.AioRpcError as error:
                        resolutions[error.code().name] += 1

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, resident_bytes(process))
                await asyncio.sleep(0.1)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            models = model_config_pb2_grpc.ModelConfigServiceStub(channel)
            request = model_config_pb2.ListModelConfigsRequest(page_size=200)

            async def one() -> None:
                try:
                    await models.ListModelConfigs(request, metadata=metadata, timeout=120)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1
                    if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        shed.append(error)

            watcher = asyncio.ensure_future(watch())
            bystander = asyncio.ensure_future(resolve())
            await asyncio.gather(*(one() for _ in range(FLOOD)))
            flooding = False
            await bystander
            watcher.cancel()
        return codes, shed, peak

    codes, shed, peak = asyncio.run(flood())
    assert set(resolutions) == {"OK"}, resolutions
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert sum(codes.values()) == FLOOD
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes
    for error in shed:
        reason, retry = status_details(error)
        assert reason == "TOO_MANY_CALLS"
        assert retry is not None and retry.retry_delay.ToMilliseconds() > 0
        assert ("grpc-retry-pushback-ms", str(retry.retry_delay.ToMilliseconds())) in tuple(
            error.trailing_metadata() or ()
        )
    assert peak - before <= MAX_GROWTH_BYTES, f"the server grew by {(peak - before) / 1e6:.0f} MB"
    # And it still answers normally once the flood is over.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        models = model_config_pb2_grpc.ModelConfigServiceStub(channel)
        page = models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest(page_size=200), metadata=metadata)
        assert len(page.model_configs) == 200
