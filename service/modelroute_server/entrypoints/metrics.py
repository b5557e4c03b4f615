"""Prometheus metrics on their own HTTP port (docs/operations.md, "Metrics").

Counters that calls move are prometheus-client's own, with every label child looked up once per method,
so a call pays an increment and an observation, never a label lookup; ResolveModel's own counters are
`LoopCounter`s, plain integers, since their increments were a visible part of a kept answer's cost. What
the service already counts (the snapshot, the call bounds, the pools, the listener, the keyring) is read
at scrape time by one collector, so those modules need no metrics library.

Label values are bounded: method names that exist, status code names, reason and skip-reason names,
key sources, classes of work and pool names; never a user, a token name or a key.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from ..domain.errors import DomainError
from ..domain.resolver import Resolution, SkipReason
from ..service_layer.health import AttemptReport, ReportsApplied
from .authorization import current_caller_or_none, short_method
from .executors import CallBound
from .transport import split_address

if TYPE_CHECKING:
    from .server import Application

log = logging.getLogger(__name__)
# The access log's own logger, so that it can be routed or silenced apart from the rest.
access = logging.getLogger("modelroute.access")

# From a kept ResolveModel answer (a fraction of a millisecond) to a write stuck behind a lock timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RESOLVED = "RESOLVED"
NO_KEY = "NONE"


class MethodMetrics:
    """One method's call counter (a child per status code, made on first use) and latency histogram,
    and the access log's line when it is on: where every call of the method ends."""

    __slots__ = ("_access_log", "_by_code", "_calls", "_seconds", "method")

    def __init__(self, method: str, calls: Counter, seconds: Histogram, access_log: bool = False) -> None:
        self.method = method
        self._calls = calls
        self._by_code: dict[grpc.StatusCode, Counter] = {}
        self._seconds = seconds.labels(method)
        self._access_log = access_log

    def observe(self, code: grpc.StatusCode, started: float) -> None:
        """One call of this method ended with `code`; it started at `started` (time.perf_counter())."""
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code.setdefault(code, self._calls.labels(self.method, code.name))
        child.inc()
        seconds = time.perf_counter() - started
        self._seconds.observe(seconds)
        if self._access_log:
            # The actor is the authorized caller's name; a refused call has none (its token's name is
            # not known, and a token it merely claims is not written).
            caller = current_caller_or_none()
            access.info(
                "call",
                extra={
                    "method": self.method,
                    "code": code.name,
                    "duration_ms": round(seconds * 1000, 3),
                    "actor": caller.actor if caller is not None else "",
                },
            )


class LoopCounter(Collector):
    """A labelled counter that only the event loop adds to: each child is a plain integer in a dict,
    read when scraped. A prometheus-client Counter takes a lock and checks its argument on every
    increment, which cost about as much as the rest of giving a kept ResolveModel answer."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: int = 1) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + amount

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labels)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        # One copy made in C, during which the loop cannot add a child (no Python code runs); each count
        # read is whole.
        for labels, count in self.counts.copy().items():
            family.add_metric(list(labels), float(count))
        yield family


class Metrics:
    """Every metric family of one running service, in a registry of its own (several services may share
    a process: the tests run many)."""

    def __init__(self, access_log: bool = False) -> None:
        self._access_log = access_log
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._calls = Counter(
            "modelroute_calls", "Calls answered, by method and gRPC status code.", ["method", "code"], registry=registry
        )
        self._seconds = Histogram(
            "modelroute_call_duration_seconds",
            "Time from a call's handler starting to its answer, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._resolutions = LoopCounter(
            "modelroute_resolutions",
            "ResolveModel answers, by outcome (RESOLVED or the error's reason) and the selected attachment's key "
            "source (NONE when nothing was selected).",
            ["outcome", "key_source"],
            registry,
        )
        self._skips = LoopCounter(
            "modelroute_resolution_skips",
            "Attachments skipped in ResolveModel answers, by skip reason.",
            ["reason"],
            registry,
        )
        self._authentication_failures = Counter(
            "modelroute_authentication_failures",
            "Calls refused for their credentials (missing, unknown, expired or revoked) or for a role they do not "
            "hold, by reason.",
            ["reason"],
            registry=registry,
        )
        self._attempt_reports = Counter(
            "modelroute_attempt_reports",
            "Attempt reports recorded, by outcome (IGNORED: a rejected-key report about a key replaced since).",
            ["outcome"],
            registry=registry,
        )
        self._health_transitions = Counter(
            "modelroute_health_transitions",
            "Cooldowns started (TRIP) and ended by a success (RECOVERY) through this replica's reports.",
            ["transition"],
            registry=registry,
        )
        self._rejected_keys = Counter(
            "modelroute_rejected_keys",
            "Keys marked rejected through this replica's reports, by key source.",
            ["key_source"],
            registry=registry,
        )
        self._methods: dict[str, MethodMetrics] = {}

    def method(self, method: str) -> MethodMetrics:
        """The metrics of `method` (a full gRPC method path; only methods that exist are asked for)."""
        found = self._methods.get(method)
        if found is None:
            found = self._methods.setdefault(
                method, MethodMetrics(short_method(method), self._calls, self._seconds, self._access_log)
            )
        return found

    def authentication_failed(self, error: DomainError) -> None:
        self._authentication_failures.labels(error.reason.value).inc()

    def resolution_tally(self, resolution: Resolution) -> Callable[[], None]:
        """Counts one answer given from `resolution`, with every label worked out now: a kept answer given
        again counts itself with this."""
        selected = resolution.selected
        source = selected.key_source.value if selected is not None and selected.key_source else NO_KEY
        resolved, resolutions, skips = (RESOLVED, source), self._resolutions, self._skips
        skipped = [(o.skip_reason.value,) for o in resolution.skipped if o.skip_reason is not None]

        def tally() -> None:
            resolutions.inc(resolved)
            for reason in skipped:
                skips.inc(reason)

        return tally

    def resolution_refused(self, error: DomainError) -> None:
        """A ResolveModel call answered with an error; an unusable model's details name each skip."""
        self._resolutions.inc((error.reason.value, NO_KEY))
        skip_reasons = {r.value for r in SkipReason}
        for violation in error.precondition_violations:
            if violation.type in skip_reasons:
                self._skips.inc((violation.type,))

    def attempts_reported(self, reports: Iterable[AttemptReport], applied: ReportsApplied) -> None:
        for outcome, count in collections.Counter(r.outcome for r in reports).items():
            if outcome is not None:
                self._attempt_reports.labels(outcome.value).inc(count)
        if applied.ignored:
            self._attempt_reports.labels("IGNORED").inc(applied.ignored)
        for moved in applied.transitions:
            self._health_transitions.labels(moved.value).inc()
        for source in applied.marked:
            self._rejected_keys.labels(source).inc()

    def watch(self, app: Application) -> None:
        """Reads what `app` counts itself at every scrape."""
        self.registry.register(ApplicationCollector(app))


@dataclass(frozen=True)
class NamedPool:
    name: str
    engine: sa.Engine


class ApplicationCollector(Collector):
    """What the running service knows about itself, read when scraped."""

    def __init__(self, app: Application) -> None:
        self._app = app

    def describe(self) -> Iterable[Metric]:
        return []  # families are created per scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        app = self._app
        yield from _snapshot_families(app)
        yield from _bound_families(app.call_bounds())
        yield from _pool_families(app.named_pools())
        connected = GaugeMetricFamily(
            "modelroute_change_listener_connected",
            "1 while the change listener holds its LISTEN connection to PostgreSQL, else 0.",
        )
        connected.add_metric([], 1.0 if app.listener is not None and app.listener.connected.is_set() else 0.0)
        yield connected
        failures = CounterMetricFamily(
            "modelroute_decrypt_failures",
            "Stored keys that did not decrypt with this replica's keyring (unknown key id, or data that does not "
            "match its row).",
        )
        failures.add_metric([], float(app.ctx.keyring.open_failures))
        yield failures


def _snapshot_families(app: Application) -> Iterator[Metric]:
    store = app.snapshots
    snapshot = store.snapshot
    statistics = store.statistics
    revision = GaugeMetricFamily("modelroute_snapshot_revision", "The config revision this replica answers from.")
    sequence = GaugeMetricFamily("modelroute_snapshot_change_sequence", "The change sequence this replica has applied.")
    age = GaugeMetricFamily(
        "modelroute_snapshot_age_seconds",
        "Seconds since this replica last caught up with its database (its snapshot is at most this old).",
    )
    cut_off = GaugeMetricFamily(
        "modelroute_snapshot_cut_off_seconds",
        "Seconds this replica has been failing to reach its database (0 while it reaches it).",
    )
    if snapshot is not None:
        revision.add_metric([], float(snapshot.revision))
        sequence.add_metric([], float(snapshot.sequence))
    age.add_metric([], statistics.seconds_since_caught_up())
    cut_off.add_metric([], store.seconds_cut_off())
    applies = SummaryMetricFamily(
        "modelroute_snapshot_apply_duration_seconds",
        "Time to bring the snapshot up to date (a change applied, or a full load), by kind.",
        labels=["kind"],
    )
    applies.add_metric(["changes"], statistics.applied_batches, statistics.apply_seconds)
    applies.add_metric(["full"], statistics.full_loads, statistics.full_load_seconds)
    cooling = GaugeMetricFamily(
        "modelroute_attachments_cooling_down",
        "(provider config, upstream model) pairs cooling down now, as this replica resolves them.",
    )
    now = datetime.now(UTC)
    cooling.add_metric(
        [],
        float(
            sum(
                until > now
                for by_model in (snapshot.cooldowns if snapshot else {}).values()
                for until in by_model.values()
            )
        ),
    )
    yield from (revision, sequence, age, cut_off, applies, cooling)


def _bound_families(bounds: Sequence[CallBound]) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily(
        "modelroute_calls_in_flight", "Calls of a class of work running or queued now.", labels=["work_class"]
    )
    limit = GaugeMetricFamily(
        "modelroute_calls_in_flight_limit", "The bound past which a class refuses calls.", labels=["work_class"]
    )
    shed = CounterMetricFamily(
        "modelroute_shed_calls",
        "Calls refused at once (RESOURCE_EXHAUSTED) because their class of work was at its bound.",
        labels=["work_class"],
    )
    for bound in bounds:
        label = [bound.work_class.replace(" ", "_")]
        in_flight.add_metric(label, float(bound.in_flight))
        limit.add_metric(label, float(bound.limit))
        shed.add_metric(label, float(bound.refused))
    yield from (in_flight, limit, shed)


def _pool_families(pools: Sequence[NamedPool]) -> Iterator[Metric]:
    in_use = GaugeMetricFamily(
        "modelroute_database_connections_in_use", "Connections checked out of a pool now.", labels=["pool"]
    )
    size = GaugeMetricFamily(
        "modelroute_database_connections_max", "The most connections a pool opens.", labels=["pool"]
    )
    for pool in pools:
        queue = pool.engine.pool
        checked_out = getattr(queue, "checkedout", None)
        if checked_out is None:  # a pool without counts (NullPool): nothing to say
            continue
        in_use.add_metric([pool.name], float(checked_out()))
        size.add_metric([pool.name], float(queue.size() + max(0, getattr(queue, "_max_overflow", 0))))  # type: ignore[attr-defined]
    yield from (in_use, size)


def serve_metrics(metrics: Metrics, address: str) -> tuple[int, Callable[[], None]]:
    """Serves `metrics` on `address` (host:port, port 0 for any free one) in a daemon thread; returns the
    port and the function that stops it."""
    host, port = split_address(address)
    server, thread = start_http_server(port, host or "127.0.0.1", registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return int(server.server_port), stop
