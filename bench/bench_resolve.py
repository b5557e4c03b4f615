"""ResolveModel cost, as ratios against a baseline measured in the same run.

Baseline: the standard health Check on the same server and channel, the
cheapest unary call gRPC can make here. Figures:
  * resolve/health latency ratio over the same channel (closer to 1.0 means
    resolution itself costs little next to the RPC it rides on);
  * pure resolver time per call vs. one health-check round trip;
  * database statements per 1,000 steady-state resolutions (must be 0);
  * a model whose attachments carry upstream name overrides vs the same model
    without them, pure resolution and ResolveModel, with and without a user key
    (overrides are prepared with the snapshot: no extra cost per call).

Run: .venv/bin/python bench/bench_resolve.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelroute.v1 import common_pb2, model_config_pb2, resolver_pb2, user_key_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec
from modelroute_server.service_layer import resolution
from tests.conftest import RunningServer, all_roles_token, build_app
from tests.helpers import create_model, create_provider, policy, stubs
from tests.integration.test_resolution_cache import is_health_check

PROVIDERS, MODELS, USERS = 12, 40, 500


def timed(call: object, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


def interleaved(call: Callable[[str], object], count: int) -> float:
    """Median per-call time of `call("o7")` over `call("m7")`, in alternating batches of 100 (a noisy machine
    slows both alike)."""
    with_overrides, without = [], []
    for _ in range(max(1, count // 100)):
        for model, samples in (("o7", with_overrides), ("m7", without)):
            start = time.perf_counter()
            for _ in range(100):
                call(model)
            samples.append(time.perf_counter() - start)
    return statistics.median(with_overrides) / statistics.median(without)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        pg = database.EmbeddedPostgres(Path(scratch) / "pg")
        url = pg.start()
        database.upgrade(database.create_engine(url))
        app = build_app(url, Keyring.parse(generate_keyring_spec()))
        server = RunningServer(app, all_roles_token(app))
        try:
            s = stubs(server.channel)
            for i in range(PROVIDERS):
                create_provider(s, f"p{i}", credential_policy=policy(True, True, i % 2 == 0), api_key=f"sk-{i}")
            for m in range(MODELS):
                create_model(s, f"m{m}", providers=tuple(f"p{(m + k) % PROVIDERS}" for k in range(3)))
            # o7: m7's attachments, each with an upstream name override of its own.
            overridden = model_config_pb2.ModelConfig(
                family=common_pb2.FAMILY_OPENAI,
                model="gpt-4.1",
                context_limit=128_000,
                attachments=[
                    model_config_pb2.Attachment(provider_config=f"providerConfigs/p{7 + k}", model=f"deployment-{k}")
                    for k in range(3)
                ],
            )
            s.models.CreateModelConfig(
                model_config_pb2.CreateModelConfigRequest(model_config=overridden, model_config_id="o7")
            )
            for u in range(USERS):
                s.user_keys.SetUserProviderKey(
                    user_key_pb2.SetUserProviderKeyRequest(
                        user=f"user-{u}", provider_config=f"providerConfigs/p{u % PROVIDERS}", api_key=f"uk-{u}"
                    )
                )
            health = health_pb2_grpc.HealthStub(server.channel)
            check = health_pb2.HealthCheckRequest()
            requests = [
                resolver_pb2.ResolveModelRequest(model=f"m{i % MODELS}", user=f"user-{i % USERS}")
                for i in range(options.calls)
            ]
            s.resolver.ResolveModel(requests[0])  # load the snapshot
            statements = 0

            def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
                # The health watcher's schema check is not on the resolution path.
                nonlocal statements
                statements += not is_health_check(statement)

            sa.event.listen(app.engine, "before_cursor_execute", count)
            iterator = iter(requests)
            health_samples = timed(lambda: health.Check(check), options.calls)
            resolve_samples = timed(lambda: s.resolver.ResolveModel(next(iterator)), options.calls)
            sa.event.remove(app.engine, "before_cursor_execute", count)

            snapshot = app.snapshots.current()
            pure_samples = timed(lambda: resolution.resolve_model(app.ctx, snapshot, "m7", "user-7"), options.calls)
            override_ratios = {}
            for user in ("", "user-7"):  # user-7 holds a key for p7: the answer is put together per call
                override_ratios[f"pure resolution, user {user or 'none'}"] = interleaved(
                    lambda model, user=user: resolution.resolve_model(app.ctx, snapshot, model, user), options.calls
                )
                override_ratios[f"ResolveModel, user {user or 'none'}"] = interleaved(
                    lambda model, user=user: s.resolver.ResolveModel(
                        resolver_pb2.ResolveModelRequest(model=model, user=user)
                    ),
                    options.calls,
                )
        finally:
            server.stop()
            app.close()
            pg.stop()

    health_median = statistics.median(health_samples)
    resolve_median = statistics.median(resolve_samples)
    p99 = sorted(resolve_samples)[int(len(resolve_samples) * 0.99)]
    health_p99 = sorted(health_samples)[int(len(health_samples) * 0.99)]
    print(f"calls per series: {options.calls} ({PROVIDERS} providers, {MODELS} models, {USERS} users with keys)")
    print(f"ResolveModel / health Check, median latency: {resolve_median / health_median:.2f}x")
    print(f"ResolveModel / health Check, p99 latency:    {p99 / health_p99:.2f}x")
    print(f"pure resolution / health Check round trip:   {statistics.median(pure_samples) / health_median:.3f}x")
    print(f"database statements per 1,000 resolutions:   {statements * 1000 / options.calls:.1f}")
    for name, ratio in override_ratios.items():
        print(f"with overrides / without, {name}: {ratio:.3f}x (target: no extra cost, about 1.00)")


if __name__ == "__main__":
    main()
