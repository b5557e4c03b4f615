"""Resolutions waiting for a revision are bounded: one past the bound is refused at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec
from modelroute_server.domain.errors import DomainError, Reason
from modelroute_server.entrypoints.servicers import ResolverServicer
from modelroute_server.service_layer.context import ServiceContext


class HeldSnapshots:
    """A snapshot store that has not reached any asked-for revision until `arrive` is set."""

    def __init__(self) -> None:
        self.arrive = asyncio.Event()

    def fresh(self, min_revision: int = 0) -> None:
        return None

    async def wait(self, min_revision: int = 0) -> str:
        await self.arrive.wait()
        return f"snapshot at {min_revision}"


def test_waiting_resolutions_are_bounded() -> None:
    async def scenario() -> None:
        snapshots = HeldSnapshots()
        ctx = ServiceContext(Keyring.parse(generate_keyring_spec()), None)  # type: ignore[arg-type]
        servicer = ResolverServicer(ctx, snapshots)  # type: ignore[arg-type]
        servicer.waiting.limit = 2
        waiting: list[asyncio.Future[Any]] = [asyncio.ensure_future(servicer._snapshot(7)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(DomainError) as refused:
            await servicer._snapshot(7)
        assert refused.value.reason is Reason.TOO_MANY_CALLS and refused.value.retry_delay is not None
        snapshots.arrive.set()
        assert await asyncio.gather(*waiting) == ["snapshot at 7", "snapshot at 7"]
        assert servicer.waiting.in_flight == 0

    asyncio.run(scenario())
