"""The failover helper end to end: `call_with_failover` resolves on the real server, `fn` does real HTTP
(urllib) to fake providers on 127.0.0.1, and the attempt reports it sends in the background move the
service's provider health, which the next resolution shows."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.client import IncompleteRead
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

import modelroute
from modelroute import Attempt, FailoverExhausted, Outcome, Reporting
from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2

from ..conftest import RunningServer, all_roles_token

RETRY_AFTER = 120
UPSTREAM = "llama-3.1-70b"


class FakeProviders:
    """One HTTP server whose first path segment says which provider answers and how: `p500` fails, `p429`
    rate-limits with a Retry-After, `p200` answers, `stream` sends one chunk of a chunked answer and hangs
    up. Every request is recorded: (provider, Authorization header, model sent)."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str, str]] = []
        providers = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                name = self.path.split("/")[1]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                providers.hits.append((name, self.headers.get("Authorization", ""), body["model"]))
                if name == "stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"data: first\n\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    self.close_connection = True  # no last chunk: the answer is cut short
                    return
                status, headers = {"p500": (500, {}), "p429": (429, {"Retry-After": str(RETRY_AFTER)})}.get(
                    name, (200, {})
                )
                answer = json.dumps({"provider": name, "model": body["model"]}).encode()
                self.send_response(status)
                for header, value in headers.items():
                    self.send_header(header, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def base_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}/v1"

    def called(self) -> list[str]:
        return [name for name, _, _ in self.hits]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def providers() -> Iterator[FakeProviders]:
    fake = FakeProviders()
    yield fake
    fake.stop()


def configure(client: modelroute.Client, providers: FakeProviders, model: str, names: tuple[str, ...]) -> None:
    for name in names:
        config = provider_config_pb2.ProviderConfig(
            family=common_pb2.FAMILY_OPENAI_COMPAT, base_url=providers.base_url(name), api_key=f"sk-{name}-key"
        )
        if name == "p500":  # one server error must not cool it down, whatever the service's default
            config.health_policy.failure_threshold = 5
        client.create_provider_config(name, config)
    client.create_model_config(
        model,
        model_config_pb2.ModelConfig(
            family=common_pb2.FAMILY_OPENAI_COMPAT,
            model=UPSTREAM,
            context_limit=8192,
            provider_configs=[f"providerConfigs/{name}" for name in names],
        ),
    )


def request(attempt: Attempt, stream: bool = False) -> urllib.request.Request:
    return urllib.request.Request(
        f"{attempt.base_url}/chat/completions",
        data=json.dumps({"model": attempt.model, "stream": stream}).encode(),
        headers={"Authorization": f"Bearer {attempt.api_key}", "Content-Type": "application/json"},
    )


def post(attempt: Attempt) -> dict[str, Any]:
    with urllib.request.urlopen(request(attempt), timeout=attempt.timeout(5)) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def stream(attempt: Attempt) -> Iterator[str]:
    with urllib.request.urlopen(request(attempt, stream=True), timeout=attempt.timeout(5)) as response:
        # read1, not line iteration: CPython's readline takes a chunked answer cut short for its end.
        while chunk := response.read1(65536):
            yield from (line for line in chunk.decode().splitlines() if line.strip())


REPORTING = Reporting(interval=0.05, close_timeout=5)


def health(client: modelroute.Client, name: str) -> list[tuple[str, int, bool]]:
    """(upstream model, consecutive failures, cooling down) of a provider config."""
    models = client.get_provider_config(name).health.models
    return [(m.model, m.consecutive_failures, m.HasField("cooldown_until")) for m in models]


def check_the_service_demoted_the_rate_limited_provider(client: modelroute.Client, reported_at: datetime) -> None:
    assert health(client, "p500") == [(UPSTREAM, 1, False)]
    assert health(client, "p429") == [(UPSTREAM, 1, True)]
    assert health(client, "p200") == []
    answer = client.resolve("chat", "alice")
    order = [answer.selected.provider_config, *(f.provider_config for f in answer.fallbacks)]
    assert order == ["providerConfigs/p500", "providerConfigs/p200", "providerConfigs/p429"]
    assert not answer.selected.HasField("cooldown_until") and not answer.fallbacks[0].HasField("cooldown_until")
    until = answer.fallbacks[1].cooldown_until.ToDatetime(UTC)
    # Cooling down for the provider's Retry-After, counted from when the service took the report.
    assert (
        reported_at + timedelta(seconds=RETRY_AFTER - 5)
        <= until
        <= datetime.now(UTC) + timedelta(seconds=RETRY_AFTER + 1)
    )


def test_fails_over_past_a_server_error_and_a_rate_limit_and_reports_every_attempt(
    running_server: RunningServer, app: object, providers: FakeProviders
) -> None:
    client = modelroute.Client(running_server.channel, reporting=REPORTING)
    configure(client, providers, "chat", ("p500", "p429", "p200"))
    reported_at = datetime.now(UTC)
    attempts: list[Attempt] = []

    def fn(attempt: Attempt) -> dict[str, Any]:
        attempts.append(attempt)
        return post(attempt)

    assert client.call_with_failover("chat", "alice", fn, budget=30) == {"provider": "p200", "model": UPSTREAM}
    assert providers.called() == ["p500", "p429", "p200"]
    # Each provider got its own key and the upstream model name.
    keys_sent = [authorization == f"Bearer sk-{name}-key" for name, authorization, _ in providers.hits]
    assert keys_sent == [True, True, True]
    assert {model for _, _, model in providers.hits} == {UPSTREAM}
    assert [a.number for a in attempts] == [0, 1, 2]
    assert all(a.remaining() is not None and 0 < (a.remaining() or 0) <= 30 for a in attempts)
    client.close()  # flushes the reports
    statistics = client.failover_statistics
    assert (statistics.reported, statistics.dropped, statistics.send_failures) == (3, 0, 0)
    check_the_service_demoted_the_rate_limited_provider(client, reported_at)

    # The next call starts where the service now says: p500 first, then p200; p429 is not reached.
    providers.hits.clear()
    with modelroute.Client(running_server.channel, reporting=REPORTING) as again:
        assert again.call_with_failover("chat", "alice", post)["provider"] == "p200"
    assert providers.called() == ["p500", "p200"]


def test_a_stream_is_not_failed_over_once_its_first_chunk_came(
    running_server: RunningServer, app: object, providers: FakeProviders
) -> None:
    client = modelroute.Client(running_server.channel, reporting=REPORTING)
    configure(client, providers, "streamed", ("p500", "stream", "p200"))
    chunks = client.call_with_failover("streamed", "alice", stream, budget=30)
    # p500 failed before any chunk (failed over); the stream's first chunk came inside the loop.
    assert providers.called() == ["p500", "stream"]
    received = []
    with pytest.raises(IncompleteRead):
        for chunk in chunks:
            received.append(chunk)
    assert received == ["data: first"]
    assert providers.called() == ["p500", "stream"]  # p200 never called
    client.close()
    assert client.failover_statistics.reported == 2
    assert health(client, "p500") == [(UPSTREAM, 1, False)]
    assert health(client, "stream") == [(UPSTREAM, 1, False)]  # reported CONNECTION_FAILED, under threshold
    assert health(client, "p200") == []


def test_a_callers_mistake_and_exhaustion(running_server: RunningServer, app: object, providers: FakeProviders) -> None:
    client = modelroute.Client(running_server.channel, reporting=REPORTING)
    configure(client, providers, "failing", ("p500", "p429"))

    def bad_request(attempt: Attempt) -> None:
        raise ValueError("the caller's own bug")

    with pytest.raises(ValueError):
        client.call_with_failover("failing", "alice", bad_request)
    with pytest.raises(FailoverExhausted) as caught:
        client.call_with_failover("failing", "alice", post)
    assert [(f.attempt.provider_config_id, f.outcome) for f in caught.value.attempts] == [
        ("p500", Outcome.SERVER_ERROR),
        ("p429", Outcome.RATE_LIMITED),
    ]
    assert caught.value.attempts[1].classification.retry_after == RETRY_AFTER
    client.close()
    assert client.failover_statistics.reported == 2  # the mistake was not reported


def test_asyncio_fails_over_streams_and_reports(
    running_server: RunningServer, app: Any, providers: FakeProviders
) -> None:
    with modelroute.Client(running_server.channel) as admin:
        configure(admin, providers, "chat", ("p500", "p429", "p200"))
        configure_stream_model(admin)
    reported_at = datetime.now(UTC)

    async def afn(attempt: Attempt) -> dict[str, Any]:
        return await asyncio.to_thread(post, attempt)

    async def astream(attempt: Attempt) -> AsyncIterator[str]:
        lines = stream(attempt)  # each chunk is read on a thread: urllib blocks
        while True:
            line = await asyncio.to_thread(next, lines, None)
            if line is None:
                return
            yield line

    async def go() -> tuple[Any, list[str], BaseException | None, Any]:
        token = all_roles_token(app)
        async with modelroute.aio.Client(running_server.address, token=token, reporting=REPORTING) as client:
            answer = await client.call_with_failover("chat", "alice", afn, budget=30)
            chunks = await client.call_with_failover("streamed", "alice", astream, budget=30)
            received, error = [], None
            try:
                async for chunk in chunks:
                    received.append(chunk)
            except IncompleteRead as cut:
                error = cut
        return answer, received, error, client.failover_statistics

    answer, received, error, statistics = asyncio.run(go())
    assert answer == {"provider": "p200", "model": UPSTREAM}
    assert received == ["data: first"] and isinstance(error, IncompleteRead)
    # chat: p500, p429, p200; streamed (stream first, then p200): the stream only.
    assert providers.called() == ["p500", "p429", "p200", "stream"]
    assert (statistics.reported, statistics.dropped, statistics.send_failures) == (4, 0, 0)
    with modelroute.Client(running_server.channel) as client:
        check_the_service_demoted_the_rate_limited_provider(client, reported_at)
        assert health(client, "stream") == [(UPSTREAM, 1, False)]


def configure_stream_model(client: modelroute.Client) -> None:
    providers_url = client.get_provider_config("p200").base_url.replace("/p200/", "/stream/")
    client.create_provider_config(
        "stream",
        provider_config_pb2.ProviderConfig(
            family=common_pb2.FAMILY_OPENAI_COMPAT, base_url=providers_url, api_key="sk-stream-key"
        ),
    )
    client.create_model_config(
        "streamed",
        model_config_pb2.ModelConfig(
            family=common_pb2.FAMILY_OPENAI_COMPAT,
            model=UPSTREAM,
            context_limit=8192,
            provider_configs=["providerConfigs/stream", "providerConfigs/p200"],
        ),
    )


def test_reports_are_dropped_and_counted_while_the_service_is_away() -> None:
    """No server at all: the resolution fails (the caller learns at once), and reports queued by hand
    are dropped and counted, never blocking."""
    channel = grpc.insecure_channel("127.0.0.1:1")
    client = modelroute.Client(channel, timeout=0.5, reporting=Reporting(interval=0.02, send_timeout=0.2))
    with pytest.raises(modelroute.ModelrouteError):
        client.call_with_failover("chat", "alice", post)
    start = time.monotonic()
    for _ in range(100):
        client._reporter.report(modelroute.AttemptReport("p200", UPSTREAM, Outcome.SUCCESS))
    assert time.monotonic() - start < 0.5
    client.close()
    statistics = client.failover_statistics
    assert statistics.reported == 0 and statistics.dropped == 100 and statistics.queued == 0
    channel.close()
