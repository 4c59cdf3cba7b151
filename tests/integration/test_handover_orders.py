"""Zone handover under real orders: `tradeflow up` (its worker serves dispatch shard 0) and two
more worker processes serving shard 1 and shard 2 only (``worker.py --queues dispatch
--dispatch-shards <n>``); orders through the API at five stores in five zones, couriers played
by the city simulation (cli/city_sim.py: moving, declining one offer in five, travelling).
Shard 1 is stopped with SIGTERM, then shard 2 killed with SIGKILL: each time
the new orders of its zones are offered (by shard 0's zone matchers) within lease TTL + one
window (+ a heartbeat and slack for the order to be paid and reach dispatch), no order is ever
held by two couriers at once, every order ends DELIVERED, and the stock and money checks
pass."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.checks import check_money, check_stock
from dispatch.zones import zone_of
from infra.hashring import HashRing
from store.db import make_engine, make_sessionmaker
from tests.integration.test_launcher import (
    ROOT,
    launched,
    launcher_env,
    launcher_redis_url,
)

pytestmark = pytest.mark.slow

LEASE_TTL_S = 2.0
WINDOW_S = 0.3
BEAT_S = LEASE_TTL_S / 5
STORES = {
    "main": (31.2304, 121.4737),
    "h-north": (31.300, 121.470),
    "h-east": (31.230, 121.560),
    "h-south": (31.160, 121.450),
    "h-west": (31.230, 121.380),
}
COURIERS_PER_STORE = 3
MOVED_S = LEASE_TTL_S + WINDOW_S + BEAT_S
"""After the signal, a zone is matched by its new shard within lease TTL + one window (+ a beat:
the ring is re-read every beat)."""
SLACK_S = 1.5
"""Routing, the request activity and the sampler's own period, on a loaded machine."""
ORDER_TIMEOUT_S = 40.0
TERMINAL = {"DELIVERED", "CANCELLED", "FAILED", "NEEDS_ATTENTION"}


class Holdings:
    """Samples GET /v1/couriers every 30 ms: when each order was first held by a courier, and
    any moment one order was held by two."""

    def __init__(self, http: httpx.Client, admin: dict[str, str]) -> None:
        self._http, self._admin = http, admin
        self.first_held: dict[str, float] = {}
        self.doubles: list[tuple[str, list[str]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Holdings:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self._http.get("/v1/couriers", params={"limit": 1000}, headers=self._admin)
                items = r.json()["items"]
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.03)
                continue
            now = time.time()
            by_order: dict[str, list[str]] = {}
            for c in items:
                if c.get("current_order_id"):
                    by_order.setdefault(c["current_order_id"], []).append(c["courier_id"])
            for order_id, couriers in by_order.items():
                self.first_held.setdefault(order_id, now)
                if len(couriers) > 1:
                    self.doubles.append((order_id, couriers))
            self.samples += 1
            time.sleep(0.03)


@contextmanager
def shard_worker(env: dict[str, str], shard: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``worker.py --queues dispatch --dispatch-shards <shard>`` against the launcher's stack."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "worker.py"),
                "--queues=dispatch",
                f"--dispatch-shards={shard}",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_for_line(log: Path, text: str, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not log.exists() or text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def test_orders_survive_a_dispatch_shard_stopped_and_killed(tmp_path: Path) -> None:
    zones = {store: zone_of(lat, lng) for store, (lat, lng) in STORES.items()}
    assert len(set(zones.values())) == len(zones)
    # The ring is deterministic: with these stores shard 1 and shard 2 both serve zones, and
    # shard 2 keeps its own (and gets no new one) when shard 1 leaves.
    three = HashRing(["0", "1", "2"]).assign(zones.values())
    two = HashRing(["0", "2"]).assign(zones.values())
    term_stores = [s for s, z in zones.items() if three[z] == "1"]
    kill_stores = [s for s, z in zones.items() if three[z] == "2"]
    assert term_stores and kill_stores
    assert kill_stores == [s for s, z in zones.items() if two[z] == "2"]

    data_dir = tmp_path / "data"
    redis_url = launcher_redis_url()
    env = launcher_env(
        data_dir,
        REDIS_URL=redis_url,
        TRADEFLOW_DEMO="off",
        TRADEFLOW_COURIER_STEP_S="0.2",
        # The city simulation plays the couriers: they wander around the stores, decline
        # one offer in five (so orders are offered again), travel to pick up and deliver.
        TRADEFLOW_SIM_COURIERS=str(COURIERS_PER_STORE * len(STORES)),
        TRADEFLOW_SIM_STORES=",".join(f"{k}:{la}:{ln}" for k, (la, ln) in STORES.items()),
        TRADEFLOW_SIM_ACCEPT_P="0.8",
        TRADEFLOW_SIM_TIME_SCALE="200",
        TRADEFLOW_DISPATCH_LEASE_TTL_S=str(LEASE_TTL_S),
        TRADEFLOW_DISPATCH_WINDOW_S=str(WINDOW_S),
        TRADEFLOW_DISPATCH_KEY_PREFIX=f"ho-{uuid.uuid4().hex[:6]}:",
        TRADEFLOW_WORKER_GRACE_S="3",
    )
    t0 = time.monotonic()

    def phase(what: str) -> None:
        print(f"[{time.monotonic() - t0:6.2f}s] {what}", flush=True)

    with launched(env) as running:
        phase("stack up")
        http = httpx.Client(base_url=running.api_url, timeout=10)
        admin = {"X-Admin-Token": running.admin_token}
        sku = f"HO-{uuid.uuid4().hex[:6].upper()}"

        def put(path: str, body: dict[str, Any]) -> None:
            r = http.put(path, json=body, headers=admin)
            assert r.status_code == 200, (path, r.text)

        put(f"/v1/admin/products/{sku}", {"name": sku, "price_cents": 800, "currency": "USD"})
        for store, (lat, lng) in STORES.items():
            put(f"/v1/admin/locations/{store}", {"name": store, "lat": lat, "lng": lng})
            put(f"/v1/admin/inventory/{sku}", {"location_id": store, "available": 50})

        orders: list[str] = []

        def order_at(store: str) -> str:
            lat, lng = STORES[store]
            body = {
                "customer_id": "c-handover",
                "location_id": store,
                "items": [{"sku": sku, "quantity": 1}],
                "delivery": {"address": "1 Handover Rd", "lat": lat + 0.01, "lng": lng},
                "payment": {"token": "tok_ok"},
            }
            r = http.post(
                "/v1/orders", json=body, headers={"Idempotency-Key": f"ho-{uuid.uuid4().hex}"}
            )
            assert r.status_code in (201, 202), r.text
            order_id = str(r.json()["order_id"])
            orders.append(order_id)
            return order_id

        def story(order_id: str) -> str:
            """Every log line about the order (launcher's children and the shard workers)."""
            logs = sorted((data_dir / "logs").glob("*.log")) + sorted(tmp_path.glob("*.log"))
            lines = [
                f"{log.name}: {line}"
                for log in logs
                for line in log.read_text().splitlines()
                if order_id in line and "GET /v1/orders" not in line
            ]
            return "\n".join([*lines, *asyncio.run(delivery_history(order_id))])

        async def delivery_history(order_id: str) -> list[str]:
            from temporalio.client import Client

            client = await Client.connect(running.temporal_address)
            history = await client.get_workflow_handle(f"delivery-{order_id}").fetch_history()
            out = []
            for e in history.events:
                what = e.WhichOneof("attributes") or ""
                detail = ""
                if e.HasField("activity_task_scheduled_event_attributes"):
                    a = e.activity_task_scheduled_event_attributes
                    detail = f"{a.activity_type.name} on {a.task_queue.name}"
                elif e.HasField("activity_task_failed_event_attributes"):
                    detail = e.activity_task_failed_event_attributes.failure.message
                elif e.HasField("activity_task_timed_out_event_attributes"):
                    detail = e.activity_task_timed_out_event_attributes.failure.message
                out.append(
                    f"  {e.event_id} {e.event_time.ToDatetime():%H:%M:%S.%f} {what} {detail}"
                )
            return out

        def status(order_id: str) -> str:
            return str(http.get(f"/v1/orders/{order_id}").json()["status"])

        def all_delivered(ids: list[str]) -> None:
            deadline = time.monotonic() + ORDER_TIMEOUT_S
            for order_id in ids:
                while (st := status(order_id)) not in TERMINAL:
                    if time.monotonic() > deadline:
                        pytest.fail(f"{order_id} still {st}:\n{story(order_id)}")
                    time.sleep(0.1)
                assert st == "DELIVERED", (order_id, st)

        def dispatching_at(order_id: str) -> float:
            timeline = http.get(f"/v1/orders/{order_id}").json()["timeline"]
            at = next(t["at"] for t in timeline if t["status"] == "DISPATCHING")
            return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()

        def handover(ids: list[str], since: float) -> float:
            """Seconds from the signal until every order in ``ids`` was offered; each within
            the bound: when its zone has moved, or one window after it reached dispatch if
            that was later (paying takes a moment)."""
            deadline = time.monotonic() + MOVED_S + 20
            while not all(o in holdings.first_held for o in ids):
                assert time.monotonic() < deadline, ("never offered", ids, running.transcript())
                time.sleep(0.02)
            for o in ids:
                due = max(since + MOVED_S, dispatching_at(o) + WINDOW_S) + SLACK_S
                late = holdings.first_held[o] - due
                assert late <= 0, (o, f"offered {late:.2f} s after its bound")
            return max(holdings.first_held[o] for o in ids) - since

        with (
            Holdings(http, admin) as holdings,
            shard_worker(env, "1", tmp_path / "shard-1.log") as shard1,
            shard_worker(env, "2", tmp_path / "shard-2.log") as shard2,
        ):
            for n, stores in (("1", term_stores), ("2", kill_stores)):
                for store in stores:  # the shard holds the leases of its zones
                    wait_for_line(tmp_path / f"shard-{n}.log", f"zone {zones[store]}: lease held")
            phase("shards 1 and 2 hold their zones")
            # Three shards match: one order per store, every one delivered.
            all_delivered([order_at(store) for store in STORES])
            phase("first orders delivered")

            took: dict[str, float] = {}
            for how, proc, stores in (
                (signal.SIGTERM, shard1, term_stores),
                (signal.SIGKILL, shard2, kill_stores),
            ):
                proc.send_signal(how)
                stopped = time.time()
                after = [order_at(store) for store in stores]
                took[how.name] = handover(after, stopped)
                phase(f"{how.name}: offered again")
                proc.wait(timeout=20)
                if how == signal.SIGTERM:
                    assert proc.returncode == 0, (tmp_path / "shard-1.log").read_text()[-3000:]
            all_delivered(orders)
            phase("all delivered")

        print(
            f"handover with real orders: {len(orders)} orders, offered again "
            + ", ".join(f"{k} {v:.2f} s" for k, v in took.items())
            + f" after the signal (zones move within {MOVED_S:.1f} s); {holdings.samples} samples"
        )
        assert not holdings.doubles, holdings.doubles[:5]
        assert set(holdings.first_held) >= set(orders)

        r = http.get("/v1/couriers", params={"limit": 1000}, headers=admin)
        assert all(c["current_order_id"] is None for c in r.json()["items"])  # all free again

        async def checks() -> None:
            engine = make_engine(f"sqlite:///{data_dir / 'tradeflow.db'}")
            sessions = make_sessionmaker(engine)
            try:
                stock = await check_stock(sessions)
                assert stock.ok, stock.violations
                async with httpx.AsyncClient(base_url=running.psp_url, timeout=10) as psp:
                    money = await check_money(sessions, psp, order_ids=orders)
                assert money.ok, money.violations
                assert money.orders == len(orders)
            finally:
                await engine.dispose()

        asyncio.run(checks())
