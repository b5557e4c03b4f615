"""The failover helper without a server: the default classifier, the failover loops (sync and asyncio) on a
resolution given to them, and the background reporters on a fake `send`."""

from __future__ import annotations

import asyncio
import email.message
import gc
import http.client
import socket
import threading
import time
import urllib.error
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

import modelroute
from modelroute import failover
from modelroute.attempts import AsyncReporter, AttemptReport, Outcome, Reporter, Reporting, ReportQueue
from modelroute.errors import InvalidArgumentError, UnavailableError
from modelroute.failover import (
    CALLER_MISTAKE,
    Attempt,
    Classification,
    FailoverExhausted,
    classify_http,
    parse_retry_after,
)
from modelroute.v1 import common_pb2, resolver_pb2

# ---------------------------------------------------------------- errors as HTTP libraries raise them


def http_error(code: int, **headers: str) -> urllib.error.HTTPError:
    message = email.message.Message()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return urllib.error.HTTPError("http://provider.test/v1/chat", code, "failed", message, None)


class FakeResponse:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}


class HTTPStatusError(Exception):
    """Shaped as httpx's and requests' errors: the response carries the status and headers."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"status {status_code}")
        self.response = FakeResponse(status_code, headers)


class APIStatusError(Exception):
    """Shaped as the openai SDK's: `.status_code` and `.response.headers`."""

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        super().__init__("api status")
        self.status_code = status_code
        self.response = FakeResponse(status_code, headers)


class ClientResponseError(Exception):
    """Shaped as aiohttp's: `.status` and `.headers`."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__("client response")
        self.status = status
        self.headers = headers or {}


class ConnectError(Exception):  # httpx.ConnectError's name
    pass


class ReadTimeout(Exception):  # httpx.ReadTimeout's name
    pass


class APIConnectionError(Exception):  # the openai SDK's
    pass


class APITimeoutError(APIConnectionError):  # a timeout, although it derives from a connection error
    pass


class RemoteProtocolError(Exception):  # httpx: the server hung up mid-answer
    pass


class Flag(Exception):
    def __init__(self) -> None:
        super().__init__("flag")
        self.status = True  # a bool is no status code


def wrapped(error: Exception) -> RuntimeError:
    try:
        raise RuntimeError("the SDK's own error") from error
    except RuntimeError as outer:
        return outer


RATE_LIMITED = Outcome.RATE_LIMITED
CLASSIFIED: list[tuple[str, BaseException, Outcome | None, float | None]] = [
    ("urllib 500", http_error(500), Outcome.SERVER_ERROR, None),
    ("urllib 503 with Retry-After", http_error(503, Retry_After="9"), Outcome.SERVER_ERROR, None),
    ("urllib 429 seconds", http_error(429, Retry_After="7"), RATE_LIMITED, 7.0),
    ("urllib 429 without Retry-After", http_error(429), RATE_LIMITED, None),
    ("urllib 429 bad Retry-After", http_error(429, Retry_After="soon"), RATE_LIMITED, None),
    ("urllib 401", http_error(401), Outcome.KEY_REJECTED, None),
    ("urllib 403", http_error(403), Outcome.KEY_REJECTED, None),
    ("urllib 408", http_error(408), Outcome.TIMEOUT, None),
    ("urllib 400", http_error(400), None, None),
    ("urllib 404", http_error(404), None, None),
    ("urllib 422", http_error(422), None, None),
    ("httpx-like 429, lower-case header", HTTPStatusError(429, {"retry-after": "3"}), RATE_LIMITED, 3.0),
    ("httpx-like 502", HTTPStatusError(502), Outcome.SERVER_ERROR, None),
    ("httpx-like 404", HTTPStatusError(404), None, None),
    (
        "openai-like retry-after-ms",
        APIStatusError(429, {"retry-after-ms": "1500", "retry-after": "9"}),
        RATE_LIMITED,
        1.5,
    ),
    ("openai-like 529 overloaded", APIStatusError(529, {}), Outcome.SERVER_ERROR, None),
    ("aiohttp-like 401", ClientResponseError(401), Outcome.KEY_REJECTED, None),
    ("aiohttp-like 429", ClientResponseError(429, {"Retry-After": "12"}), RATE_LIMITED, 12.0),
    ("TimeoutError", TimeoutError("read timed out"), Outcome.TIMEOUT, None),
    ("socket.timeout", TimeoutError("timed out"), Outcome.TIMEOUT, None),
    ("ConnectionRefusedError", ConnectionRefusedError(111, "refused"), Outcome.CONNECTION_FAILED, None),
    ("ConnectionResetError", ConnectionResetError(104, "reset"), Outcome.CONNECTION_FAILED, None),
    (
        "URLError refused",
        urllib.error.URLError(ConnectionRefusedError(111, "refused")),
        Outcome.CONNECTION_FAILED,
        None,
    ),
    ("URLError timeout", urllib.error.URLError(TimeoutError("timed out")), Outcome.TIMEOUT, None),
    ("DNS failure", socket.gaierror(-2, "Name or service not known"), Outcome.CONNECTION_FAILED, None),
    ("IncompleteRead", http.client.IncompleteRead(b"partial"), Outcome.CONNECTION_FAILED, None),
    ("RemoteDisconnected", http.client.RemoteDisconnected("closed"), Outcome.CONNECTION_FAILED, None),
    ("BadStatusLine", http.client.BadStatusLine("garbage"), Outcome.SERVER_ERROR, None),
    ("httpx ConnectError by name", ConnectError("refused"), Outcome.CONNECTION_FAILED, None),
    ("httpx ReadTimeout by name", ReadTimeout("slow"), Outcome.TIMEOUT, None),
    ("openai APIConnectionError", APIConnectionError("down"), Outcome.CONNECTION_FAILED, None),
    ("openai APITimeoutError", APITimeoutError("slow"), Outcome.TIMEOUT, None),
    ("httpx RemoteProtocolError", RemoteProtocolError("hung up"), Outcome.CONNECTION_FAILED, None),
    ("raised from a 503", wrapped(http_error(503)), Outcome.SERVER_ERROR, None),
    ("raised from a refused connection", wrapped(ConnectionRefusedError()), Outcome.CONNECTION_FAILED, None),
    ("a bug", ValueError("bad json"), None, None),
    ("a KeyError", KeyError("choices"), None, None),
    ("a bool status", Flag(), None, None),
]


@pytest.mark.parametrize(
    ("error", "outcome", "retry_after"), [c[1:] for c in CLASSIFIED], ids=[c[0] for c in CLASSIFIED]
)
def test_the_default_classifier(error: BaseException, outcome: Outcome | None, retry_after: float | None) -> None:
    classification = classify_http(error)
    assert classification.outcome == outcome
    assert classification.fail_over is (outcome is not None)
    assert classification.retry_after == retry_after
    if outcome is None:
        assert classification == CALLER_MISTAKE


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("Thu, 03 Dec 2026 10:01:30 GMT", now) == 90.0
    assert parse_retry_after("Thu, 03 Dec 2026 09:00:00 GMT", now) == 0.0  # already past
    for invalid in ("-5", "soon", "", "nan", "inf"):
        assert parse_retry_after(invalid, now) is None
    date = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    classification = classify_http(http_error(429, Retry_After=date))
    assert classification.retry_after is not None and 55 <= classification.retry_after <= 60


def test_outcomes_are_the_protos_and_reports_convert() -> None:
    assert {o.name: int(o) for o in Outcome} == {
        name.removeprefix("ATTEMPT_OUTCOME_"): number
        for name, number in resolver_pb2.AttemptOutcome.items()
        if number != 0
    }
    report = AttemptReport(
        "openai-main",
        "gpt-4o",
        Outcome.RATE_LIMITED,
        user="alice",
        key_source=common_pb2.KEY_SOURCE_USER,
        config_revision=12,
        retry_after=1.25,
    )
    message = report.to_proto()
    assert message.provider_config == "providerConfigs/openai-main"
    assert (message.model, message.user, message.key_source, message.config_revision) == (
        "gpt-4o",
        "alice",
        common_pb2.KEY_SOURCE_USER,
        12,
    )
    assert message.outcome == resolver_pb2.ATTEMPT_OUTCOME_RATE_LIMITED
    assert message.retry_after.ToTimedelta() == timedelta(seconds=1.25)
    # Capped at the service's 24 hours; never sent with another outcome.
    assert AttemptReport("p", "m", RATE_LIMITED, retry_after=1e9).to_proto().retry_after.seconds == 86400
    assert not AttemptReport("p", "m", Outcome.SERVER_ERROR, retry_after=5).to_proto().HasField("retry_after")


# ---------------------------------------------------------------- the loop, on a resolution given to it


def resolution(*names: str, cooling: str = "") -> resolver_pb2.ResolveModelResponse:
    attachments = []
    for position, name in enumerate(names):
        attachment = resolver_pb2.ResolvedAttachment(
            provider_config=f"providerConfigs/{name}",
            position=position,
            family=common_pb2.FAMILY_OPENAI_COMPAT,
            model=f"upstream-{name}",
            base_url=f"http://{name}.test/v1",
            key_source=common_pb2.KEY_SOURCE_STORED,
            api_key=f"sk-{name}-secret",
        )
        if name == cooling:
            attachment.cooldown_until.CopyFrom(timestamp_pb2.Timestamp(seconds=2_000_000_000))
        attachments.append(attachment)
    return resolver_pb2.ResolveModelResponse(
        model_config="modelConfigs/m", selected=attachments[0], fallbacks=attachments[1:], config_revision=42
    )


class Provider:
    """A fake fn: what each provider config does when called, and the order it was called in."""

    def __init__(self, behaviour: dict[str, Any]) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []
        self.attempts: list[Attempt] = []

    def __call__(self, attempt: Attempt) -> Any:
        self.calls.append(attempt.provider_config_id)
        self.attempts.append(attempt)
        action = self.behaviour[attempt.provider_config_id]
        if isinstance(action, BaseException):
            raise action
        return action(attempt) if callable(action) else action


def run(
    provider: Provider, names: tuple[str, ...] = ("a", "b", "c"), **options: Any
) -> tuple[Any, list[AttemptReport]]:
    reports: list[AttemptReport] = []
    result = failover.run(
        lambda remaining: resolution(*names), provider, user="alice", report=reports.append, **options
    )
    return result, reports


def outcomes(reports: list[AttemptReport]) -> list[tuple[str, Outcome]]:
    return [(r.provider_config.removeprefix("providerConfigs/"), r.outcome) for r in reports]


def test_fails_over_in_order_and_reports_every_attempt() -> None:
    provider = Provider({"a": http_error(500), "b": http_error(429, Retry_After="5"), "c": "answer"})
    result, reports = run(provider)
    assert result == "answer"
    assert provider.calls == ["a", "b", "c"]
    assert [a.number for a in provider.attempts] == [0, 1, 2]
    assert outcomes(reports) == [("a", Outcome.SERVER_ERROR), ("b", RATE_LIMITED), ("c", Outcome.SUCCESS)]
    assert [r.retry_after for r in reports] == [None, 5.0, None]
    for report, name in zip(reports, "abc", strict=True):
        assert (report.model, report.user, report.key_source, report.config_revision) == (
            f"upstream-{name}",
            "alice",
            common_pb2.KEY_SOURCE_STORED,
            42,
        )
    first = provider.attempts[0]
    assert (first.base_url, first.api_key, first.model_config, first.position) == (
        "http://a.test/v1",
        "sk-a-secret",
        "modelConfigs/m",
        0,
    )
    assert "sk-a-secret" not in repr(first)  # an attempt may be logged: its key never is


def test_a_cooling_attachment_says_until_when() -> None:
    provider = Provider({"a": http_error(503), "b": "ok"})
    failover.run(lambda remaining: resolution("a", "b", cooling="b"), provider)
    assert provider.attempts[0].cooldown_until is None
    assert provider.attempts[1].cooldown_until == datetime.fromtimestamp(2_000_000_000, UTC)


def test_a_callers_mistake_stops_at_once_unreported() -> None:
    mistake = http_error(400)
    provider = Provider({"a": mistake, "b": "never"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        run(provider)
    assert caught.value is mistake
    assert provider.calls == ["a"]


def test_a_bug_in_fn_is_not_failed_over() -> None:
    provider = Provider({"a": KeyError("choices"), "b": "never"})
    reports: list[AttemptReport] = []
    with pytest.raises(KeyError):
        failover.run(lambda remaining: resolution("a", "b"), provider, report=reports.append)
    assert provider.calls == ["a"] and reports == []


def test_a_base_exception_goes_straight_through() -> None:
    class Stop(BaseException):
        pass

    provider = Provider({"a": Stop(), "b": "never"})
    with pytest.raises(Stop):
        run(provider)
    assert provider.calls == ["a"]


def test_the_hook_comes_first_and_may_defer() -> None:
    class QuotaExceeded(Exception):
        pass

    seen: list[Exception] = []

    def classify(error: Exception) -> Classification | None:
        seen.append(error)
        if isinstance(error, QuotaExceeded):
            return Classification(Outcome.RATE_LIMITED, retry_after=30)
        if isinstance(error, LookupError):  # not a health signal, but another provider may have it
            return Classification(None, fail_over=True)
        return None

    provider = Provider({"a": QuotaExceeded(), "b": LookupError("no such model here"), "c": http_error(502), "d": 1})
    result, reports = run(provider, ("a", "b", "c", "d"), classify=classify)
    assert result == 1 and provider.calls == ["a", "b", "c", "d"]
    assert outcomes(reports) == [("a", RATE_LIMITED), ("c", Outcome.SERVER_ERROR), ("d", Outcome.SUCCESS)]
    assert reports[0].retry_after == 30
    assert len(seen) == 3


def test_a_reported_failure_that_must_not_fail_over() -> None:
    provider = Provider({"a": http_error(500), "b": "never"})
    with pytest.raises(urllib.error.HTTPError):
        run(provider, classify=lambda error: Classification(Outcome.SERVER_ERROR, fail_over=False))
    assert provider.calls == ["a"]


def test_every_attachment_failing_raises_with_each_attempt() -> None:
    last = ConnectionResetError("reset by sk-c-secret")  # an error text holding the attempt's key
    provider = Provider({"a": http_error(503), "b": TimeoutError(), "c": last})
    with pytest.raises(FailoverExhausted) as caught:
        run(provider)
    exhausted = caught.value
    assert not exhausted.budget_exhausted
    assert exhausted.model_config == "modelConfigs/m"
    assert [(f.attempt.provider_config_id, f.outcome) for f in exhausted.attempts] == [
        ("a", Outcome.SERVER_ERROR),
        ("b", Outcome.TIMEOUT),
        ("c", Outcome.CONNECTION_FAILED),
    ]
    assert exhausted.__cause__ is last
    assert "every attachment of modelConfigs/m failed" in str(exhausted)
    assert "sk-c-secret" not in str(exhausted) and "<redacted>" in str(exhausted)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_attempt_starts_once_the_budget_is_spent() -> None:
    clock = Clock()
    remaining: list[float | None] = []

    def slow_failure(attempt: Attempt) -> None:
        remaining.append(attempt.remaining())
        assert attempt.timeout(30) == min(30, attempt.remaining() or 0)
        clock.now += 6
        raise http_error(500)

    resolved_with: list[float | None] = []

    def resolve(budget_left: float | None) -> resolver_pb2.ResolveModelResponse:
        resolved_with.append(budget_left)
        return resolution("a", "b", "c")

    provider = Provider({"a": slow_failure, "b": slow_failure, "c": "never"})
    with pytest.raises(FailoverExhausted) as caught:
        failover.run(resolve, provider, budget=10, clock=clock)
    assert resolved_with == [10]
    assert provider.calls == ["a", "b"]
    assert remaining == [10, 4]
    assert caught.value.budget_exhausted and len(caught.value.attempts) == 2
    assert "time budget (10 s)" in str(caught.value)


def test_a_spent_budget_resolves_nothing() -> None:
    def resolve(_: float | None) -> resolver_pb2.ResolveModelResponse:
        raise AssertionError("resolved")

    with pytest.raises(FailoverExhausted) as caught:
        failover.run(resolve, Provider({}), budget=0)
    assert caught.value.budget_exhausted and caught.value.attempts == ()
    with pytest.raises(ValueError):
        failover.run(resolve, Provider({}), budget=-1)


def test_without_a_budget_there_is_no_deadline() -> None:
    provider = Provider({"a": lambda attempt: (attempt.deadline, attempt.remaining(), attempt.timeout(7))})
    result, _ = run(provider, ("a",))
    assert result == (None, None, 7)


def test_max_attempts() -> None:
    provider = Provider({"a": http_error(500), "b": http_error(500), "c": "never"})
    with pytest.raises(FailoverExhausted) as caught:
        run(provider, max_attempts=2)
    assert provider.calls == ["a", "b"] and not caught.value.budget_exhausted
    assert "max_attempts (2)" in str(caught.value)


def test_nothing_fails_over_once_fn_said_it_started() -> None:
    def delivered_then_broke(attempt: Attempt) -> None:
        attempt.started()
        raise http_error(502)

    provider = Provider({"a": delivered_then_broke, "b": "never"})
    with pytest.raises(urllib.error.HTTPError):
        run(provider)
    assert provider.calls == ["a"]


def test_started_failure_is_reported() -> None:
    def delivered_then_broke(attempt: Attempt) -> None:
        attempt.started()
        raise http_error(502)

    reports: list[AttemptReport] = []
    with pytest.raises(urllib.error.HTTPError):
        failover.run(lambda _: resolution("a", "b"), Provider({"a": delivered_then_broke}), report=reports.append)
    assert outcomes(reports) == [("a", Outcome.SERVER_ERROR)]


# ---------------------------------------------------------------- streams (sync)


def chunks(*items: Any) -> Iterator[Any]:
    """A stream: each item is yielded, or raised if it is an exception."""
    for item in items:
        if isinstance(item, BaseException):
            raise item
        yield item


def test_a_stream_failing_before_its_first_chunk_fails_over() -> None:
    provider = Provider({"a": lambda _: chunks(http_error(503)), "b": lambda _: chunks("x", "y")})
    stream, reports = run(provider)
    assert outcomes(reports) == [("a", Outcome.SERVER_ERROR)]  # b's outcome comes at the end of its stream
    assert list(stream) == ["x", "y"]
    assert outcomes(reports) == [("a", Outcome.SERVER_ERROR), ("b", Outcome.SUCCESS)]
    assert provider.calls == ["a", "b"]


def test_a_stream_that_breaks_after_its_first_chunk_is_not_failed_over() -> None:
    provider = Provider({"a": lambda _: chunks("first", ConnectionResetError("cut")), "b": lambda _: chunks("b")})
    stream, reports = run(provider)
    received = []
    with pytest.raises(ConnectionResetError):
        for chunk in stream:
            received.append(chunk)
    assert received == ["first"]
    assert provider.calls == ["a"]
    assert outcomes(reports) == [("a", Outcome.CONNECTION_FAILED)]
    assert provider.attempts[0].is_started


def test_a_stream_the_caller_stops_reading_is_a_success_and_is_closed() -> None:
    closed = threading.Event()

    def endless(_: Attempt) -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    stream, reports = run(Provider({"a": endless}), ("a",))
    assert [next(stream), next(stream), next(stream)] == [0, 1, 2]
    stream.close()
    assert closed.is_set()
    assert outcomes(reports) == [("a", Outcome.SUCCESS)]


def test_a_stream_never_read_still_reports_once_dropped() -> None:
    stream, reports = run(Provider({"a": lambda _: chunks("x")}), ("a",))
    assert reports == []
    del stream
    gc.collect()
    assert outcomes(reports) == [("a", Outcome.SUCCESS)]


def test_an_empty_stream_is_a_success() -> None:
    stream, reports = run(Provider({"a": lambda _: chunks()}), ("a",))
    assert list(stream) == []
    assert outcomes(reports) == [("a", Outcome.SUCCESS)]


def test_a_stream_mistake_before_the_first_chunk_stops() -> None:
    provider = Provider({"a": lambda _: chunks(http_error(422)), "b": lambda _: chunks("never")})
    with pytest.raises(urllib.error.HTTPError):
        run(provider)
    assert provider.calls == ["a"]


# ---------------------------------------------------------------- asyncio


def arun(fn: Any, names: tuple[str, ...] = ("a", "b", "c"), **options: Any) -> tuple[Any, list[AttemptReport]]:
    reports: list[AttemptReport] = []

    async def resolve(remaining: float | None) -> resolver_pb2.ResolveModelResponse:
        return resolution(*names)

    async def go() -> Any:
        result = await failover.run_async(resolve, fn, user="alice", report=reports.append, **options)
        if isinstance(result, AsyncIterator):
            received = []
            try:
                async for chunk in result:
                    received.append(chunk)
            except Exception as error:
                return received, error
            return received, None
        return result

    return asyncio.run(go()), reports


def test_asyncio_fails_over_in_order() -> None:
    calls: list[str] = []

    async def fn(attempt: Attempt) -> str:
        calls.append(attempt.provider_config_id)
        await asyncio.sleep(0)
        if attempt.provider_config_id == "a":
            raise http_error(500)
        if attempt.provider_config_id == "b":
            raise HTTPStatusError(429, {"Retry-After": "2"})
        return "answer"

    result, reports = arun(fn)
    assert result == "answer" and calls == ["a", "b", "c"]
    assert outcomes(reports) == [("a", Outcome.SERVER_ERROR), ("b", RATE_LIMITED), ("c", Outcome.SUCCESS)]
    assert reports[1].retry_after == 2


def test_asyncio_stops_on_a_callers_mistake() -> None:
    calls: list[str] = []

    async def fn(attempt: Attempt) -> str:
        calls.append(attempt.provider_config_id)
        raise HTTPStatusError(400)

    with pytest.raises(HTTPStatusError):
        arun(fn)
    assert calls == ["a"]


def test_asyncio_streams_fail_over_only_before_the_first_chunk() -> None:
    calls: list[str] = []

    async def fn(attempt: Attempt) -> AsyncIterator[str]:
        calls.append(attempt.provider_config_id)
        if attempt.provider_config_id == "a":
            raise ConnectionRefusedError()
        yield "first"
        await asyncio.sleep(0)
        raise TimeoutError("the provider stalled")

    (received, error), reports = arun(fn)
    assert received == ["first"] and isinstance(error, TimeoutError)
    assert calls == ["a", "b"]
    assert outcomes(reports) == [("a", Outcome.CONNECTION_FAILED), ("b", Outcome.TIMEOUT)]


def test_asyncio_stream_success_and_early_close() -> None:
    async def fn(attempt: Attempt) -> AsyncIterator[int]:
        for n in range(3):
            yield n

    (received, error), reports = arun(fn, ("a",))
    assert received == [0, 1, 2] and error is None
    assert outcomes(reports) == [("a", Outcome.SUCCESS)]

    closed: list[bool] = []

    async def endless(attempt: Attempt) -> AsyncIterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.append(True)

    reports = []

    async def resolve(remaining: float | None) -> resolver_pb2.ResolveModelResponse:
        return resolution("a")

    async def read_two() -> list[int]:
        stream = await failover.run_async(resolve, endless, report=reports.append)
        got = [await anext(stream), await anext(stream)]
        await stream.aclose()
        return got

    assert asyncio.run(read_two()) == [1, 1]
    assert closed == [True]
    assert outcomes(reports) == [("a", Outcome.SUCCESS)]


def test_asyncio_budget() -> None:
    clock = Clock()

    async def fn(attempt: Attempt) -> None:
        clock.now += 6
        raise http_error(503)

    with pytest.raises(FailoverExhausted) as caught:
        arun(fn, budget=10, clock=clock)
    assert caught.value.budget_exhausted and len(caught.value.attempts) == 2


# ---------------------------------------------------------------- the reporters


def report(n: int = 0) -> AttemptReport:
    return AttemptReport(f"p{n}", "m", Outcome.SUCCESS)


def wait_for(condition: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


class Sent:
    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[AttemptReport]] = []
        self.timeouts: list[float] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: list[AttemptReport], timeout: float) -> resolver_pb2.ReportAttemptsResponse:
        self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "no replica")
        self.batches.append(batch)
        self.timeouts.append(timeout)
        return resolver_pb2.ReportAttemptsResponse(recorded=len(batch), ignored=1)


def test_the_reporter_sends_in_batches_in_the_background_and_close_flushes() -> None:
    sent = Sent()
    reporter = Reporter(sent, Reporting(batch_size=3, interval=0.05, send_timeout=0.5))
    for n in range(7):
        reporter.report(report(n))
    wait_for(lambda: sum(len(b) for b in sent.batches) == 7)
    assert all(1 <= len(b) <= 3 for b in sent.batches)
    assert [r.provider_config for b in sent.batches for r in b] == [f"p{n}" for n in range(7)]  # in order
    assert all(t == 0.5 for t in sent.timeouts)
    # Whatever is left when closing is sent before close returns.
    sent.gate.clear()
    reporter.report(report(7))
    reporter.report(report(8))
    sent.gate.set()
    reporter.close()
    statistics = reporter.statistics()
    assert statistics.reported == 9 and statistics.dropped == 0 and statistics.queued == 0
    assert statistics.ignored == len(sent.batches)
    reporter.report(report(9))  # after close: dropped, counted
    assert reporter.statistics().dropped == 1


def test_a_full_batch_is_sent_without_waiting_for_the_interval() -> None:
    sent = Sent()
    reporter = Reporter(sent, Reporting(batch_size=5, interval=60))
    for n in range(5):
        reporter.report(report(n))
    wait_for(lambda: len(sent.batches) == 1)
    assert len(sent.batches[0]) == 5
    reporter.close()


def test_the_queue_is_bounded_and_the_caller_never_waits() -> None:
    sent = Sent()
    sent.gate.clear()  # the service hangs
    reporter = Reporter(sent, Reporting(capacity=50, batch_size=10, interval=60))
    start = time.perf_counter()
    for n in range(1000):
        reporter.report(report(n))
    assert time.perf_counter() - start < 0.5
    statistics = reporter.statistics()
    # At most one batch is out with the hanging send; at most 50 wait; the rest were dropped.
    assert statistics.queued <= 50 and statistics.dropped >= 1000 - 50 - 10
    sent.gate.set()
    reporter.close()
    after = reporter.statistics()
    assert after.reported + after.dropped == 1000 and after.queued == 0


def test_a_batch_the_service_does_not_take_is_dropped_and_counted() -> None:
    sent = Sent(fail=1)
    reporter = Reporter(sent, Reporting(batch_size=2, interval=0.02))
    reporter.report(report(1))
    reporter.report(report(2))
    wait_for(lambda: reporter.statistics().send_failures == 1)
    reporter.report(report(3))
    wait_for(lambda: reporter.statistics().reported == 1)
    statistics = reporter.statistics()
    assert (statistics.dropped, statistics.send_failures, statistics.reported) == (2, 1, 1)
    assert [r.provider_config for b in sent.batches for r in b] == ["p3"]  # never sent again
    reporter.close()


def test_close_gives_up_after_its_timeout() -> None:
    sent = Sent()
    sent.gate.clear()
    reporter = Reporter(sent, Reporting(batch_size=1, interval=60, close_timeout=0.2))
    reporter.report(report(1))
    reporter.report(report(2))
    start = time.monotonic()
    reporter.close()
    assert time.monotonic() - start < 2
    sent.gate.set()
    wait_for(lambda: reporter.statistics().queued == 0)
    assert reporter.statistics().dropped >= 1


def test_old_reports_are_dropped_and_a_closing_deadline_drops_the_rest() -> None:
    clock = Clock()
    queue = ReportQueue(Reporting(batch_size=10, max_age=30), clock)
    queue.offer(report(1))
    clock.now += 20
    queue.offer(report(2))
    clock.now += 15
    assert [r.provider_config for r in queue.take()] == ["p2"]
    assert queue.statistics().dropped == 1
    queue.offer(report(3))
    assert queue.next_send(deadline=clock.now - 1) is None
    assert queue.statistics().dropped == 2 and len(queue) == 0
    queue.offer(report(4))
    step = queue.next_send(deadline=clock.now + 0.25)
    assert step is not None and step[1] == 0.25


def test_the_asyncio_reporter() -> None:
    async def go() -> tuple[list[list[AttemptReport]], Any]:
        batches: list[list[AttemptReport]] = []
        failures = [1]

        async def send(batch: list[AttemptReport], timeout: float) -> resolver_pb2.ReportAttemptsResponse:
            await asyncio.sleep(0)
            if failures:
                failures.pop()
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "away")
            batches.append(batch)
            return resolver_pb2.ReportAttemptsResponse(recorded=len(batch))

        reporter = AsyncReporter(send, Reporting(batch_size=2, interval=0.02))
        reporter.report(report(0))
        reporter.report(report(1))  # a full batch: the first send, which fails
        for _ in range(100):
            await asyncio.sleep(0.01)
            if reporter.statistics().send_failures:
                break
        for n in range(2, 7):
            reporter.report(report(n))
        await reporter.close()
        return batches, reporter.statistics()

    batches, statistics = asyncio.run(go())
    assert [r.provider_config for b in batches for r in b] == [f"p{n}" for n in range(2, 7)]
    assert all(len(b) <= 2 for b in batches)
    assert (statistics.reported, statistics.dropped, statistics.send_failures, statistics.queued) == (5, 2, 1, 0)


def test_a_client_without_a_service_drops_and_counts() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    settings = Reporting(interval=0.02, send_timeout=0.5, close_timeout=0.5)
    with modelroute.Client(f"127.0.0.1:{port}", token="mrt_unused", reporting=settings) as client:
        client._reporter.report(report(1))
        wait_for(lambda: client.failover_statistics.send_failures == 1)
        assert client.failover_statistics.dropped == 1 and client.failover_statistics.reported == 0


def test_reporting_settings_are_checked() -> None:
    bad: list[dict[str, Any]] = [{"batch_size": 0}, {"batch_size": 1001}, {"capacity": 0}, {"interval": 0}]
    for settings in bad:
        with pytest.raises(ValueError):
            Reporting(**settings)


def test_a_batch_refused_for_some_of_its_reports_is_sent_again_without_them() -> None:
    batches: list[list[str]] = []

    def send(batch: list[AttemptReport], timeout: float) -> resolver_pb2.ReportAttemptsResponse:
        names = [r.provider_config for r in batch]
        batches.append(names)
        if "gone" in names:  # refused whole, nothing recorded: the service names the bad reports
            violations = [(f"attempts[{i}].provider_config", "names no provider config") for i, n in enumerate(names)]
            raise InvalidArgumentError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad batch",
                field_violations=[v for v, n in zip(violations, names, strict=True) if n == "gone"],
            )
        return resolver_pb2.ReportAttemptsResponse(recorded=len(batch))

    reporter = Reporter(send, Reporting(batch_size=3, interval=60))
    for name in ("p1", "gone", "p2"):
        reporter.report(AttemptReport(name, "m", Outcome.SUCCESS))
    reporter.close()
    assert batches == [["p1", "gone", "p2"], ["p1", "p2"]]
    statistics = reporter.statistics()
    assert (statistics.reported, statistics.dropped, statistics.send_failures) == (2, 1, 1)


def test_a_refused_ambient_credential_fails_over_unreported() -> None:
    response = resolution("a", "b")
    response.selected.key_source = common_pb2.KEY_SOURCE_AMBIENT
    response.selected.api_key = ""
    provider = Provider({"a": http_error(403), "b": "ok"})
    reports: list[AttemptReport] = []
    assert failover.run(lambda _: response, provider, report=reports.append) == "ok"
    assert provider.calls == ["a", "b"]
    assert outcomes(reports) == [("b", Outcome.SUCCESS)]


def test_closing_a_reporter_that_never_reported() -> None:
    reporter = Reporter(Sent())
    reporter.close()
    reporter.close()  # twice is fine
    assert reporter.statistics() == modelroute.ReportingStatistics()

    async def go() -> None:
        async_reporter = AsyncReporter(Sent())  # type: ignore[arg-type]  # never called
        await async_reporter.close()
        assert async_reporter.statistics() == modelroute.ReportingStatistics()

    asyncio.run(go())


def test_an_idle_reporter_sends_a_lone_report_after_one_interval() -> None:
    sent = Sent()
    reporter = Reporter(sent, Reporting(interval=0.3))
    start = time.monotonic()
    reporter.report(report(1))
    wait_for(lambda: len(sent.batches) == 1)
    assert 0.25 <= time.monotonic() - start < 3
    time.sleep(0.1)
    reporter.report(report(2))  # idle again: the next one gathers for an interval too
    wait_for(lambda: len(sent.batches) == 2)
    reporter.close()
    assert reporter.statistics().reported == 2
