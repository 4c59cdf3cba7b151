"""Fixtures of the chaos suite: one launched stack per database backend, shared by its rounds,
and the seed every round derives its randomness from."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chaos.harness import (
    MAIN_LAT,
    MAIN_LNG,
    ChaosStack,
    Verdict,
    chaos_seed,
    database_env,
)
from tests.integration.test_launcher import free_port, launched, launcher_env

COURIERS = 10


@pytest.fixture(scope="session")
def seed() -> int:
    return chaos_seed()


@pytest.fixture(scope="module")
def chaos_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChaosStack]:
    """``tradeflow up`` on free ports with a private data dir, its own redis-server, no demo
    data and no courier simulator (the harness plays the couriers), short timeouts so every
    path of the saga ends within seconds."""
    backend: str = request.param
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the Redis fault needs the launcher's own")
    data_dir = tmp_path_factory.mktemp(f"chaos-{backend}") / "data"
    db_env, app_name, pg_url = database_env(backend, data_dir)
    env = launcher_env(
        data_dir,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        TRADEFLOW_DEMO="off",
        TRADEFLOW_COURIER_SIMULATOR="off",
        TRADEFLOW_AUTH="off",
        TRADEFLOW_PAYMENT_TIMEOUT_S="6",
        TRADEFLOW_OFFER_TIMEOUT_S="3",
        TRADEFLOW_MAX_OFFERS="4",
        TRADEFLOW_PSP_ACTION_DELAY_S="0.5",
        TRADEFLOW_CHECKOUT_RATE="100/s",
        TRADEFLOW_CHECKOUT_BURST="100",
        TRADEFLOW_SWEEP_INTERVAL_S="8",
        # The reconciler restarts or fails orders whose client gave up on a 503 within seconds.
        TRADEFLOW_RECONCILE_INTERVAL_S="5",
        TRADEFLOW_RECONCILE_GRACE_S="5",
        **db_env,
    )
    try:
        with launched(env) as running:
            stack = ChaosStack(
                running=running,
                env=env,
                backend=backend,
                pg_application_name=app_name,
                pg_url=pg_url,
            )
            with httpx.Client(base_url=running.api_url, timeout=30) as http:
                for i in range(COURIERS):  # around the main store, the nearest one first
                    r = http.put(
                        f"/v1/admin/couriers/{stack.courier_prefix}{i}",
                        json={"lat": MAIN_LAT + 0.001 * i, "lng": MAIN_LNG, "available": True},
                        headers=stack.admin,
                    )
                    assert r.status_code == 200, r.text
            yield stack
    finally:
        schema_file = data_dir.parent / "pg_schema"
        if schema_file.exists():
            from tests.conftest import drop_postgres_schema

            drop_postgres_schema(schema_file.read_text().strip())


@pytest.fixture(scope="session")
def chaos_report() -> Iterator[list[Verdict]]:
    """Every round's verdict; with ``CHAOS_REPORT=<file>`` written there as JSON lines (the
    figures of docs/reliability.md come from it)."""
    verdicts: list[Verdict] = []
    yield verdicts
    path = os.environ.get("CHAOS_REPORT")
    if path and verdicts:
        with Path(path).open("a") as f:
            for v in verdicts:
                f.write(
                    json.dumps({**v.summary(), "injected": v.injections, "findings": v.problems})
                    + "\n"
                )
