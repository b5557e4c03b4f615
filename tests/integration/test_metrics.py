"""The metrics endpoint (docs/operations.md, "Metrics"): a scrape finds the counts this test's own calls
produced, by method and code, resolutions by outcome, key source and skip reason, and what the replica
knows about itself; no label carries a user, a token name or a key."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from prometheus_client.parser import text_string_to_metric_families

from modelroute.v1 import common_pb2, model_config_pb2, provider_config_pb2, resolver_pb2
from modelroute_server.entrypoints.metrics import serve_metrics
from modelroute_server.entrypoints.server import Application

from ..conftest import RunningServer, ServerProcesses
from ..helpers import (
    SERVER_BINARY,
    call_error,
    clean_env,
    create_model,
    create_provider,
    free_port,
    run_server_command,
    stubs,
)


def etag_revision(etag: str) -> int:
    return int(etag.strip('"'))


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metrics_url(app: Application) -> Iterator[str]:
    port, stop = serve_metrics(app.metrics, "127.0.0.1:0")
    yield f"http://127.0.0.1:{port}/metrics"
    stop()


def scrape(url: str) -> tuple[str, Samples]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def scrape_when(url: str, ready: Callable[[Samples], bool]) -> tuple[str, Samples]:
    """A scrape once `ready` holds (a call is counted just after its status is sent), or the last one."""
    deadline = time.monotonic() + 10
    while True:
        text, samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return text, samples
        time.sleep(0.05)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_scrape_counts_the_calls_it_saw(
    app: Application, channel: grpc.Channel, running_server: RunningServer, metrics_url: str
) -> None:
    s = stubs(channel)
    create_provider(s, "off", api_key="sk-metrics-off")
    create_provider(s, "on", api_key="sk-metrics-on")
    create_model(s, "m", providers=("off", "on"))
    create_model(s, "stuck", providers=("off",))
    s.providers.UpdateProviderConfig(
        provider_config_pb2.UpdateProviderConfigRequest(
            provider_config=provider_config_pb2.ProviderConfig(name="providerConfigs/off", enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    _, before = scrape(metrics_url)

    for _ in range(5):  # the first is decided, the next four are the kept answer: all five are counted
        answer = s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="someone@example.com"))
        assert answer.selected.provider_config == "providerConfigs/on"
    assert call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="stuck")).reason == (
        "NO_USABLE_ATTACHMENT"
    )
    assert call_error(s.resolver.ResolveModel, resolver_pb2.ResolveModelRequest(model="absent")).code == (
        grpc.StatusCode.NOT_FOUND
    )
    for _ in range(3):
        assert call_error(
            s.models.GetModelConfig, model_config_pb2.GetModelConfigRequest(name="modelConfigs/absent")
        ).code == (grpc.StatusCode.NOT_FOUND)
    unauthenticated = call_error(
        stubs(running_server.plain_channel).models.GetModelConfig,
        model_config_pb2.GetModelConfigRequest(name="modelConfigs/m"),
    )
    assert unauthenticated.code == grpc.StatusCode.UNAUTHENTICATED

    calls, seconds = "modelroute_calls_total", "modelroute_call_duration_seconds_count"
    text, after = scrape_when(
        metrics_url,
        lambda a: (
            grown(before, a, seconds, method="ResolveModel") >= 7
            and grown(before, a, seconds, method="GetModelConfig") >= 4
        ),
    )
    assert grown(before, after, calls, method="ResolveModel", code="OK") == 5
    assert grown(before, after, calls, method="ResolveModel", code="FAILED_PRECONDITION") == 1
    assert grown(before, after, calls, method="ResolveModel", code="NOT_FOUND") == 1
    assert grown(before, after, calls, method="GetModelConfig", code="NOT_FOUND") == 3
    assert grown(before, after, calls, method="GetModelConfig", code="UNAUTHENTICATED") == 1
    assert grown(before, after, seconds, method="ResolveModel") == 7
    assert grown(before, after, seconds, method="GetModelConfig") == 4

    resolutions = "modelroute_resolutions_total"
    assert grown(before, after, resolutions, outcome="RESOLVED", key_source="STORED") == 5
    assert grown(before, after, resolutions, outcome="NO_USABLE_ATTACHMENT", key_source="NONE") == 1
    assert grown(before, after, resolutions, outcome="MODEL_CONFIG_NOT_FOUND", key_source="NONE") == 1
    # Five answers skipped `off` on the way to `on`, and the stuck model skipped it once more.
    assert grown(before, after, "modelroute_resolution_skips_total", reason="PROVIDER_DISABLED") == 6
    failures = [
        value
        for (name, labels), value in after.items()
        if name == "modelroute_authentication_failures_total" and dict(labels).get("reason") == unauthenticated.reason
    ]
    assert failures and failures[0] >= 1

    snapshot = app.snapshots.snapshot
    assert snapshot is not None
    assert after[("modelroute_snapshot_revision", ())] == snapshot.revision
    assert after[("modelroute_snapshot_change_sequence", ())] == snapshot.sequence
    assert after[("modelroute_snapshot_apply_duration_seconds_count", (("kind", "changes"),))] >= 1
    assert after[("modelroute_database_connections_max", (("pool", "admin_reads"),))] >= 1
    assert ("modelroute_shed_calls_total", (("work_class", "writes"),)) in after
    assert ("modelroute_decrypt_failures_total", ()) in after
    # No user, token name or key in any label or value.
    for secret_or_person in ("someone@example.com", "sk-metrics", "mrt_", "all-roles"):
        assert secret_or_person not in text


def test_a_shed_call_is_counted(app: Application, channel: grpc.Channel, metrics_url: str) -> None:
    _, before = scrape(metrics_url)
    bound = app.work.reads.bound
    bound.in_flight += bound.limit  # as if every admin read were taken
    try:
        refused = call_error(
            stubs(channel).models.ListModelConfigs, model_config_pb2.ListModelConfigsRequest(page_size=10)
        )
    finally:
        bound.in_flight -= bound.limit
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "RESOURCE_EXHAUSTED"
    _, after = scrape_when(
        metrics_url, lambda a: grown(before, a, "modelroute_calls_total", method="ListModelConfigs", code=code) >= 1
    )
    assert grown(before, after, "modelroute_shed_calls_total", work_class="admin_reads") == 1
    assert grown(before, after, "modelroute_calls_total", method="ListModelConfigs", code=code) == 1


def test_a_served_replica_exposes_its_metrics_where_configured(server_process: ServerProcesses, tmp_path: Path) -> None:
    metrics_port = free_port()
    server_process.start(
        tmp_path,
        f"127.0.0.1:{free_port()}",
        tmp_path / "data",
        MODELROUTE_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    # Starting it polled health until SERVING: those checks are counted.
    _, samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert samples[("modelroute_calls_total", (("code", "OK"), ("method", "Check")))] >= 1
    assert samples[("modelroute_change_listener_connected", ())] == 1


def test_an_occupied_metrics_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_server_command(
            [str(SERVER_BINARY), "serve", "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}"],
            cwd=tmp_path,
            env=clean_env(MODELROUTE_METRICS_LISTEN=f"127.0.0.1:{port}"),
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    (line,) = done.stderr.decode().splitlines()
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_attempt_reports_trips_rejected_keys_and_cooldowns_are_counted(
    app: Application, channel: grpc.Channel, metrics_url: str
) -> None:
    s = stubs(channel)
    create_provider(s, "a", api_key="sk-metrics-a")
    create_provider(s, "b", api_key="sk-metrics-b")
    model = create_model(s, "m", providers=("a", "b"), upstream="gpt-4o")
    _, before = scrape(metrics_url)

    def report(provider: str, outcome: int, times: int = 1, **fields: object) -> resolver_pb2.ReportAttemptsResponse:
        attempt = resolver_pb2.AttemptReport(
            provider_config=f"providerConfigs/{provider}", model="gpt-4o", outcome=outcome, **fields
        )
        answer: resolver_pb2.ReportAttemptsResponse = s.resolver.ReportAttempts(
            resolver_pb2.ReportAttemptsRequest(attempts=[attempt] * times)
        )
        return answer

    report("a", resolver_pb2.ATTEMPT_OUTCOME_SERVER_ERROR, times=3)
    report("a", resolver_pb2.ATTEMPT_OUTCOME_SUCCESS)  # ends the cooldown: a recovery
    report("a", resolver_pb2.ATTEMPT_OUTCOME_RATE_LIMITED, retry_after=duration_pb2.Duration(seconds=600))
    revision = etag_revision(model.etag)
    stored = common_pb2.KEY_SOURCE_STORED
    rejected = resolver_pb2.ATTEMPT_OUTCOME_KEY_REJECTED
    assert report("b", rejected, key_source=stored, config_revision=revision).ignored == 0
    assert report("b", rejected, key_source=stored, config_revision=0).ignored == 1  # older than its key

    _, after = scrape_when(
        metrics_url, lambda a: grown(before, a, "modelroute_attempt_reports_total", outcome="IGNORED") >= 1
    )
    reports = "modelroute_attempt_reports_total"
    assert grown(before, after, reports, outcome="SERVER_ERROR") == 3
    assert grown(before, after, reports, outcome="SUCCESS") == 1
    assert grown(before, after, reports, outcome="RATE_LIMITED") == 1
    assert grown(before, after, reports, outcome="KEY_REJECTED") == 2
    assert grown(before, after, reports, outcome="IGNORED") == 1
    assert grown(before, after, "modelroute_health_transitions_total", transition="TRIP") == 2
    assert grown(before, after, "modelroute_health_transitions_total", transition="RECOVERY") == 1
    assert grown(before, after, "modelroute_rejected_keys_total", key_source="STORED") == 1
    assert after[("modelroute_attachments_cooling_down", ())] == 1
    assert ("modelroute_shed_calls_total", (("work_class", "attempt_reports"),)) in after
