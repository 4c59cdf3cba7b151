"""A real order stack for tests and recordings: the order and dispatch workers on fresh task
queues, a real database and the PSP simulator in-process.

``order_stack`` runs it; ``Stack`` seeds it, starts orders on it and reads back what they did
(stock, couriers, read model, reservations, the PSP's ledger). The workflow tests drive it on
the time-skipping server, ``tradeflow history record`` (tests/support/record.py) on the real
dev server. Dev tooling: the wheel does not ship it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Table, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowHandle

from domain.messages import (
    CheckoutInput,
    CourierEvent,
    CourierEventResult,
    DeliveryAddress,
    DeliveryState,
    OrderLine,
    OrderTimeouts,
    OrderView,
)
from domain.money import DELIVERY_FEE_CENTS
from domain.names import (
    QUERY_DELIVERY,
    QUERY_ORDER,
    UPDATE_COURIER_EVENT,
    UPDATE_COURIER_RESPONSE,
    delivery_workflow_id,
    order_workflow_id,
)
from domain.status import CourierEventType
from infra.redis import make_redis
from store.db import make_engine, make_sessionmaker
from store.models import Courier, Product, Stock
from worker import Dependencies, build_workers
from workflows.checkout import OrderWorkflow

REDIS_URL = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The zone matchers' Redis (keys under a prefix of their own per stack)."""
DISPATCH_WINDOW_S = 0.2
LEASE_TTL_S = 3.0
MAIN = (31.2304, 121.4737)
MERCHANT_URL = "http://psp/v1/merchant/webhook"
"""The PSP simulator's merchant endpoint, as the in-process workers reach it."""
C: Table = Courier.__table__  # type: ignore[attr-defined]
S: Table = Stock.__table__  # type: ignore[attr-defined]


@dataclass
class Stack:
    client: Client
    engine: AsyncEngine
    psp: httpx.AsyncClient
    orders_queue: str
    dispatch_queue: str
    merchant_url: str | None = None
    """Where the workers send merchant notifications (None: they skip them)."""
    started: list[str] = field(default_factory=list)
    """Ids of the order workflows this stack started."""

    async def seed_product(
        self, sku: str, price_cents: int, available: int, *, hot: bool = False
    ) -> None:
        sessions = make_sessionmaker(self.engine)
        async with sessions() as s, s.begin():
            s.add(
                Product(
                    sku=sku, name=f"Product {sku}", price_cents=price_cents, currency="USD", hot=hot
                )
            )
            s.add(Stock(location_id="main", sku=sku, available=available, stocked=available))

    async def seed_courier(
        self, courier_id: str, km_north: float, *, available: bool = True
    ) -> None:
        sessions = make_sessionmaker(self.engine)
        async with sessions() as s, s.begin():
            s.add(
                Courier(
                    courier_id=courier_id,
                    lat=MAIN[0] + km_north / 111.0,
                    lng=MAIN[1],
                    available=available,
                )
            )

    async def off_shift(self, *courier_ids: str) -> None:
        """Take couriers off shift, so no later order is offered to them."""
        sessions = make_sessionmaker(self.engine)
        async with sessions() as s, s.begin():
            await s.execute(
                update(C).where(C.c.courier_id.in_(courier_ids)).values(available=False)
            )

    async def stock(self, sku: str) -> tuple[int, int, int]:
        """(available, reserved, sold) at main."""
        async with self.engine.connect() as c:
            row = (
                await c.execute(
                    select(S.c.available, S.c.reserved, S.c.sold).where(
                        (S.c.location_id == "main") & (S.c.sku == sku)
                    )
                )
            ).one()
        return (row[0], row[1], row[2])

    async def courier(self, courier_id: str) -> tuple[str | None, str | None]:
        async with self.engine.connect() as c:
            row = (
                await c.execute(
                    select(C.c.current_order_id, C.c.assignment).where(C.c.courier_id == courier_id)
                )
            ).one()
        return (row[0], row[1])

    async def read_model(self, order_id: str) -> dict[str, Any]:
        async with self.engine.connect() as c:
            row = (
                await c.execute(
                    text(
                        "SELECT status, failure_reason, seq, view FROM orders WHERE order_id = :o"
                    ),
                    {"o": order_id},
                )
            ).one()
        view = json.loads(row[3]) if isinstance(row[3], str) else row[3]
        return {"status": row[0], "failure_reason": row[1], "seq": row[2], "view": view}

    async def reservations(self, order_id: str) -> dict[str, str]:
        async with self.engine.connect() as c:
            rows = (
                await c.execute(
                    text("SELECT sku, state FROM reservations WHERE order_id = :o"), {"o": order_id}
                )
            ).all()
        return {r[0]: r[1] for r in rows}

    async def ledger(self, order_id: str) -> list[tuple[str, int]]:
        r = await self.psp.get("/v1/ledger", params={"order_id": order_id})
        r.raise_for_status()
        return [(i["kind"], i["amount_cents"]) for i in r.json()["items"]]

    def checkout(
        self,
        lines: list[tuple[str, int, int]],
        *,
        token: str = "tok_ok",
        customer_id: str = "c-1",
        timeouts: OrderTimeouts | None = None,
        order_id: str | None = None,
        notify_merchant: bool = False,
    ) -> CheckoutInput:
        return CheckoutInput(
            order_id=order_id or f"o_{uuid.uuid4().hex}",
            customer_id=customer_id,
            location_id="main",
            currency="USD",
            lines=[OrderLine(sku, qty, price) for sku, qty, price in lines],
            delivery=DeliveryAddress("1 Main St", MAIN[0] + 0.01, MAIN[1]),
            payment_token=token,
            delivery_fee_cents=DELIVERY_FEE_CENTS,
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            timeouts=timeouts
            or OrderTimeouts(payment_timeout_s=60, offer_timeout_s=10, max_offers=3),
            dispatch_task_queue=self.dispatch_queue,
            notify_merchant=notify_merchant,
        )

    async def start(self, inp: CheckoutInput) -> WorkflowHandle[Any, OrderView]:
        self.started.append(order_workflow_id(inp.order_id))
        return await self.client.start_workflow(
            OrderWorkflow.run, inp, id=order_workflow_id(inp.order_id), task_queue=self.orders_queue
        )

    async def terminate_leftovers(self) -> None:
        """Terminate the orders this stack started that still run (their children go with
        them). Its workers are about to stop: an order left compensating against a faulted
        PSP would retry for ever and, on the time-skipping server, hold its clock."""
        for workflow_id in self.started:
            with contextlib.suppress(Exception):
                await self.client.get_workflow_handle(workflow_id).terminate("test stack closed")

    async def courier_says(self, order_id: str, courier_id: str, type_: str) -> CourierEventResult:
        if type_ in ("accepted", "declined"):
            wf_id, update_name = delivery_workflow_id(order_id), UPDATE_COURIER_RESPONSE
        else:
            wf_id, update_name = order_workflow_id(order_id), UPDATE_COURIER_EVENT
        return await self.client.get_workflow_handle(wf_id).execute_update(
            update_name,
            CourierEvent(courier_id, CourierEventType(type_)),
            result_type=CourierEventResult,
        )


async def view_of(handle: WorkflowHandle[Any, Any]) -> OrderView:
    """The order as the API shows it: its workflow's view, with the open offer from the
    delivery's query while it dispatches (``OrderView.with_offer``)."""
    view = await handle.query(QUERY_ORDER, result_type=OrderView)
    if not view.dispatching:
        return view
    # The handle has no public client; the delivery lives on the same one.
    delivery = handle._client.get_workflow_handle(delivery_workflow_id(view.order_id))
    try:
        state = await delivery.query(QUERY_DELIVERY, result_type=DeliveryState)
    except Exception:  # not started yet: no offer
        return view
    return view.with_offer(state)


async def wait_for_view(
    handle: WorkflowHandle[Any, Any], pred: Callable[[OrderView], bool], *, within: float = 30.0
) -> OrderView:
    deadline = asyncio.get_running_loop().time() + within
    last: OrderView | None = None
    while True:
        with contextlib.suppress(Exception):
            last = await view_of(handle)
            if pred(last):
                return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached in {within}s; last view: {last}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def order_stack(
    client: Client,
    db_url: str,
    psp_db: Path,
    *,
    psp_app: Any = None,
    merchant_url: str | None = None,
) -> AsyncIterator[Stack]:
    """Workers for the order and dispatch roles on fresh queues, talking to the real PSP
    simulator in-process (ASGI transport) and to the real database at ``db_url``, and dispatch
    shard 0 (its task queue and its zone matcher service, on the Redis at
    ``TRADEFLOW_TEST_REDIS_URL`` under a key prefix of its own).

    ``merchant_url``: where merchant notifications go (``MERCHANT_URL`` is the simulator's
    merchant endpoint); None, the default, skips them."""
    from psp.app import create_app

    app = psp_app or create_app(psp_db, webhook_url=None, webhook_secret="test-secret")
    engine = make_engine(db_url)
    psp_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://psp")
    suffix = uuid.uuid4().hex[:8]
    matching = dispatch_settings(suffix)
    redis = matching["dispatch_redis"]
    deps = Dependencies(
        engine=engine, http=psp_http, psp_url="http://psp", merchant_url=merchant_url, **matching
    )
    stack = Stack(client, engine, psp_http, f"orders-{suffix}", f"dispatch-{suffix}", merchant_url)
    try:
        async with serving(stack, deps):
            try:
                yield stack
            finally:
                await stack.terminate_leftovers()
    finally:
        await redis.aclose()
        await psp_http.aclose()
        await engine.dispose()


def dispatch_settings(suffix: str) -> dict[str, Any]:
    """The ``Dependencies`` fields of a test stack's zone matcher: the test Redis, a key prefix
    of its own, a short window."""
    return {
        "dispatch_redis": make_redis(REDIS_URL),
        "dispatch_prefix": f"stack-{suffix}:",
        "dispatch_window_s": DISPATCH_WINDOW_S,
    }


@contextlib.asynccontextmanager
async def serving(stack: Stack, deps: Dependencies) -> AsyncIterator[None]:
    """The workers of ``stack``'s order and dispatch queues, and dispatch shard 0 with its
    zone matcher, running on ``deps`` while the block runs."""
    workers = build_workers(
        stack.client,
        deps,
        roles={"orders": stack.orders_queue, "dispatch": stack.dispatch_queue},
        dispatch_shards=["0"],
    )
    async with dispatch_shard(deps), contextlib.AsyncExitStack() as es:
        for w in workers:
            await es.enter_async_context(w)
        yield


@contextlib.asynccontextmanager
async def dispatch_shard(deps: Dependencies) -> AsyncIterator[None]:
    """Dispatch shard 0's zone matcher service for ``deps`` while the block runs (what
    ``worker.py --dispatch-shards 0`` runs beside its workers); its keys are deleted after."""
    services = deps.shard_services(["0"], lock_urls=[REDIS_URL], lease_ttl_s=LEASE_TTL_S)
    matchers = [asyncio.create_task(svc.run()) for svc in services]
    try:
        yield
    finally:
        await asyncio.gather(*(svc.stop() for svc in services), return_exceptions=True)
        await asyncio.gather(*matchers, return_exceptions=True)
        redis = deps.dispatch_redis
        if redis is not None:
            keys = [k async for k in redis.scan_iter(f"{deps.dispatch_prefix}*")]
            if keys:
                await redis.delete(*keys)
