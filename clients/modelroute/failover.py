"""The failover helper: resolve a model, call the selected attachment, then each fallback in turn.

    answer = client.call_with_failover("gpt-4o", "alice", lambda attempt: post(attempt), budget=30)

`Client.call_with_failover` and `modelroute.aio.Client.call_with_failover` wire the two loops here (`run`
and `run_async`) to a resolution and to the client's background reporter. What decides a failover is one
`Classification` per error: the caller's `classify` hook first, else `classify_http`, the default for HTTP
status codes and network errors (duck-typed: no HTTP library is needed).

- A failure that another provider may not have (rate limit, server error, timeout, connection failure,
  rejected key) is reported and the next attachment is tried; a caller's own mistake (400, 404, 422, or any
  error the classifiers do not recognise) is raised at once, unreported.
- Once `fn` has started delivering (it called `attempt.started()`, or it returned an iterator and the first
  chunk came), the attempt belongs to that provider: a later error is reported and raised, never failed over.
- `budget` seconds cover the whole call, resolution included: no attempt starts once they are spent. The
  helper never interrupts `fn`; `attempt.remaining()` / `attempt.timeout(...)` give `fn` its own deadline.
- Every attempt is reported (SUCCESS, or the failure's outcome) in the background; see `modelroute.attempts`.
"""

from __future__ import annotations

import email.utils
import http.client
import inspect
import logging
import math
import socket
import ssl
import time
import urllib.error
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from .attempts import AttemptReport, Outcome
from .v1 import common_pb2, resolver_pb2

__all__ = [
    "CALLER_MISTAKE",
    "Attempt",
    "Classification",
    "Classifier",
    "FailedAttempt",
    "FailoverExhausted",
    "classify_http",
    "classify_status",
    "http_status",
    "parse_retry_after",
    "run",
    "run_async",
]

log = logging.getLogger("modelroute.failover")

R = TypeVar("R")
T = TypeVar("T")


# ------------------------------------------------------------------ classification


@dataclass(frozen=True)
class Classification:
    """What a failed attempt means.

    `outcome`: what to report (None: nothing, as for a caller's own mistake). `retry_after`: seconds, the
    provider's Retry-After (reported with RATE_LIMITED). `fail_over`: try the next attachment; False raises
    the error at once. The usual two: `Classification(Outcome.SERVER_ERROR)` and `CALLER_MISTAKE`.
    """

    outcome: Outcome | None
    retry_after: float | None = None
    fail_over: bool = True


# A bad request of the caller's own: raised at once, not reported, no other provider tried.
CALLER_MISTAKE = Classification(None, None, False)
_TIMEOUT = Classification(Outcome.TIMEOUT)
_CONNECTION_FAILED = Classification(Outcome.CONNECTION_FAILED)
_SERVER_ERROR = Classification(Outcome.SERVER_ERROR)
_KEY_REJECTED = Classification(Outcome.KEY_REJECTED)

# A caller's hook: a Classification, or None to leave the error to `classify_http`.
Classifier = Callable[[Exception], "Classification | None"]

# Exception class names (anywhere in the class's MRO) of HTTP libraries' network failures that do not derive
# from the built-in ConnectionError: httpx, requests, aiohttp, the openai and anthropic SDKs.
_CONNECTION_NAMES = frozenset(
    {"NetworkError", "RemoteProtocolError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError"}
)
# How far `classify_http` follows `raise ... from error` to find a recognisable cause.
_CAUSE_DEPTH = 5


def classify_http(error: BaseException) -> Classification:
    """The default classifier.

    An HTTP status code carried by the error (`.response.status_code` as httpx, requests and the openai
    SDK have it, `urllib.error.HTTPError.code`, `.status_code`, `.status`): see `classify_status`.
    Otherwise `TimeoutError` (`socket.timeout`, `asyncio.TimeoutError`) and any class named `...Timeout...`
    are TIMEOUT; `ConnectionError`, `urllib.error.URLError`, DNS and TLS failures, an answer cut short
    (`http.client.IncompleteRead`) and the HTTP libraries' connection errors are CONNECTION_FAILED; another
    malformed HTTP answer (`http.client.HTTPException`) is SERVER_ERROR. An error raised `from` one of those
    is classified by its cause. Anything else is the caller's own mistake (a bug is never failed over).
    """
    candidate: BaseException | None = error
    for _ in range(_CAUSE_DEPTH):
        if candidate is None:
            break
        found = _classify_one(candidate)
        if found is not None:
            return found
        candidate = candidate.__cause__
    return CALLER_MISTAKE


def classify_status(status: int, headers: Any = None) -> Classification:
    """429 RATE_LIMITED (with the Retry-After of `headers`), 408 TIMEOUT, 401 and 403 KEY_REJECTED, 5xx
    SERVER_ERROR; any other status is the caller's own mistake (400, 404, 422, ...)."""
    if status == 429:
        return Classification(Outcome.RATE_LIMITED, retry_after_of(headers))
    if status == 408:
        return _TIMEOUT
    if status in (401, 403):
        return _KEY_REJECTED
    if 500 <= status <= 599:
        return _SERVER_ERROR
    return CALLER_MISTAKE


def _classify_one(error: BaseException) -> Classification | None:
    status = http_status(error)
    if status is not None:
        return classify_status(status, _headers_of(error))
    if isinstance(error, TimeoutError):
        return _TIMEOUT
    if isinstance(error, urllib.error.URLError):
        return _TIMEOUT if isinstance(error.reason, TimeoutError) else _CONNECTION_FAILED
    if isinstance(error, ConnectionError | http.client.IncompleteRead | socket.gaierror | ssl.SSLError):
        return _CONNECTION_FAILED
    if isinstance(error, http.client.HTTPException):
        return _SERVER_ERROR
    names = [cls.__name__ for cls in type(error).__mro__]
    if any("Timeout" in name for name in names):
        return _TIMEOUT
    if any(name in _CONNECTION_NAMES or "Connect" in name for name in names):
        return _CONNECTION_FAILED
    return None


def _attribute(value: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        return getattr(value, name, None)
    except Exception:  # a property that refuses (httpx's `.request` before one is set)
        return None


def http_status(error: BaseException) -> int | None:
    """The HTTP status code an exception carries, if it carries one."""
    if isinstance(error, urllib.error.HTTPError):
        return int(error.code)
    response = _attribute(error, "response")
    for value in (
        _attribute(error, "status_code"),
        _attribute(response, "status_code"),
        _attribute(error, "status"),
        _attribute(response, "status"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return int(value)
    return None


def _headers_of(error: BaseException) -> Any:
    headers = _attribute(error, "headers")
    return headers if headers is not None else _attribute(_attribute(error, "response"), "headers")


def _header(headers: Any, name: str) -> str | None:
    """A header from any mapping-like object, by name, case-insensitively."""
    if headers is None:
        return None
    value: Any = None
    try:
        value = headers.get(name)
        if value is None and hasattr(headers, "items"):
            value = next((v for k, v in headers.items() if str(k).lower() == name.lower()), None)
    except Exception:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) else None


def retry_after_of(headers: Any, now: datetime | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI's) or `Retry-After`, when either is given and valid."""
    milliseconds = _header(headers, "retry-after-ms")
    if milliseconds is not None:
        seconds = parse_retry_after(milliseconds, now)
        if seconds is not None:
            return seconds / 1000
    value = _header(headers, "retry-after")
    return None if value is None else parse_retry_after(value, now)


def parse_retry_after(value: str, now: datetime | None = None) -> float | None:
    """A Retry-After value in seconds: delta-seconds (`120`) or an HTTP-date (a past date is 0); None when
    it is neither."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# ------------------------------------------------------------------ attempts


@dataclass(eq=False, kw_only=True)
class Attempt:
    """One attempt: the resolved attachment `fn` is to call, and its time left.

    `provider_config` (`providerConfigs/...`), `model` (the upstream name to send), `base_url`, `family`,
    `key_source` and `api_key` (empty for ambient credentials) are the attachment's; `cooldown_until` is set
    when the service had it cooling down (it then comes after every attachment that is not). `model_config`
    and `config_revision` are the resolution's; `number` counts attempts from 0. `attachment` is the message.
    """

    provider_config: str
    model: str
    base_url: str
    family: common_pb2.Family.ValueType
    key_source: common_pb2.KeySource.ValueType
    api_key: str = field(repr=False)
    position: int
    cooldown_until: datetime | None
    model_config: str
    config_revision: int
    user: str
    number: int
    # time.monotonic() when the budget ends; None without a budget.
    deadline: float | None
    attachment: resolver_pb2.ResolvedAttachment = field(repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _started: bool = field(default=False, repr=False)

    @property
    def provider_config_id(self) -> str:
        return self.provider_config.removeprefix("providerConfigs/")

    def remaining(self) -> float | None:
        """Seconds left of the budget (never negative); None without a budget."""
        return None if self.deadline is None else max(0.0, self.deadline - self.clock())

    def timeout(self, default: float) -> float:
        """`default`, or less when less is left of the budget: a timeout for `fn`'s own HTTP call."""
        remaining = self.remaining()
        return default if remaining is None else min(default, remaining)

    def started(self) -> None:
        """Say that the response has begun to reach the caller: from now on this attempt is not failed over."""
        self._started = True

    @property
    def is_started(self) -> bool:
        return self._started


@dataclass(frozen=True)
class FailedAttempt:
    """An attempt that failed over: its error and how it was classified."""

    attempt: Attempt
    error: Exception
    classification: Classification

    @property
    def outcome(self) -> Outcome | None:
        return self.classification.outcome


class FailoverExhausted(Exception):
    """No attempt succeeded: every attachment failed, or the budget (or `max_attempts`) ran out first.

    `attempts`: each failed attempt with its error and outcome, in order. `budget_exhausted`: the budget
    stopped it. The last attempt's error is the `__cause__`.
    """

    def __init__(
        self, model_config: str, attempts: tuple[FailedAttempt, ...], budget_exhausted: bool, why: str
    ) -> None:
        self.model_config = model_config
        self.attempts = attempts
        self.budget_exhausted = budget_exhausted
        details = "; ".join(_described(failed) for failed in attempts)
        super().__init__(f"{why}: {details}" if details else why)


def _described(failed: FailedAttempt) -> str:
    """One failed attempt for a message, with the attempt's key taken out of the error's text."""
    text = str(failed.error)
    if len(failed.attempt.api_key) >= 4:
        text = text.replace(failed.attempt.api_key, "<redacted>")
    text = text if len(text) <= 200 else text[:197] + "..."
    outcome = failed.outcome.name if failed.outcome is not None else "not reported"
    return f"{failed.attempt.provider_config} ({failed.attempt.model}) {outcome}: {type(failed.error).__name__}: {text}"


def resolution_timeout(default: float | None, remaining: float | None) -> float | None:
    """The resolution's deadline: the client's, or less when less is left of the budget."""
    if remaining is None:
        return default
    return remaining if default is None else min(default, remaining)


def _attempt(
    resolution: resolver_pb2.ResolveModelResponse,
    attachment: resolver_pb2.ResolvedAttachment,
    user: str,
    number: int,
    deadline: float | None,
    clock: Callable[[], float],
) -> Attempt:
    cooldown = attachment.cooldown_until.ToDatetime(UTC) if attachment.HasField("cooldown_until") else None
    return Attempt(
        provider_config=attachment.provider_config,
        model=attachment.model,
        base_url=attachment.base_url,
        family=attachment.family,
        key_source=attachment.key_source,
        api_key=attachment.api_key,
        position=attachment.position,
        cooldown_until=cooldown,
        model_config=resolution.model_config,
        config_revision=resolution.config_revision,
        user=user,
        number=number,
        deadline=deadline,
        attachment=attachment,
        clock=clock,
    )


class _Run:
    """The state of one call with failover, shared by the synchronous and the asyncio loop."""

    def __init__(
        self,
        user: str,
        report: Callable[[AttemptReport], object] | None,
        budget: float | None,
        classify: Classifier | None,
        max_attempts: int | None,
        clock: Callable[[], float],
    ) -> None:
        if budget is not None and not budget >= 0:
            raise ValueError("budget must be a number of seconds, at least 0")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.user, self._report, self.budget, self._classify = user, report, budget, classify
        self.max_attempts, self.clock = max_attempts, clock
        self.deadline = None if budget is None else clock() + budget
        self.model_config = ""
        self.failures: list[FailedAttempt] = []
        self.stopped_by = ""  # "budget" or "max_attempts" when either ended the run early

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def check_budget(self) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            self.stopped_by = "budget"
            raise self.exhausted()

    def attempts(self, resolution: resolver_pb2.ResolveModelResponse) -> Iterator[Attempt]:
        self.model_config = resolution.model_config
        attachments = [resolution.selected] if resolution.HasField("selected") else []
        attachments += resolution.fallbacks
        for number, attachment in enumerate(attachments):
            if self.max_attempts is not None and number >= self.max_attempts:
                self.stopped_by = "max_attempts"
                return
            if self.deadline is not None and self.clock() >= self.deadline:
                self.stopped_by = "budget"
                return
            yield _attempt(resolution, attachment, self.user, number, self.deadline, self.clock)

    def classification(self, error: Exception) -> Classification:
        if self._classify is not None:
            found = self._classify(error)
            if found is not None:
                return found
        return classify_http(error)

    def failed(self, attempt: Attempt, error: Exception) -> bool:
        """Reports a failed attempt (unless it was the caller's mistake); True to try the next attachment."""
        classification = self.classification(error)
        if classification.outcome is not None:
            self.report(attempt, classification.outcome, classification.retry_after)
        if attempt.is_started or not classification.fail_over:
            return False
        self.failures.append(FailedAttempt(attempt, error, classification))
        log.debug(
            "failing over from %s (%s): %s",
            attempt.provider_config,
            classification.outcome.name if classification.outcome is not None else "not reported",
            type(error).__name__,
        )
        return True

    def succeeded(self, attempt: Attempt) -> None:
        self.report(attempt, Outcome.SUCCESS)

    def report(self, attempt: Attempt, outcome: Outcome, retry_after: float | None = None) -> None:
        if self._report is None:
            return
        if outcome is Outcome.KEY_REJECTED and attempt.key_source not in _KEYS:
            return  # an ambient credential refused: there is no key the service could mark
        try:
            self._report(
                AttemptReport(
                    provider_config=attempt.provider_config,
                    model=attempt.model,
                    outcome=outcome,
                    user=self.user,
                    key_source=attempt.key_source,
                    config_revision=attempt.config_revision,
                    retry_after=retry_after if outcome is Outcome.RATE_LIMITED else None,
                )
            )
        except Exception:  # reporting is advice: it never fails a call
            log.debug("an attempt report was not queued", exc_info=True)

    def exhausted(self) -> FailoverExhausted:
        model = self.model_config or "the model"
        count = len(self.failures)
        tried = f"after {count} failed attempt{'s' if count != 1 else ''}" if count else "before any attempt"
        if self.stopped_by == "budget":
            why = f"the time budget ({self.budget:g} s) for {model} was spent {tried}"
        elif self.stopped_by == "max_attempts":
            why = f"max_attempts ({self.max_attempts}) for {model} reached {tried}"
        else:
            why = f"every attachment of {model} failed"
        return FailoverExhausted(self.model_config, tuple(self.failures), self.stopped_by == "budget", why)

    def last_error(self) -> Exception | None:
        return self.failures[-1].error if self.failures else None

    def stream(self, attempt: Attempt, first: T, rest: Iterator[T]) -> Generator[T, None, None]:
        """`first`, then the rest of `rest`; SUCCESS when it ends (or the caller stops reading), the failure's
        outcome when it breaks (raised, never failed over)."""

        def chunks() -> Generator[T, None, None]:
            try:
                yield cast(T, None)  # primed below: a stream closed before it is read still reports
                yield first
                yield from rest
            except GeneratorExit:
                self.succeeded(attempt)  # the caller stopped reading; what it read was delivered
                raise
            except Exception as error:
                self.failed(attempt, error)
                raise
            else:
                self.succeeded(attempt)

        generator = chunks()
        next(generator)
        return generator

    async def astream(self, attempt: Attempt, first: T, rest: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        """`stream` for an async iterator."""

        async def chunks() -> AsyncGenerator[T, None]:
            try:
                yield cast(T, None)
                yield first
                async for chunk in rest:
                    yield chunk
            except GeneratorExit:
                self.succeeded(attempt)
                await _aclose(rest)
                raise
            except Exception as error:
                self.failed(attempt, error)
                raise
            else:
                self.succeeded(attempt)

        generator = chunks()
        await anext(generator)
        return generator


_END: Any = object()
# The key sources a KEY_REJECTED report can be about.
_KEYS = (common_pb2.KEY_SOURCE_STORED, common_pb2.KEY_SOURCE_DEPLOYMENT, common_pb2.KEY_SOURCE_USER)


def _close(iterator: object) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.debug("closing a failed stream failed", exc_info=True)


async def _aclose(iterator: object) -> None:
    close = getattr(iterator, "aclose", None)
    if callable(close):
        try:
            await close()
        except Exception:
            log.debug("closing a failed stream failed", exc_info=True)


# ------------------------------------------------------------------ the two loops


def run(
    resolve: Callable[[float | None], resolver_pb2.ResolveModelResponse],
    fn: Callable[[Attempt], R],
    *,
    user: str = "",
    report: Callable[[AttemptReport], object] | None = None,
    budget: float | None = None,
    classify: Classifier | None = None,
    max_attempts: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> R:
    """The synchronous loop. `resolve(remaining)` resolves the model (`remaining`: seconds left of the
    budget, None without one); `report` queues a report (None: nothing is reported). See the module."""
    state = _Run(user, report, budget, classify, max_attempts, clock)
    state.check_budget()
    resolution = resolve(state.remaining())
    for attempt in state.attempts(resolution):
        iterator: Iterator[Any] | None = None
        try:
            result = fn(attempt)
            if isinstance(result, Iterator):
                iterator = result
                first = next(iterator, _END)
        except Exception as error:
            if iterator is not None:
                _close(iterator)
            if state.failed(attempt, error):
                continue
            raise
        if iterator is None:
            state.succeeded(attempt)
            return result
        if first is _END:
            state.succeeded(attempt)
            return cast(R, iter(()))
        attempt.started()
        return cast(R, state.stream(attempt, first, iterator))
    raise state.exhausted() from state.last_error()


async def run_async(
    resolve: Callable[[float | None], Awaitable[resolver_pb2.ResolveModelResponse]],
    fn: Callable[[Attempt], Any],
    *,
    user: str = "",
    report: Callable[[AttemptReport], object] | None = None,
    budget: float | None = None,
    classify: Classifier | None = None,
    max_attempts: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """The asyncio loop: `fn(attempt)` is awaited (a coroutine function) or returns an async iterator (an
    async generator function), whose first chunk is awaited inside the loop. Otherwise as `run`."""
    state = _Run(user, report, budget, classify, max_attempts, clock)
    state.check_budget()
    resolution = await resolve(state.remaining())
    for attempt in state.attempts(resolution):
        iterator: AsyncIterator[Any] | None = None
        try:
            result = fn(attempt)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, AsyncIterator):
                iterator = result
                first = await anext(iterator, _END)
        except Exception as error:
            if iterator is not None:
                await _aclose(iterator)
            if state.failed(attempt, error):
                continue
            raise
        if iterator is None:
            state.succeeded(attempt)
            return result
        if first is _END:
            state.succeeded(attempt)
            return _empty()
        attempt.started()
        return await state.astream(attempt, first, iterator)
    raise state.exhausted() from state.last_error()


async def _empty() -> AsyncGenerator[Any, None]:
    return
    yield  # an async generator that yields nothing
