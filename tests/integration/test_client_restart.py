"""The typed clients across a replica restart: resolution waits for the replica instead of failing.

The server is the `make run` entry point in embedded mode, stopped with SIGTERM and started again on the
same port and data directory within 2 s, while 200 resolutions run with the default deadline (10 s).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest

import modelroute
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2

from ..conftest import ServerProcesses
from ..helpers import free_port

CALLS = 200
# Spread over about 4 s, so that the restart falls in the middle of them.
PAUSE = 0.02


class Restart:
    """Stops the replica with SIGTERM and starts it again at once on the same port and data directory."""

    def __init__(self, server_process: ServerProcesses, tmp_path: Path, address: str, data_dir: Path) -> None:
        self._processes, self._cwd, self._address, self._data_dir = server_process, tmp_path, address, data_dir
        self.stopped_at = 0.0

    def __call__(self) -> None:
        process = self._processes.started[-1]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        self.stopped_at = time.monotonic()
        # start() returns once the new process says SERVING; the process itself starts at once.
        self._processes.start(self._cwd, self._address, self._data_dir)


def start_with_a_model(server_process: ServerProcesses, tmp_path: Path) -> tuple[str, Path, Restart]:
    data_dir, port = tmp_path / "data", free_port()
    address = f"127.0.0.1:{port}"
    server_process.start(tmp_path, address, data_dir)
    admin = (data_dir / "admin.token").read_text().strip()
    with modelroute.Client(address, token=admin) as client:
        provider = provider_config_pb2.ProviderConfig(family=common_pb2.FAMILY_OPENAI, api_key="sk-restart")
        client.create_provider_config("openai-main", provider)
        model = model_config_pb2.ModelConfig(family=common_pb2.FAMILY_OPENAI, model="gpt-4o", context_limit=10)
        client.create_model_config("gpt-4o", model)

    return address, data_dir, Restart(server_process, tmp_path, address, data_dir)


def restart_during(calls_started: threading.Event, restart: Restart) -> threading.Thread:
    def run() -> None:
        calls_started.wait(timeout=30)
        time.sleep(0.5)
        restart()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sync_resolutions_survive_a_restart(server_process: ServerProcesses, tmp_path: Path) -> None:
    address, data_dir, restart = start_with_a_model(server_process, tmp_path)
    resolver = (data_dir / "resolver.token").read_text().strip()
    started = threading.Event()
    restarter = restart_during(started, restart)
    failures: list[str] = []
    with modelroute.Client(address, token=resolver) as client:
        assert client.timeout is not None and client.timeout >= 10
        first = time.monotonic()
        for _ in range(CALLS):
            started.set()
            last = time.monotonic()
            try:
                answer = client.resolve("gpt-4o")
                assert answer.selected.provider_config == "providerConfigs/openai-main"
            except modelroute.ModelrouteError as error:
                failures.append(str(error))
            time.sleep(PAUSE)
        restarter.join(timeout=120)
        assert not restarter.is_alive()
    assert failures == []
    # The replica was down while the calls ran, and came back.
    assert first < restart.stopped_at < last
    assert len(server_process.started) == 2


def test_asyncio_resolutions_survive_a_restart(server_process: ServerProcesses, tmp_path: Path) -> None:
    address, data_dir, restart = start_with_a_model(server_process, tmp_path)
    resolver = (data_dir / "resolver.token").read_text().strip()
    started = threading.Event()
    restarter = restart_during(started, restart)

    times: list[float] = []

    async def resolve_all() -> list[str]:
        failures: list[str] = []
        async with modelroute.aio.Client(address, token=resolver) as client:
            assert client.timeout is not None and client.timeout >= 10
            for _ in range(CALLS):
                started.set()
                times.append(time.monotonic())
                try:
                    answer = await client.resolve("gpt-4o")
                    assert answer.selected.provider_config == "providerConfigs/openai-main"
                except modelroute.ModelrouteError as error:
                    failures.append(str(error))
                await asyncio.sleep(PAUSE)
        return failures

    assert asyncio.run(resolve_all()) == []
    restarter.join(timeout=120)
    assert not restarter.is_alive()
    assert times[0] < restart.stopped_at < times[-1]
    assert len(server_process.started) == 2


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELROUTE_TOKEN", raising=False)
    monkeypatch.delenv("MODELROUTE_TOKEN_FILE", raising=False)
