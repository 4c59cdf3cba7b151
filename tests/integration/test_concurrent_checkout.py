"""200 customers race for a SKU with 20 units, through the real API and the real workflows.

Runs on the Temporal dev server, on SQLite and on PostgreSQL. While the orders run, a sampler
reads the stock row continuously: it must never go below zero, and available + reserved + sold
must always equal what was stocked.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from tests.api.helpers import ADMIN_TOKEN, make_settings
from tests.support import order_stack
from tests.support.shop import stack_api

ORDERS = 200
UNITS = 20

pytestmark = pytest.mark.slow


async def _statuses(engine, sku_orders: list[str]) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    async with engine.connect() as c:
        rows = (
            await c.execute(text("SELECT order_id, status, failure_reason, view FROM orders"))
        ).all()
    wanted = set(sku_orders)
    by: dict[str, list[str]] = {}
    for order_id, status, reason, _view in rows:
        if order_id in wanted:
            by.setdefault(f"{status}/{reason}" if reason else status, []).append(order_id)
    return by


async def _timeline(engine, order_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    async with engine.connect() as c:
        view = (
            await c.execute(text("SELECT view FROM orders WHERE order_id = :o"), {"o": order_id})
        ).scalar_one()
    view = json.loads(view) if isinstance(view, str) else view
    return [t["status"] for t in view["timeline"]]


async def test_200_concurrent_orders_for_20_units_sell_exactly_20(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    sku = f"HOT-{uuid.uuid4().hex[:8]}"
    async with order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack:
        settings = make_settings(
            tmp_path,
            db_url,
            TRADEFLOW_OFFER_TIMEOUT_S=120,  # no couriers: winners wait in DISPATCHING
            TRADEFLOW_MAX_OFFERS=1,
        )
        async with stack_api(stack, settings, dev_env.client) as http:
            admin = {"X-Admin-Token": ADMIN_TOKEN}
            r = await http.put(
                f"/v1/admin/products/{sku}",
                json={"name": "Flash sale", "price_cents": 999, "currency": "USD"},
                headers=admin,
            )
            assert r.status_code == 200, r.text
            r = await http.put(
                f"/v1/admin/inventory/{sku}",
                json={"location_id": "main", "available": UNITS},
                headers=admin,
            )
            assert r.status_code == 200, r.text

            violations: list[tuple[int, int, int]] = []
            samples = 0
            stop = asyncio.Event()

            async def sample() -> None:
                nonlocal samples
                while not stop.is_set():
                    async with stack.engine.connect() as c:
                        a, rsv, sold = (
                            await c.execute(
                                text(
                                    "SELECT available, reserved, sold FROM stock WHERE sku = :s AND location_id = 'main'"
                                ),
                                {"s": sku},
                            )
                        ).one()
                    samples += 1
                    if a < 0 or rsv < 0 or sold < 0 or a + rsv + sold != UNITS:
                        violations.append((a, rsv, sold))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())

            async def place(i: int) -> str:
                body = {
                    "customer_id": f"c-{i}-{uuid.uuid4().hex[:6]}",
                    "location_id": "main",
                    "items": [{"sku": sku, "quantity": 1}],
                    "delivery": {"address": "1 Main St", "lat": 31.23, "lng": 121.47},
                    "payment": {"token": "tok_ok"},
                }
                resp = await http.post(
                    "/v1/orders", json=body, headers={"Idempotency-Key": f"k-{i}"}
                )
                assert resp.status_code == 202, resp.text
                return str(resp.json()["order_id"])

            order_ids = await asyncio.gather(*(place(i) for i in range(ORDERS)))
            assert len(set(order_ids)) == ORDERS

            # Wait until every order has settled: winners dispatching, losers failed.
            deadline = asyncio.get_running_loop().time() + 240
            while True:
                by = await _statuses(stack.engine, order_ids)
                settled = len(by.get("DISPATCHING", [])) + len(by.get("FAILED/OUT_OF_STOCK", []))
                if settled == ORDERS:
                    break
                assert asyncio.get_running_loop().time() < deadline, {
                    k: len(v) for k, v in by.items()
                }
                await asyncio.sleep(0.5)

            winners = by["DISPATCHING"]
            assert len(winners) == UNITS
            assert len(by["FAILED/OUT_OF_STOCK"]) == ORDERS - UNITS
            for order_id in winners[:3]:
                assert (await _timeline(stack.engine, order_id))[:3] == [
                    "PENDING",
                    "RESERVED",
                    "PAID",
                ]
            for order_id in by["FAILED/OUT_OF_STOCK"][:3]:
                assert "RESERVED" not in await _timeline(stack.engine, order_id)
            r = await http.get(f"/v1/inventory/{sku}", params={"location_id": "main"})
            assert (r.json()["available"], r.json()["reserved"], r.json()["sold"]) == (0, 0, UNITS)

            # Cancel the winners: every sold unit comes back, every authorization is voided.
            for order_id in winners:
                resp = await http.post(
                    f"/v1/orders/{order_id}/cancel", json={"reason": "test over"}
                )
                assert resp.status_code == 200, resp.text
            while len((await _statuses(stack.engine, winners)).get("CANCELLED", [])) < UNITS:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.5)
            stop.set()
            await sampler
            r = await http.get(f"/v1/inventory/{sku}", params={"location_id": "main"})
            assert (r.json()["available"], r.json()["reserved"], r.json()["sold"]) == (UNITS, 0, 0)
            for order_id in winners[:5]:
                kinds = [k for k, _ in await stack.ledger(order_id)]
                assert kinds == ["authorize", "void"]
    assert samples > 10
    assert violations == [], violations[:5]
