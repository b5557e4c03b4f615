"""Cost of a full snapshot reload as the number of stored user keys grows.

A configuration change makes each replica reload its snapshot (providers,
models and every user key, still sealed); a change of one user key is patched
in from that one row. Figures are ratios against one `SELECT 1` round trip
measured in the same run, plus the absolute time.

Run: .venv/bin/python bench/bench_snapshot.py [--keys 1000 10000 50000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelroute_server.adapters import database
from modelroute_server.adapters.crypto import Keyring, generate_keyring_spec, seal_bound, user_key_binding
from modelroute_server.domain.families import Family
from modelroute_server.service_layer import model_configs, provider_configs, user_keys
from modelroute_server.service_layer.context import ServiceContext
from modelroute_server.service_layer.inputs import ModelConfigInput, ProviderConfigInput
from modelroute_server.service_layer.resolution import SnapshotStore
from tests.helpers import TEST_CALLER

PROVIDERS, MODELS = 12, 40


def median_seconds(call: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        pg = database.EmbeddedPostgres(Path(scratch) / "pg")
        url = pg.start()
        engine = database.create_engine(url)
        database.upgrade(engine)
        keyring = Keyring.parse(generate_keyring_spec())
        ctx = ServiceContext(engine=engine, keyring=keyring)
        for i in range(PROVIDERS):
            provider_configs.create_provider_config(
                ctx,
                TEST_CALLER,
                f"p{i}",
                ProviderConfigInput(family=Family.OPENAI, api_key=f"sk-{i}", allow_user_api_key=True),
            )
        for m in range(MODELS):
            model_configs.create_model_config(
                ctx, TEST_CALLER, f"m{m}", ModelConfigInput(family=Family.OPENAI, model="gpt", context_limit=1000)
            )
        store = SnapshotStore(ctx)
        ctx.on_commit.append(store.committed)
        with engine.connect() as conn:
            baseline = median_seconds(lambda: conn.execute(sa.text("SELECT 1")).scalar(), 200)
        stored = 0
        print(f"baseline: one SELECT 1 round trip, {baseline * 1e6:.0f} us")
        for target in sorted(options.keys):
            rows = []
            for n in range(stored, target):
                user, provider = f"user-{n}", f"p{n % PROVIDERS}"
                sealed = seal_bound(keyring, f"uk-{n}", partial(user_key_binding, user, provider))
                rows.append(
                    {"u": user, "p": provider, "c": sealed.ciphertext, "k": sealed.key_id, "i": sealed.incarnation}
                )
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO user_provider_keys (user_id, provider_config_id, api_key_ciphertext, "
                        "api_key_key_id, key_incarnation) VALUES (:u, :p, :c, :k, :i)"
                    ),
                    rows,
                )
            stored = target

            def reload() -> None:
                store.invalidate()
                store.current()

            seconds = median_seconds(reload, 5)
            patches = []
            for attempt in range(5):
                user_keys.set_user_provider_key(ctx, TEST_CALLER, "bench-user", "p0", f"uk-bench-{attempt}")
                started = time.perf_counter()
                store.current()
                patches.append(time.perf_counter() - started)
            patch = statistics.median(patches)
            print(
                f"{target:>7} user keys: full reload {seconds * 1e3:7.1f} ms = {seconds / baseline:8.0f}x a round trip;"
                f" after one user-key change {patch * 1e3:6.2f} ms = {patch / baseline:6.0f}x"
            )
        engine.dispose()
        pg.stop()


if __name__ == "__main__":
    main()
