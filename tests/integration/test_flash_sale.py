"""A flash sale through the real API and the real workflows: 1,000 customers race for a hot
SKU with 50 units (Temporal dev server, real Redis, SQLite and PostgreSQL).

Exactly 50 orders reserve stock; the other 950 fail OUT_OF_STOCK having cost the database
no write to ``stock`` or ``reservations`` at all, which is counted on the workers' engine
(``StockWrites``), not assumed. The stock check passes afterwards, and again once the
winners are cancelled and every unit is back in both the DB and the Redis counter.

The crowd is 1,000 on PostgreSQL. On SQLite (one writer at a time, the embedded dev
database) the same 1,000 take about 2.5 minutes on two cores, so it runs 300 by default;
``TRADEFLOW_FLASH_ORDERS`` sets the crowd for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from cli.checks import check_stock
from domain.names import order_workflow_id
from infra.hot_stock import HotStock, claims_key, counter_key
from infra.redis import make_redis
from store.db import make_engine, make_sessionmaker
from tests.api.helpers import ADMIN_TOKEN, make_settings
from tests.conftest import REDIS_URL
from tests.integration.test_hot_stock import StockWrites
from worker import Dependencies, build_workers

ORDERS = {"postgresql": 1000, "sqlite": 300}
UNITS = 50


def crowd(dialect: str) -> int:
    return int(os.environ.get("TRADEFLOW_FLASH_ORDERS", ORDERS[dialect]))


pytestmark = pytest.mark.slow


@dataclass
class Workers:
    client: Client
    engine: AsyncEngine
    redis: aioredis.Redis
    writes: StockWrites
    orders_queue: str
    dispatch_queue: str


@contextlib.asynccontextmanager
async def flash_workers(client: Client, db_url: str, psp_db: Path) -> AsyncIterator[Workers]:
    """Order and dispatch workers as ``worker.py`` builds them, Redis included, with the
    PSP simulator in-process and every stock/reservation write on their engine recorded."""
    from psp.app import create_app as create_psp

    psp = create_psp(psp_db, webhook_url=None, webhook_secret="test-secret")
    engine = make_engine(db_url)
    redis = make_redis(REDIS_URL)
    psp_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=psp), base_url="http://psp")
    deps = Dependencies(engine=engine, http=psp_http, psp_url="http://psp", redis=redis)
    suffix = uuid.uuid4().hex[:8]
    stack = Workers(
        client, engine, redis, StockWrites(engine), f"orders-{suffix}", f"dispatch-{suffix}"
    )
    workers = build_workers(
        client, deps, roles={"orders": stack.orders_queue, "dispatch": stack.dispatch_queue}
    )
    try:
        async with contextlib.AsyncExitStack() as es:
            for w in workers:
                await es.enter_async_context(w)
            yield stack
    finally:
        stack.writes.close()
        await psp_http.aclose()
        await redis.aclose()
        await engine.dispose()


async def _statuses(engine: AsyncEngine, order_ids: list[str]) -> dict[str, list[str]]:
    async with engine.connect() as c:
        rows = (await c.execute(text("SELECT order_id, status, failure_reason FROM orders"))).all()
    wanted = set(order_ids)
    by: dict[str, list[str]] = {}
    for order_id, status, reason in rows:
        if order_id in wanted:
            by.setdefault(f"{status}/{reason}" if reason else status, []).append(order_id)
    return by


async def _timeline(http: httpx.AsyncClient, order_id: str) -> list[str]:
    r = await http.get(f"/v1/orders/{order_id}")
    assert r.status_code == 200, r.text
    return [t["status"] for t in r.json()["timeline"]]


async def _settle(
    engine: AsyncEngine, order_ids: list[str], done: set[str], *, within: float
) -> dict[str, list[str]]:
    deadline = time.monotonic() + within
    while True:
        by = await _statuses(engine, order_ids)
        if sum(len(by.get(k, [])) for k in done) == len(order_ids):
            return by
        assert time.monotonic() < deadline, {k: len(v) for k, v in by.items()}
        await asyncio.sleep(0.5)


async def test_a_crowd_for_50_hot_units_buys_exactly_50_and_losers_never_write_stock(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    sku = f"FLASH-{uuid.uuid4().hex[:8]}"
    async with flash_workers(dev_env.client, db_url, tmp_path / "psp.db") as stack:
        settings = make_settings(
            tmp_path,
            db_url,
            TRADEFLOW_OFFER_TIMEOUT_S=300,  # no couriers: winners wait in DISPATCHING
            TRADEFLOW_MAX_OFFERS=1,
        )
        # The API tier gets a pool fit for a sale (its default 10 + 10 connections make
        # 1,000 simultaneous requests queue for over 30 s on two busy cores).
        api_engine = make_engine(db_url, pool_size=20)
        app = create_app(
            settings,
            engine=api_engine,
            temporal_client=dev_env.client,
            orders_task_queue=stack.orders_queue,
            dispatch_task_queue=stack.dispatch_queue,
            migrate_on_start=False,
        )
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=120
                ) as http,
            ):
                await _flash_sale(http, stack, sku, db_url)
        finally:
            await api_engine.dispose()
            await stack.redis.delete(counter_key("main", sku), claims_key("main", sku))


async def _flash_sale(http: httpx.AsyncClient, stack: Workers, sku: str, db_url: str) -> None:
    orders = crowd(stack.engine.dialect.name)
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    r = await http.put(
        f"/v1/admin/products/{sku}",
        json={"name": "Limited grinder", "price_cents": 4999, "currency": "USD", "hot": True},
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["hot"] is True, r.text
    r = await http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "main", "available": UNITS},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    # The restock loaded the counter from the DB.
    assert await HotStock(stack.redis).counter("main", sku) == UNITS

    retried: list[int] = []

    bodies: dict[str, tuple[dict[str, object], str]] = {}

    async def place(i: int) -> tuple[str, str]:
        body = {
            "customer_id": f"c-{i}-{uuid.uuid4().hex[:6]}",
            "location_id": "main",
            "items": [{"sku": sku, "quantity": 1}],
            "delivery": {"address": "1 Main St", "lat": 31.23, "lng": 121.47},
            "payment": {"token": "tok_ok"},
        }
        # A client of the contract: on 503 (the API's DB pool queued it too long) retry
        # after Retry-After with the same Idempotency-Key, which cannot place it twice.
        for _ in range(20):
            resp = await http.post("/v1/orders", json=body, headers={"Idempotency-Key": f"k-{i}"})
            if resp.status_code != 503:
                break
            retried.append(i)
            await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
        assert resp.status_code in (200, 202), resp.text
        bodies[str(resp.json()["order_id"])] = (body, f"k-{i}")
        return str(resp.json()["order_id"]), str(resp.json()["status"])

    started = time.monotonic()
    placed = await asyncio.gather(*(place(i) for i in range(orders)))
    accepted_s = time.monotonic() - started
    order_ids = [o for o, _ in placed]
    # Once the counter is at 0 the API answers a loser itself: 202 with the order already
    # FAILED / OUT_OF_STOCK, no workflow started for it, its row written behind (the settle
    # below waits for SQL to have every order).
    at_the_edge = [o for o, status in placed if status == "FAILED"]
    assert len(set(order_ids)) == orders
    by = await _settle(
        stack.engine, order_ids, {"DISPATCHING", "FAILED/OUT_OF_STOCK"}, within=max(240, orders / 2)
    )
    settled_s = time.monotonic() - started

    winners, losers = by["DISPATCHING"], by["FAILED/OUT_OF_STOCK"]
    assert (len(winners), len(losers)) == (UNITS, orders - UNITS)
    for order_id in winners[:3]:
        assert (await _timeline(http, order_id))[:3] == ["PENDING", "RESERVED", "PAID"]
    for order_id in losers[:3]:
        assert "RESERVED" not in await _timeline(http, order_id)
    assert set(at_the_edge) <= set(losers)
    # Late customers, once the counter is at 0: every one is answered at the edge.
    late = await asyncio.gather(*(place(orders + i) for i in range(5)))
    assert [status for _, status in late] == ["FAILED"] * 5
    at_the_edge += [o for o, _ in late]
    late_ids = [o for o, _ in late]
    # Their rows reach SQL through the write-behind, a moment after their answers.
    late_by = await _settle(stack.engine, late_ids, {"FAILED/OUT_OF_STOCK"}, within=60)
    assert {k: sorted(v) for k, v in late_by.items()} == {"FAILED/OUT_OF_STOCK": sorted(late_ids)}
    for order_id, _ in late[:3]:
        assert await _timeline(http, order_id) == ["PENDING", "FAILED"]
        with pytest.raises(RPCError) as gone:
            await stack.client.get_workflow_handle(order_workflow_id(order_id)).describe()
        assert gone.value.status == RPCStatusCode.NOT_FOUND
    edge = late[0][0]
    body, key = bodies[edge]
    again = await http.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
    assert (again.status_code, again.json()["order_id"], again.json()["status"]) == (
        200,
        edge,
        "FAILED",
    )
    refused = await http.post(f"/v1/orders/{edge}/cancel", json={"reason": "too late"})
    assert (refused.status_code, refused.json()["code"]) == (409, "not_cancellable"), refused.text
    async with stack.engine.connect() as c:
        events = (
            await c.execute(
                text("SELECT status FROM order_events WHERE order_id = :o ORDER BY seq"),
                {"o": edge},
            )
        ).all()
    assert [e[0] for e in events] == ["PENDING", "FAILED"]
    r = await http.get(f"/v1/inventory/{sku}", params={"location_id": "main"})
    assert (r.json()["available"], r.json()["reserved"], r.json()["sold"]) == (0, 0, UNITS)
    assert await HotStock(stack.redis).counter("main", sku) == 0

    # Counted, not assumed: the losers sent no stock/reservation write (not even one that
    # rolled back), and what committed is each winner's try (fence insert + stock update)
    # and confirm (two updates), nothing else.
    writes = stack.writes
    assert writes.by(set(losers)) == []
    assert writes.unattributed == []
    assert {w[2] for w in writes.writes} == set(winners)
    # Under load an attempt can time out after committing and its retry re-sends the same
    # statement, which the fence turns into a no-op; stock above is exact either way.
    assert len(writes.committed) >= 4 * UNITS
    loser_reads = sum(1 for o in writes.reads if o in set(losers))

    sessions = make_sessionmaker(stack.engine)
    report = await check_stock(sessions, redis=stack.redis)
    assert report.ok, report.violations
    assert report.hot_counters == 1
    # The console command too, once, as an operator would run it.
    cli = Path(sys.executable).parent / "tradeflow"
    proc = await asyncio.to_thread(
        subprocess.run,
        [str(cli), "check", "stock", "--database-url", db_url, "--redis-url", REDIS_URL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stock check OK" in proc.stdout

    # Cancel the winners: sold units come back to the DB, then to the counter.
    for order_id in winners:
        resp = await http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "sale over"})
        assert resp.status_code == 200, resp.text
    await _settle(stack.engine, winners, {"CANCELLED"}, within=120)
    r = await http.get(f"/v1/inventory/{sku}", params={"location_id": "main"})
    assert (r.json()["available"], r.json()["reserved"], r.json()["sold"]) == (UNITS, 0, 0)
    assert await HotStock(stack.redis).counter("main", sku) == UNITS
    assert writes.by(set(losers)) == []
    report = await check_stock(sessions, redis=stack.redis)
    assert report.ok, report.violations
    print(
        f"\nflash sale [{stack.engine.dialect.name}]: {orders} orders accepted in"
        f" {accepted_s:.1f}s, settled in {settled_s:.1f}s; {len(writes.committed)} stock/fence"
        f" writes committed ({len(writes.writes)} sent), all by the {UNITS} winners;"
        f" losers: 0 writes, {loser_reads} fence reads, {len(at_the_edge)} answered by the API"
        f" with no workflow; {len(retried)} HTTP 503s retried"
    )
