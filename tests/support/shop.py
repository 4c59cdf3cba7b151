"""The real API in-process over a ``Stack``, and the HTTP calls its users make.

``stack_api`` runs the app on the stack's task queues (so orders run on the stack's workers
and PSP simulator) and yields an HTTP client for it; ``shop_api`` is the one the HTTP stories
use; ``Shop`` is what a customer, a courier and support do over it, each call checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from api.app import create_app
from infra.settings import Settings
from tests.api.helpers import ADMIN_TOKEN, make_settings, order_body
from tests.support.stack import Stack

PRICE = 1299
"""What ``Shop`` sells its SKU at."""
FEE = 500
"""The delivery fee of every order."""
TOTAL = 2 * PRICE + FEE
"""An order ``Shop.place`` places (two units)."""


@contextlib.asynccontextmanager
async def stack_api(
    stack: Stack,
    settings: Settings,
    temporal: Client | None,
    **app_options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process on ``stack``'s task queues, over ``stack``'s database (``settings``
    say where it is); ``temporal=None`` is an API that cannot reach the workflow service.
    ``app_options`` go to ``create_app`` (the schema is the stack's: no migration unless
    ``migrate_on_start=True``)."""
    app = create_app(
        settings,
        temporal_client=temporal,
        orders_task_queue=stack.orders_queue,
        dispatch_task_queue=stack.dispatch_queue,
        **{"migrate_on_start": False, **app_options},
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60
        ) as http,
    ):
        yield http


def shop_api(
    stack: Stack, tmp_path: Path, db_url: str, temporal: Client | None
) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    """``stack_api`` for the HTTP stories: offers wait two minutes for the story's courier."""
    settings = make_settings(tmp_path, db_url, TRADEFLOW_OFFER_TIMEOUT_S=120)
    return stack_api(stack, settings, temporal)


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
