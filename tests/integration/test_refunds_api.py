"""Refunds through the real API and the real workflows on the Temporal dev server.

An order is placed and delivered over HTTP (the courier's events included), then refunded over
HTTP: the answers, the Refund resource, the Order resource's overlay (refunds, refunded money,
payment status, status still DELIVERED), the race for the last cents between two requests,
and a refund stored while the workflow service is down, started by the retry. On SQLite and
on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.api.helpers import ADMIN_TOKEN, assert_problem, make_settings, order_body
from tests.support import Stack, order_stack

PRICE = 1299
FEE = 500
TOTAL = 2 * PRICE + FEE

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def _api(
    stack: Stack, tmp_path: Path, db_url: str, temporal: Client | None
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, db_url, TRADEFLOW_OFFER_TIMEOUT_S=120)
    app = create_app(
        settings,
        temporal_client=temporal,
        orders_task_queue=stack.orders_queue,
        dispatch_task_queue=stack.dispatch_queue,
        migrate_on_start=False,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60
        ) as http,
    ):
        yield http


class Shop:
    """The HTTP calls a customer, a courier and support make in these stories."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.sku = f"SKU-{uuid.uuid4().hex[:8]}"
        self.courier = f"k-{uuid.uuid4().hex[:8]}"

    async def open(self) -> None:
        admin = {"X-Admin-Token": ADMIN_TOKEN}
        r = await self.http.put(
            f"/v1/admin/products/{self.sku}",
            json={"name": "Teapot", "price_cents": PRICE, "currency": "USD"},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        r = await self.http.put(
            f"/v1/admin/inventory/{self.sku}",
            json={"location_id": "main", "available": 5},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        r = await self.http.put(
            f"/v1/admin/couriers/{self.courier}",
            json={"lat": 31.2404, "lng": 121.4737, "available": True},
            headers=admin,
        )
        assert r.status_code == 200, r.text

    async def place(self) -> str:
        body = order_body(f"c-{uuid.uuid4().hex[:8]}", [(self.sku, 2)])
        r = await self.http.post("/v1/orders", json=body, headers={"Idempotency-Key": "o-1"})
        assert r.status_code == 202, r.text
        return str(r.json()["order_id"])

    async def order(self, order_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/orders/{order_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def until_order(
        self, order_id: str, pred: Callable[[dict[str, Any]], bool], within: float = 60
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            order = await self.order(order_id)
            if pred(order):
                return order
            assert asyncio.get_running_loop().time() < deadline, order
            await asyncio.sleep(0.1)

    async def courier_says(self, order_id: str, type_: str) -> None:
        r = await self.http.post(
            f"/v1/deliveries/{order_id}/events", json={"courier_id": self.courier, "type": type_}
        )
        assert r.status_code == 202, r.text

    async def deliver(self, order_id: str) -> None:
        await self.until_order(order_id, lambda o: o["delivery"]["offered_to"] == self.courier)
        await self.courier_says(order_id, "accepted")
        await self.until_order(order_id, lambda o: o["status"] == "COURIER_ASSIGNED")
        await self.courier_says(order_id, "picked_up")
        await self.until_order(order_id, lambda o: o["status"] == "OUT_FOR_DELIVERY")
        await self.courier_says(order_id, "delivered")
        await self.until_order(order_id, lambda o: o["status"] == "DELIVERED")

    async def refund(
        self, order_id: str, amount_cents: int, key: str | None, **extra: Any
    ) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        body = {"amount_cents": amount_cents, "reason": "damaged in transit", **extra}
        return await self.http.post(f"/v1/orders/{order_id}/refunds", json=body, headers=headers)

    async def until_refund(
        self, order_id: str, refund_id: str, within: float = 60
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            r = await self.http.get(f"/v1/orders/{order_id}/refunds/{refund_id}")
            assert r.status_code == 200, r.text
            if r.json()["status"] != "PENDING":
                return dict(r.json())
            assert asyncio.get_running_loop().time() < deadline, r.json()
            await asyncio.sleep(0.1)

    async def stock(self) -> tuple[int, int, int]:
        r = await self.http.get(f"/v1/inventory/{self.sku}", params={"location_id": "main"})
        body = r.json()
        return (body["available"], body["reserved"], body["sold"])


async def test_refunds_over_http_from_not_refundable_to_fully_refunded(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with (
        order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack,
        _api(stack, tmp_path, db_url, dev_env.client) as http,
    ):
        shop = Shop(http)
        await shop.open()
        order_id = await shop.place()
        await shop.until_order(order_id, lambda o: o["delivery"]["offered_to"] == shop.courier)

        # Before capture there is nothing to refund; malformed requests never get that far.
        assert_problem(await shop.refund(order_id, 100, "early"), 409, "not_refundable")
        assert_problem(await shop.refund(order_id, 100, None), 400, "validation_error")
        assert_problem(await shop.refund("o_nope", 100, "k"), 404, "not_found")
        assert_problem(await shop.refund(order_id, 0, "k"), 422, "validation_error")
        assert_problem(await shop.refund(order_id, 10.5, "k"), 422, "validation_error")  # type: ignore[arg-type]
        r = await shop.refund(order_id, 100, "k", restock=[{"sku": "SKU-other", "quantity": 1}])
        assert_problem(r, 422, "validation_error")
        r = await shop.refund(order_id, 100, "k", restock=[{"sku": shop.sku, "quantity": 3}])
        assert_problem(r, 422, "validation_error")

        await shop.deliver(order_id)
        assert await shop.stock() == (3, 0, 2)

        # A partial refund with one unit back on sale: 202, then the same request is a 200.
        first = await shop.refund(
            order_id, 1000, "refund-1", restock=[{"sku": shop.sku, "quantity": 1}]
        )
        assert first.status_code == 202, first.text
        refund = first.json()
        assert refund["status"] == "PENDING" and refund["order_id"] == order_id
        assert refund["restock"] == [{"sku": shop.sku, "quantity": 1}]
        assert first.headers["location"] == f"/v1/orders/{order_id}/refunds/{refund['refund_id']}"
        again = await shop.refund(
            order_id, 1000, "refund-1", restock=[{"sku": shop.sku, "quantity": 1}]
        )
        assert again.status_code == 200, again.text
        assert again.json()["refund_id"] == refund["refund_id"]
        reused = assert_problem(
            await shop.refund(order_id, 999, "refund-1"), 422, "idempotency_key_reused"
        )
        assert reused["refund_id"] == refund["refund_id"]

        done = await shop.until_refund(order_id, refund["refund_id"])
        assert {"refund_id", "order_id", "amount_cents", "status", "restock", "created_at"} <= set(
            done
        )
        assert (done["status"], done["amount_cents"]) == ("SUCCEEDED", 1000)
        assert await shop.stock() == (4, 0, 1)
        order = await shop.order(order_id)
        assert order["status"] == "DELIVERED"
        assert order["amounts"]["refunded_cents"] == 1000
        assert order["amounts"]["captured_cents"] == TOTAL
        assert order["payment"]["status"] == "PARTIALLY_REFUNDED"
        assert [(x["refund_id"], x["status"]) for x in order["refunds"]] == [
            (refund["refund_id"], "SUCCEEDED")
        ]
        listed = (await http.get("/v1/orders", params={"customer_id": order["customer_id"]})).json()
        assert listed["items"][0]["amounts"]["refunded_cents"] == 1000
        assert listed["items"][0]["payment"]["status"] == "PARTIALLY_REFUNDED"

        # Two requests race for what is left, each asking for all of it: exactly one passes.
        left = TOTAL - 1000
        racing = await asyncio.gather(
            shop.refund(order_id, left, "race-a"), shop.refund(order_id, left, "race-b")
        )
        assert sorted(r.status_code for r in racing) == [202, 422], [r.text for r in racing]
        loser = next(r for r in racing if r.status_code == 422)
        assert assert_problem(loser, 422, "refund_exceeds_captured")["refundable_cents"] == 0
        winner = next(r for r in racing if r.status_code == 202).json()
        assert (await shop.until_refund(order_id, winner["refund_id"]))["status"] == "SUCCEEDED"
        assert_problem(await shop.refund(order_id, 1, "one-more"), 422, "refund_exceeds_captured")

        order = await shop.order(order_id)
        assert order["status"] == "DELIVERED"
        assert order["amounts"]["refunded_cents"] == TOTAL
        assert order["payment"]["status"] == "REFUNDED"
        assert [x["amount_cents"] for x in order["refunds"]] == [1000, left]
        listing = (await http.get(f"/v1/orders/{order_id}/refunds")).json()
        assert [x["refund_id"] for x in listing["items"]] == [
            refund["refund_id"],
            winner["refund_id"],
        ]
        assert await stack.ledger(order_id) == [
            ("authorize", TOTAL),
            ("capture", TOTAL),
            ("refund", 1000),
            ("refund", left),
        ]

        r = await http.get(f"/v1/orders/{order_id}/refunds/r_nope")
        assert_problem(r, 404, "not_found")
        r = await http.get(f"/v1/orders/o_nope/refunds/{refund['refund_id']}")
        assert_problem(r, 404, "not_found")
        assert_problem(await http.get("/v1/orders/o_nope/refunds"), 404, "not_found")


async def test_refund_stored_while_temporal_is_down_is_started_by_the_retry(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, sqlite_url, tmp_path / "psp.db") as stack:
        async with _api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop = Shop(http)
            await shop.open()
            order_id = await shop.place()
            await shop.deliver(order_id)

        async with _api(stack, tmp_path, sqlite_url, None) as down:
            r = await Shop(down).refund(order_id, 500, "while-down")
            assert_problem(r, 503, "temporal_unavailable")
        async with stack.engine.connect() as c:
            rows = (
                await c.execute(
                    text("SELECT refund_id, status FROM refunds WHERE order_id = :o"),
                    {"o": order_id},
                )
            ).all()
        assert [status for _, status in rows] == ["PENDING"]  # stored, holding its 500

        async with _api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop.http = http
            r = await shop.refund(order_id, 500, "while-down")
            assert r.status_code == 200, r.text  # a repeat of the stored refund...
            assert r.json()["refund_id"] == rows[0][0]
            done = await shop.until_refund(order_id, rows[0][0])  # ...that now runs
            assert done["status"] == "SUCCEEDED"
            assert (await shop.order(order_id))["amounts"]["refunded_cents"] == 500
        assert [a for k, a in await stack.ledger(order_id) if k == "refund"] == [500]
