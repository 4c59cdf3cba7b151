"""Operating it (issue 10 parts 2 and 4) on a stack from `tradeflow up`, as `make up` runs it:
Prometheus series on the worker's and the API's endpoints after a few orders, and the order
event stream followed with `tradeflow events tail`."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_launcher import (
    ROOT,
    RunningStack,
    free_port,
    launched,
    launcher_env,
    launcher_redis_url,
    tradeflow_command,
)

pytestmark = pytest.mark.slow

ADDRESS = {"address": "1 Metrics Street", "lat": 31.2330, "lng": 121.4760}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningStack, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("ops") / "data"
    redis_url = launcher_redis_url(fallback_db=14)
    env = launcher_env(
        data_dir, REDIS_URL=redis_url, TRADEFLOW_WORKER_METRICS_PORT=str(free_port())
    )
    with launched(env) as running:
        yield running, env


def place(http: httpx.Client, items: list[dict[str, object]], token: str = "tok_ok") -> str:
    r = http.post(
        "/v1/orders",
        json={
            "customer_id": f"c-{uuid.uuid4().hex[:6]}",
            "location_id": "main",
            "items": items,
            "delivery": ADDRESS,
            "payment": {"token": token},
        },
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code in (200, 201, 202), r.text
    return str(r.json()["order_id"])


def wait_status(http: httpx.Client, order_id: str, wanted: set[str], within_s: float) -> str:
    deadline = time.monotonic() + within_s
    status = "?"
    while time.monotonic() < deadline:
        status = http.get(f"/v1/orders/{order_id}").json()["status"]
        if status in wanted:
            return status
        time.sleep(0.3)
    raise AssertionError(f"{order_id} is {status}, not {wanted}, after {within_s}s")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no series {name}{labels}"
    return float(samples[key])


def either(worker: dict, api: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    """A series that the worker or the API (or both) may serve: the sum of what they serve."""
    key = (name, tuple(sorted(labels.items())))
    assert key in worker or key in api, f"no series {name}{labels} on the worker or the API"
    return float(worker.get(key, 0.0)) + float(api.get(key, 0.0))


def names_of(samples: dict) -> set[str]:  # type: ignore[type-arg]
    return {name for name, _ in samples}


@pytest.fixture(scope="module")
def orders(stack: tuple[RunningStack, dict[str, str]]) -> dict[str, str]:
    """A few orders: two delivered, a flash-sale claim, a sell-out, a partial out-of-stock
    (its other line's reservation is compensated)."""
    running, _env = stack
    with httpx.Client(base_url=running.api_url, timeout=10) as http:
        placed = {
            "delivered-1": place(http, [{"sku": "SKU-2", "quantity": 1}]),
            "delivered-2": place(http, [{"sku": "SKU-3", "quantity": 1}]),
            "hot": place(http, [{"sku": "SKU-6", "quantity": 1}]),
            "sold-out": place(http, [{"sku": "SKU-6", "quantity": 50}]),
            # SKU-3 (not hot, 50 stocked) runs out in the database after SKU-2 is reserved.
            "partial": place(
                http, [{"sku": "SKU-2", "quantity": 1}, {"sku": "SKU-3", "quantity": 5000}]
            ),
        }
        for key in ("delivered-1", "delivered-2", "hot"):
            wait_status(http, placed[key], {"DELIVERED"}, 120)
        for key in ("sold-out", "partial"):
            assert wait_status(http, placed[key], {"FAILED"}, 60) == "FAILED"
    return placed


def test_worker_and_api_serve_every_series(
    stack: tuple[RunningStack, dict[str, str]], orders: dict[str, str]
) -> None:
    running, env = stack
    worker_url = f"http://127.0.0.1:{env['TRADEFLOW_WORKER_METRICS_PORT']}/metrics"
    deadline = time.monotonic() + 20
    while True:  # the gauges refresh every few seconds; the relay publishes within a second
        w = scrape(worker_url)
        if value(w, "tradeflow_events_published_total", broker="redis") >= 5 * 4:
            break
        assert time.monotonic() < deadline, "the relay published nothing"
        time.sleep(0.5)
    # Orders by status and failure reason; latencies.
    assert value(w, "tradeflow_order_status_total", status="DELIVERED") >= 3
    assert value(w, "tradeflow_order_status_total", status="PAID") >= 3
    assert value(w, "tradeflow_order_status_total", status="NEEDS_ATTENTION") >= 0
    a = scrape(f"{running.api_url}/metrics")
    # Sell-outs of a hot SKU are answered by the API from the Redis counter (no workflow),
    # the others by the order's reservation on the worker: the two here, together.
    assert (
        either(w, a, "tradeflow_order_failures_total", status="FAILED", reason="OUT_OF_STOCK") >= 2
    )
    assert value(w, "tradeflow_checkout_to_paid_seconds_count") >= 3
    assert value(w, "tradeflow_checkout_to_delivered_seconds_count") >= 3
    assert value(w, "tradeflow_checkout_to_delivered_seconds_sum") > 0
    # Compensations: the partial order's SKU-2 reservation was cancelled.
    assert value(w, "tradeflow_compensations_total", step="cancel_reservation", outcome="ok") >= 1
    value(w, "tradeflow_compensations_total", step="void_payment", outcome="failed")
    # The read model's NEEDS_ATTENTION gauge, the PSP breaker, limiters.
    assert value(w, "tradeflow_orders_needs_attention") == 0
    assert value(w, "tradeflow_circuit_breaker_state", breaker="psp") == 0
    value(w, "tradeflow_rate_limit_refusals_total", limiter="ratelimit:psp")
    # Flash sale and dispatch.
    assert value(w, "tradeflow_flash_sale_claims_total", result="claimed") >= 1
    assert either(w, a, "tradeflow_flash_sale_claims_total", result="sold_out") >= 1
    assert value(w, "tradeflow_dispatch_offers_total") >= 3
    assert value(w, "tradeflow_dispatch_time_to_assign_seconds_count") >= 3
    value(w, "tradeflow_events_outbox_backlog")
    # The Temporal SDK's own metrics, on the same port.
    sdk = {n for n in names_of(w) if n.startswith("temporal_")}
    for wanted in (
        "temporal_workflow_task_schedule_to_start_latency",
        "temporal_activity_execution_latency",
        "temporal_worker_task_slots_available",
        "temporal_sticky_cache_size",
    ):
        assert any(n.startswith(wanted) for n in sdk), f"{wanted} not in {sorted(sdk)[:40]}"

    assert value(a, "tradeflow_dispatch_responses_total", answer="accepted") >= 3
    value(a, "tradeflow_dispatch_responses_total", answer="declined")
    value(a, "tradeflow_rate_limit_refusals_total", limiter="ratelimit:checkout")
    assert value(a, "tradeflow_orders_created_total") >= 5


def test_events_tail_from_start_shows_each_order_in_order(
    stack: tuple[RunningStack, dict[str, str]], orders: dict[str, str]
) -> None:
    _running, env = stack
    done = subprocess.run(
        [*tradeflow_command(), "events", "tail", "--from-start", "--json", "--idle-exit", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        e = json.loads(line)
        if e["event_id"] not in {x for v in seen.values() for x in v}:
            seen.setdefault(e["order_id"], []).append(e["event_id"])
    delivered = orders["delivered-1"]
    ids = seen[delivered]
    assert ids == [f"{delivered}:{i}" for i in range(len(ids))]
    statuses = [
        json.loads(line)["status"]
        for line in done.stdout.splitlines()
        if json.loads(line)["order_id"] == delivered
    ]
    assert statuses[0] == "PENDING" and statuses[-1] == "DELIVERED"
    assert "PAID" in statuses and "COURIER_ASSIGNED" in statuses
    failed = seen[orders["sold-out"]]
    assert failed[-1].startswith(orders["sold-out"])
    # The human format too.
    human = subprocess.run(
        [*tradeflow_command(), "events", "tail", "--from-start", "--idle-exit", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"{delivered}:0" in human.stdout and "-> DELIVERED" in human.stdout
    status = subprocess.run(
        [*tradeflow_command(), "events", "status"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "outbox backlog:" in status.stdout, status.stderr
