"""Drive real orders through every path of the saga: dev tooling shared by tests and the CLI.

``Stack`` runs the order and dispatch workers on fresh task queues against a real database and
the PSP simulator in-process; the workflow tests drive it on the time-skipping server.

Each scenario below drives one path of the saga to its end on a ``Stack`` and returns the ids
of the workflows it ran (order, then payment and delivery when the path reaches them).
``tradeflow history record`` runs them on the real dev server and keeps each history for the
replay tests, so the dev server's clock is real: every timeout that a scenario lets fire is a
second or two, and every timeout it does not want to fire is generous.

Scenarios share one database and one set of workers: each seeds its own SKU and couriers under
ids unique to the run, and takes its couriers off shift when it ends, so the next scenario's
nearest courier is its own (and ``no_courier`` finds nobody).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Table, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from domain.messages import (
    CancelRequest,
    CancelResult,
    CheckoutInput,
    CourierEvent,
    CourierEventResult,
    DeliveryAddress,
    OrderLine,
    OrderTimeouts,
    OrderView,
    PaymentOutcome,
)
from domain.money import DELIVERY_FEE_CENTS
from domain.names import (
    DELIVERY_WORKFLOW,
    ORDER_WORKFLOW,
    PAYMENT_WORKFLOW,
    QUERY_ORDER,
    SIGNAL_PAYMENT_OUTCOME,
    UPDATE_CANCEL,
    UPDATE_COURIER_EVENT,
    UPDATE_COURIER_RESPONSE,
    delivery_workflow_id,
    order_workflow_id,
    payment_workflow_id,
)
from store.db import make_engine, make_sessionmaker
from store.models import Courier, Product, Stock
from worker import Dependencies, build_workers
from workflows.checkout import OrderWorkflow

MAIN = (31.2304, 121.4737)
C: Table = Courier.__table__  # type: ignore[attr-defined]
S: Table = Stock.__table__  # type: ignore[attr-defined]


@dataclass
class Stack:
    client: Client
    engine: AsyncEngine
    psp: httpx.AsyncClient
    orders_queue: str
    dispatch_queue: str

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
        )

    async def start(self, inp: CheckoutInput) -> WorkflowHandle[Any, OrderView]:
        return await self.client.start_workflow(
            OrderWorkflow.run, inp, id=order_workflow_id(inp.order_id), task_queue=self.orders_queue
        )

    async def courier_says(self, order_id: str, courier_id: str, type_: str) -> CourierEventResult:
        if type_ in ("accepted", "declined"):
            wf_id, update_name = delivery_workflow_id(order_id), UPDATE_COURIER_RESPONSE
        else:
            wf_id, update_name = order_workflow_id(order_id), UPDATE_COURIER_EVENT
        return await self.client.get_workflow_handle(wf_id).execute_update(
            update_name, CourierEvent(courier_id, type_), result_type=CourierEventResult
        )


async def view_of(handle: WorkflowHandle[Any, Any]) -> OrderView:
    return await handle.query(QUERY_ORDER, result_type=OrderView)


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
    client: Client, db_url: str, psp_db: Path, *, psp_app: Any = None
) -> AsyncIterator[Stack]:
    """Workers for the order and dispatch roles on fresh queues, talking to the real PSP
    simulator in-process (ASGI transport) and to the real database at ``db_url``."""
    from psp.app import create_app

    app = psp_app or create_app(psp_db, webhook_url=None, webhook_secret="test-secret")
    engine = make_engine(db_url)
    psp_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://psp")
    deps = Dependencies(engine=engine, http=psp_http, psp_url="http://psp")
    suffix = uuid.uuid4().hex[:8]
    stack = Stack(client, engine, psp_http, f"orders-{suffix}", f"dispatch-{suffix}")
    workers = build_workers(
        client, deps, roles={"orders": stack.orders_queue, "dispatch": stack.dispatch_queue}
    )
    async with contextlib.AsyncExitStack() as es:
        for w in workers:
            await es.enter_async_context(w)
        try:
            yield stack
        finally:
            pass
    await psp_http.aclose()
    await engine.dispose()


# ------------------------------------------------------------------------------ scenarios

ScenarioFn = Callable[[Stack], Awaitable[list[str]]]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: ScenarioFn
    workflows: tuple[str, ...]
    """Workflow types the path runs, in the order ``run`` returns their ids."""


SCENARIOS: dict[str, Scenario] = {}
"""Every path of the saga, by name, in the order ``tradeflow history record`` runs them."""


class ScenarioFailed(Exception):
    """The order did not take the path the scenario drives it along."""


def scenario(*workflows: str) -> Callable[[ScenarioFn], ScenarioFn]:
    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[fn.__name__] = Scenario(fn.__name__, fn, workflows)
        return fn

    return register


PRICE = 1299

# The dev server runs in real time: timeouts a path lets fire are short, the others generous
# (a timer that does not fire costs nothing, and a slow machine must not change the path).
PATIENT = OrderTimeouts(payment_timeout_s=60, offer_timeout_s=30, max_offers=2)


def _run_id(name: str) -> str:
    return f"{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"


def _ids(order_id: str, *workflows: str) -> list[str]:
    by_type = {
        ORDER_WORKFLOW: order_workflow_id,
        PAYMENT_WORKFLOW: payment_workflow_id,
        DELIVERY_WORKFLOW: delivery_workflow_id,
    }
    return [by_type[w](order_id) for w in workflows]


def _expect(view: OrderView, status: str, reason: str | None = None) -> None:
    if (view.status, view.failure_reason) != (status, reason):
        raise ScenarioFailed(
            f"order {view.order_id} ended {view.status}/{view.failure_reason},"
            f" expected {status}/{reason}"
        )


@contextlib.asynccontextmanager
async def _couriers(stack: Stack, run: str, *km_north: float) -> AsyncIterator[list[str]]:
    """Couriers for one run, nearest first, taken off shift when the run ends."""
    ids = [f"k-{run}-{i}" for i in range(1, len(km_north) + 1)]
    for courier_id, km in zip(ids, km_north, strict=True):
        await stack.seed_courier(courier_id, km)
    try:
        yield ids
    finally:
        await stack.off_shift(*ids)


async def _order(
    stack: Stack, run: str, *, quantity: int = 1, token: str = "tok_ok", timeouts: OrderTimeouts
) -> tuple[CheckoutInput, WorkflowHandle[Any, OrderView]]:
    sku = f"SKU-{run}"
    await stack.seed_product(sku, PRICE, 5)
    inp = stack.checkout(
        [(sku, quantity, PRICE)], token=token, timeouts=timeouts, order_id=f"o-{run}"
    )
    return inp, await stack.start(inp)


async def _until_offered(handle: WorkflowHandle[Any, OrderView], courier_id: str) -> None:
    await wait_for_view(handle, lambda v: v.delivery.offered_to == courier_id)


async def _cancel(handle: WorkflowHandle[Any, OrderView], reason: str) -> CancelResult:
    return await handle.execute_update(
        UPDATE_CANCEL, CancelRequest(reason), result_type=CancelResult
    )


async def _accept_and_deliver(
    stack: Stack, inp: CheckoutInput, handle: WorkflowHandle[Any, OrderView], courier_id: str
) -> OrderView:
    await _until_offered(handle, courier_id)
    await stack.courier_says(inp.order_id, courier_id, "accepted")
    await stack.courier_says(inp.order_id, courier_id, "picked_up")
    await wait_for_view(handle, lambda v: v.status == "OUT_FOR_DELIVERY")
    await stack.courier_says(inp.order_id, courier_id, "delivered")
    return await handle.result()


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def happy_path(stack: Stack) -> list[str]:
    """Authorized, offered to the nearest courier, accepted, picked up (captured), delivered."""
    run = _run_id("happy_path")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, quantity=2, timeouts=PATIENT)
        _expect(await _accept_and_deliver(stack, inp, h, courier), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW)
async def out_of_stock(stack: Stack) -> list[str]:
    """One line cannot be reserved: every tried line is cancelled, FAILED/OUT_OF_STOCK."""
    run = _run_id("out_of_stock")
    sku, scarce = f"SKU-{run}", f"SKU-{run}-scarce"
    await stack.seed_product(sku, PRICE, 5)
    await stack.seed_product(scarce, 250, 1)
    inp = stack.checkout([(sku, 1, PRICE), (scarce, 3, 250)], timeouts=PATIENT, order_id=f"o-{run}")
    _expect(await (await stack.start(inp)).result(), "FAILED", "OUT_OF_STOCK")
    return _ids(inp.order_id, ORDER_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW)
async def payment_declined(stack: Stack) -> list[str]:
    """The card is declined at authorization: stock is returned, FAILED/PAYMENT_DECLINED."""
    run = _run_id("payment_declined")
    inp, h = await _order(stack, run, token="tok_decline", timeouts=PATIENT)
    _expect(await h.result(), "FAILED", "PAYMENT_DECLINED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW)
async def payment_timeout(stack: Stack) -> list[str]:
    """The customer never completes 3-D Secure: the payment timer fires, FAILED/PAYMENT_TIMEOUT."""
    run = _run_id("payment_timeout")
    timeouts = OrderTimeouts(payment_timeout_s=2, offer_timeout_s=30, max_offers=2)
    inp, h = await _order(stack, run, token="tok_action_never", timeouts=timeouts)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    _expect(await h.result(), "FAILED", "PAYMENT_TIMEOUT")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def payment_after_customer_action(stack: Stack) -> list[str]:
    """3-D Secure: the PSP's webhook says the customer completed it; paid, then delivered."""
    run = _run_id("payment_after_customer_action")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, token="tok_action_never", timeouts=PATIENT)
        view = await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
        payment_id = view.payment.payment_id
        r = await stack.psp.post(
            f"/v1/test/payment_intents/{payment_id}/complete", json={"outcome": "succeeded"}
        )
        r.raise_for_status()
        # What the webhook route does with the PSP's event, sent twice as webhooks may be.
        outcome = PaymentOutcome(
            f"evt-{run}", "payment_intent.succeeded", payment_id or "", view.amounts.total_cents
        )
        payment = stack.client.get_workflow_handle(payment_workflow_id(inp.order_id))
        for _ in range(2):
            await payment.signal(SIGNAL_PAYMENT_OUTCOME, outcome)
        _expect(await _accept_and_deliver(stack, inp, h, courier), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW)
async def cancel_awaiting_payment(stack: Stack) -> list[str]:
    """Cancelled while waiting for the customer: payment aborted, intent voided, CANCELLED."""
    run = _run_id("cancel_awaiting_payment")
    inp, h = await _order(stack, run, token="tok_action_never", timeouts=PATIENT)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    await _cancel(h, "changed my mind")
    _expect(await h.result(), "CANCELLED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def cancel_before_pickup(stack: Stack) -> list[str]:
    """Cancelled after a courier accepted: authorization voided, stock returned, courier freed."""
    run = _run_id("cancel_before_pickup")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, quantity=2, timeouts=PATIENT)
        await _until_offered(h, courier)
        await stack.courier_says(inp.order_id, courier, "accepted")
        await wait_for_view(h, lambda v: v.status == "COURIER_ASSIGNED")
        await _cancel(h, "changed my mind")
        _expect(await h.result(), "CANCELLED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def cancel_while_dispatching(stack: Stack) -> list[str]:
    """Cancelled while a courier holds the offer: dispatch is cancelled and frees the courier."""
    run = _run_id("cancel_while_dispatching")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, timeouts=PATIENT)
        await _until_offered(h, courier)
        await _cancel(h, "changed my mind")
        _expect(await h.result(), "CANCELLED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def cancel_after_pickup_refused(stack: Stack) -> list[str]:
    """A cancel after pick-up is refused by the validator; the order is delivered."""
    run = _run_id("cancel_after_pickup_refused")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, timeouts=PATIENT)
        await _until_offered(h, courier)
        await stack.courier_says(inp.order_id, courier, "accepted")
        await stack.courier_says(inp.order_id, courier, "picked_up")
        try:
            await _cancel(h, "too late")
        except WorkflowUpdateFailedError as e:
            if not (isinstance(e.cause, ApplicationError) and e.cause.type == "NotCancellable"):
                raise
        else:
            raise ScenarioFailed("a cancel after pick-up was accepted")
        await wait_for_view(h, lambda v: v.status == "OUT_FOR_DELIVERY")
        await stack.courier_says(inp.order_id, courier, "delivered")
        _expect(await h.result(), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def offer_timeout_reoffer(stack: Stack) -> list[str]:
    """The nearest courier lets the offer lapse; the next one accepts and delivers."""
    run = _run_id("offer_timeout_reoffer")
    # Every offer gets this long, the accepted one too: short enough to wait out, long enough
    # for the driver to answer the second offer.
    timeouts = OrderTimeouts(payment_timeout_s=60, offer_timeout_s=3, max_offers=2)
    async with _couriers(stack, run, 0.5, 3.0) as (silent, willing):
        inp, h = await _order(stack, run, timeouts=timeouts)
        await _until_offered(h, silent)
        _expect(await _accept_and_deliver(stack, inp, h, willing), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def offer_declined(stack: Stack) -> list[str]:
    """The nearest courier declines; the next one accepts and delivers."""
    run = _run_id("offer_declined")
    async with _couriers(stack, run, 0.5, 3.0) as (busy, willing):
        inp, h = await _order(stack, run, timeouts=PATIENT)
        await _until_offered(h, busy)
        await stack.courier_says(inp.order_id, busy, "declined")
        _expect(await _accept_and_deliver(stack, inp, h, willing), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
async def no_courier(stack: Stack) -> list[str]:
    """Nobody is on shift: dispatch gives up, authorization voided, FAILED/NO_COURIER."""
    run = _run_id("no_courier")
    timeouts = OrderTimeouts(payment_timeout_s=60, offer_timeout_s=1, max_offers=2)
    inp, h = await _order(stack, run, timeouts=timeouts)
    _expect(await h.result(), "FAILED", "NO_COURIER")
    return _ids(inp.order_id, ORDER_WORKFLOW, PAYMENT_WORKFLOW, DELIVERY_WORKFLOW)
