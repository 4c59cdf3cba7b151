"""Drive real orders through every path of the saga, on a ``Stack`` (tests/support/stack.py):
dev tooling shared by the tests and ``tradeflow history record`` (tests/support/record.py).

Each scenario below drives one path to its end on a ``Stack`` and returns the ids of the
workflows it started itself (an order with its payment and delivery, a refund, a notification,
a sweep); ``tradeflow history record`` adds every child those started (abandoned merchant
notifications too), runs them on the real dev server and keeps each history for the
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
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import text
from temporalio.client import (
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError

from domain.errors import ALREADY_APPLIED
from domain.messages import (
    CancelRequest,
    CancelResult,
    CheckoutInput,
    MerchantEvent,
    NotificationOutcome,
    OrderTimeouts,
    OrderView,
    PaymentInput,
    PaymentOutcome,
    PaymentOutcomeResult,
    RefundView,
    RepairRequest,
    RepairResult,
    ReservationKey,
    SweepInput,
    SweepReport,
)
from domain.money import DELIVERY_FEE_CENTS
from domain.names import (
    ACT_REQUEST_MATCH,
    ACT_WITHDRAW_MATCH,
    DELIVERY_WORKFLOW,
    NOTIFY_WORKFLOW,
    ORDER_WORKFLOW,
    PAYMENT_WORKFLOW,
    RECONCILE_WORKFLOW,
    REFUND_WORKFLOW,
    SIGNAL_PAYMENT_OUTCOME,
    SWEEP_WORKFLOW,
    UPDATE_CANCEL,
    UPDATE_PAYMENT_OUTCOME,
    UPDATE_REPAIR,
    delivery_workflow_id,
    notify_workflow_id,
    order_workflow_id,
    payment_workflow_id,
    refund_workflow_id,
)
from domain.status import MerchantEventType, OrderStatus
from store.db import make_sessionmaker
from tests.support.stack import Stack, view_of, wait_for_view
from workflows.payment import PaymentWorkflow

if TYPE_CHECKING:
    from api.state import AppState

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
LOCAL_ACTIVITY_MARKER = "core_local_activity"
"""The marker a local activity leaves in history (the SDK core's name for it)."""

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


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
async def happy_path(stack: Stack) -> list[str]:
    """Authorized, offered to the nearest courier, accepted, picked up (captured), delivered."""
    run = _run_id("happy_path")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, quantity=2, timeouts=PATIENT)
        _expect(await _accept_and_deliver(stack, inp, h, courier), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


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


@scenario(ORDER_WORKFLOW)
async def payment_declined(stack: Stack) -> list[str]:
    """The card is declined at authorization: stock is returned, FAILED/PAYMENT_DECLINED."""
    run = _run_id("payment_declined")
    inp, h = await _order(stack, run, token="tok_decline", timeouts=PATIENT)
    _expect(await h.result(), "FAILED", "PAYMENT_DECLINED")
    return _ids(inp.order_id, ORDER_WORKFLOW)


@scenario(ORDER_WORKFLOW)
async def payment_timeout(stack: Stack) -> list[str]:
    """The customer never completes 3-D Secure: the payment timer fires, FAILED/PAYMENT_TIMEOUT."""
    run = _run_id("payment_timeout")
    timeouts = OrderTimeouts(payment_timeout_s=2, offer_timeout_s=30, max_offers=2)
    inp, h = await _order(stack, run, token="tok_action_never", timeouts=timeouts)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    _expect(await h.result(), "FAILED", "PAYMENT_TIMEOUT")
    return _ids(inp.order_id, ORDER_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
async def payment_after_customer_action(stack: Stack) -> list[str]:
    """3-D Secure: the PSP's webhook says the customer completed it; paid, then delivered."""
    run = _run_id("payment_after_customer_action")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, token="tok_action_never", timeouts=PATIENT)
        view = await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
        payment_id = await _complete_at_psp(stack, view.payment.payment_id)
        # What the webhook route does with the PSP's event, sent twice as webhooks may be:
        # the order takes the first and refuses the repeat (no history).
        outcome = PaymentOutcome(
            f"evt-{run}", "payment_intent.succeeded", payment_id, view.amounts.total_cents
        )
        await h.execute_update(UPDATE_PAYMENT_OUTCOME, outcome, result_type=PaymentOutcomeResult)
        try:
            await h.execute_update(
                UPDATE_PAYMENT_OUTCOME, outcome, result_type=PaymentOutcomeResult
            )
            raise ScenarioFailed("the order took the same PSP event twice")
        except WorkflowUpdateFailedError as e:
            if not (isinstance(e.cause, ApplicationError) and e.cause.type == ALREADY_APPLIED):
                raise
        _expect(await _accept_and_deliver(stack, inp, h, courier), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


async def _complete_at_psp(stack: Stack, payment_id: str | None) -> str:
    """The customer completes the PSP's challenge for ``payment_id``."""
    if not payment_id:
        raise ScenarioFailed("the payment waits for the customer without an intent")
    r = await stack.psp.post(
        f"/v1/test/payment_intents/{payment_id}/complete", json={"outcome": "succeeded"}
    )
    r.raise_for_status()
    return payment_id


@scenario(PAYMENT_WORKFLOW)
async def payment_child_after_customer_action(stack: Stack) -> list[str]:
    """The payment child that orders started before ``PATCH_INLINE_PAYMENT`` run (started
    here on its own): 3-D Secure, then the PSP's word as a signal, twice; AUTHORIZED."""
    run = _run_id("payment_child_after_customer_action")
    order_id = f"o-{run}"
    handle = await stack.client.start_workflow(
        PaymentWorkflow.run,
        PaymentInput(
            order_id=order_id,
            customer_id=f"c-{run}",
            amount_cents=PRICE + DELIVERY_FEE_CENTS,
            currency="USD",
            token="tok_action_never",
            payment_timeout_s=PATIENT.payment_timeout_s,
            parent_workflow_id=order_workflow_id(order_id),  # none: the progress note is lost
        ),
        id=payment_workflow_id(order_id),
        task_queue=stack.orders_queue,
    )
    payment_id = ""
    for _ in range(500):  # until the PSP holds the intent, waiting for the customer
        r = await stack.psp.get("/v1/payment_intents", params={"order_id": order_id})
        r.raise_for_status()
        if items := r.json()["items"]:
            payment_id = items[0]["id"]
            break
        await asyncio.sleep(0.02)
    await _complete_at_psp(stack, payment_id)
    outcome = PaymentOutcome(
        f"evt-{run}", "payment_intent.succeeded", payment_id, PRICE + DELIVERY_FEE_CENTS
    )
    for _ in range(2):
        await handle.signal(SIGNAL_PAYMENT_OUTCOME, outcome)
    result = await handle.result()
    if result.status != "AUTHORIZED":
        raise ScenarioFailed(f"payment {order_id}: {result.status} ({result.detail})")
    return [payment_workflow_id(order_id)]


@scenario(ORDER_WORKFLOW)
async def cancel_awaiting_payment(stack: Stack) -> list[str]:
    """Cancelled while waiting for the customer: payment aborted, intent voided, CANCELLED."""
    run = _run_id("cancel_awaiting_payment")
    inp, h = await _order(stack, run, token="tok_action_never", timeouts=PATIENT)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    await _cancel(h, "changed my mind")
    _expect(await h.result(), "CANCELLED")
    return _ids(inp.order_id, ORDER_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
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
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
async def cancel_while_dispatching(stack: Stack) -> list[str]:
    """Cancelled while a courier holds the offer: dispatch is cancelled and frees the courier."""
    run = _run_id("cancel_while_dispatching")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, timeouts=PATIENT)
        await _until_offered(h, courier)
        await _cancel(h, "changed my mind")
        _expect(await h.result(), "CANCELLED")
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
async def outside_cancel_while_dispatching(stack: Stack) -> list[str]:
    """Cancelled from the UI while a courier holds the offer: the dispatch frees whichever
    courier it bound, the saga compensates to the end, the run closes as cancelled."""
    run = _run_id("outside_cancel_while_dispatching")
    async with _couriers(stack, run, 0.5) as (courier,):
        inp, h = await _order(stack, run, timeouts=PATIENT)
        await _until_offered(h, courier)
        await h.cancel()
        try:
            await h.result()
        except WorkflowFailureError as e:
            if not isinstance(e.cause, TemporalCancelledError):
                raise
        else:
            raise ScenarioFailed("an outside cancel did not close the run as cancelled")
        _expect(await view_of(h), "CANCELLED")
        if await stack.courier(courier) != (None, None):
            raise ScenarioFailed(f"courier {courier} is still bound to the cancelled order")
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


def activities_in(history: WorkflowHistory) -> list[str]:
    """The activity types a history ran, regular (scheduled) and local (their markers)."""
    names: list[str] = []
    for e in history.events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            names.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif (
            e.HasField("marker_recorded_event_attributes")
            and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        ):
            [data] = e.marker_recorded_event_attributes.details["data"].payloads
            names.append(json.loads(data.data)["activity_type"])
    return names


async def _while_matching(stack: Stack, order_id: str) -> None:
    """Until the order's delivery waits in ``request_match`` for its zone matcher."""
    delivery = stack.client.get_workflow_handle(delivery_workflow_id(order_id))
    for _ in range(600):
        with contextlib.suppress(Exception):
            desc = await delivery.describe()
            if any(
                a.activity_type.name == ACT_REQUEST_MATCH
                for a in desc.raw_description.pending_activities
            ):
                return
        await asyncio.sleep(0.02)
    raise ScenarioFailed("the delivery never waited for its zone matcher")


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
async def cancel_while_matching(stack: Stack) -> list[str]:
    """Cancelled while its delivery waits for the zone matcher (nobody free): the delivery
    withdraws the order from the zone's pending set and frees any courier an offer reached
    meanwhile (``withdraw_match``), the saga compensates."""
    run = _run_id("cancel_while_matching")
    inp, h = await _order(stack, run, timeouts=PATIENT)
    await _while_matching(stack, inp.order_id)
    await _cancel(h, "changed my mind")
    _expect(await h.result(), "CANCELLED")
    history = await h._client.get_workflow_handle(
        delivery_workflow_id(inp.order_id)
    ).fetch_history()
    ran = activities_in(history)
    if ACT_WITHDRAW_MATCH not in ran:
        raise ScenarioFailed(f"the cancel did not withdraw the match: {ran}")
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW)
async def needs_attention_repaired(stack: Stack) -> list[str]:
    """A compensation is refused for good (the fence row was changed outside), the order
    parks in NEEDS_ATTENTION; the operator fixes the row and repairs it: CANCELLED."""
    run = _run_id("needs_attention_repaired")
    inp, h = await _order(stack, run, token="tok_action_never", timeouts=PATIENT)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")

    async def fence(state: str) -> None:
        async with stack.engine.begin() as c:
            await c.execute(
                text("UPDATE reservations SET state = :s WHERE order_id = :o"),
                {"s": state, "o": inp.order_id},
            )

    await fence("CONFIRMED")
    await _cancel(h, "changed my mind")
    await wait_for_view(h, lambda v: v.status == "NEEDS_ATTENTION")
    await fence("TRIED")
    result = await h.execute_update(
        UPDATE_REPAIR,
        RepairRequest("fence row restored", operator="scenario"),
        result_type=RepairResult,
    )
    if result.remaining:
        raise ScenarioFailed(f"repair left {result.remaining}")
    _expect(await h.result(), "CANCELLED")
    return _ids(inp.order_id, ORDER_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
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
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
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
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
async def offer_declined(stack: Stack) -> list[str]:
    """The nearest courier declines; the next one accepts and delivers."""
    run = _run_id("offer_declined")
    async with _couriers(stack, run, 0.5, 3.0) as (busy, willing):
        inp, h = await _order(stack, run, timeouts=PATIENT)
        await _until_offered(h, busy)
        await stack.courier_says(inp.order_id, busy, "declined")
        _expect(await _accept_and_deliver(stack, inp, h, willing), "DELIVERED")
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW)
async def no_courier(stack: Stack) -> list[str]:
    """Nobody is on shift: dispatch gives up, authorization voided, FAILED/NO_COURIER."""
    run = _run_id("no_courier")
    timeouts = OrderTimeouts(payment_timeout_s=60, offer_timeout_s=1, max_offers=2)
    inp, h = await _order(stack, run, timeouts=timeouts)
    _expect(await h.result(), "FAILED", "NO_COURIER")
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


# ------------------------------------------------------------------- refunds, notifications


async def _delivered(
    stack: Stack, run: str, *, quantity: int = 1, notify_merchant: bool = False
) -> CheckoutInput:
    """A delivered (so captured) order of ``quantity`` units of ``SKU-<run>``."""
    sku = f"SKU-{run}"
    await stack.seed_product(sku, PRICE, 5)
    async with _couriers(stack, run, 0.5) as (courier,):
        inp = stack.checkout(
            [(sku, quantity, PRICE)],
            timeouts=PATIENT,
            order_id=f"o-{run}",
            notify_merchant=notify_merchant,
        )
        _expect(await _accept_and_deliver(stack, inp, await stack.start(inp), courier), "DELIVERED")
    return inp


async def _request_refund(
    stack: Stack,
    order_id: str,
    amount_cents: int,
    *,
    restock: tuple[tuple[str, int], ...] = (),
    merchant_configured: bool = True,
) -> str:
    """What ``POST /v1/orders/{order_id}/refunds`` does, without the HTTP around it: the API's
    own service admits the refund (``store.refunds.admit``) and starts ``RefundWorkflow``.
    ``merchant_configured``: the API has the stack's merchant webhook URL in its settings, so
    the refund tells the merchant once it succeeded."""
    from api.routes.refunds import RefundBody, RefundsService, RestockLineIn

    state = SimpleNamespace(
        settings=SimpleNamespace(
            merchant_webhook_url=stack.merchant_url if merchant_configured else None
        ),
        temporal=SimpleNamespace(client=stack.client),
        orders_task_queue=stack.orders_queue,
    )
    body = RefundBody(
        amount_cents=amount_cents,
        reason="recorded scenario",
        restock=[RestockLineIn(sku=sku, quantity=q) for sku, q in restock] or None,
    )
    async with make_sessionmaker(stack.engine)() as session:
        requested = await RefundsService(cast("AppState", state)).request(
            session, order_id, body, key=uuid.uuid4().hex
        )
    if not requested.created or requested.refund["status"] != "PENDING":
        raise ScenarioFailed(f"refund of {order_id} not admitted: {requested.refund}")
    return str(requested.refund["refund_id"])


async def _refund_result(stack: Stack, refund_id: str) -> RefundView:
    handle = stack.client.get_workflow_handle(refund_workflow_id(refund_id), result_type=RefundView)
    return await handle.result()


def _expect_refund(refund: RefundView, status: str, reason: str | None = None) -> None:
    if (refund.status, refund.failure_reason) != (status, reason):
        raise ScenarioFailed(
            f"refund {refund.refund_id} ended {refund.status}/{refund.failure_reason},"
            f" expected {status}/{reason}"
        )


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW, REFUND_WORKFLOW, NOTIFY_WORKFLOW)
async def refund_full(stack: Stack) -> list[str]:
    """A delivered order is refunded in full through the API's path: checked at the PSP,
    refunded, recorded SUCCEEDED, nothing restocked; the merchant webhook is configured, so
    the refund starts its ``refund.succeeded`` notification as an abandoned child."""
    run = _run_id("refund_full")
    inp = await _delivered(stack, run)
    total = PRICE + DELIVERY_FEE_CENTS
    refund_id = await _request_refund(stack, inp.order_id, total)
    _expect_refund(await _refund_result(stack, refund_id), "SUCCEEDED")
    if await stack.ledger(inp.order_id) != [
        ("authorize", total),
        ("capture", total),
        ("refund", total),
    ]:
        raise ScenarioFailed(f"PSP ledger of {inp.order_id}: {await stack.ledger(inp.order_id)}")
    event_id = f"{refund_id}.succeeded"
    if (outcome := await _notification(stack, event_id)).status != "DELIVERED":
        raise ScenarioFailed(f"notification {event_id}: {outcome}")
    return [
        *_ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW),
        refund_workflow_id(refund_id),
    ]


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW, REFUND_WORKFLOW)
async def refund_partial_with_restock(stack: Stack) -> list[str]:
    """One of two delivered units is refunded and put back on sale before SUCCEEDED; no
    merchant webhook configured at the API, so no notification."""
    run = _run_id("refund_partial_with_restock")
    inp = await _delivered(stack, run, quantity=2)
    sku = inp.lines[0].sku
    refund_id = await _request_refund(
        stack, inp.order_id, PRICE, restock=((sku, 1),), merchant_configured=False
    )
    _expect_refund(await _refund_result(stack, refund_id), "SUCCEEDED")
    if (stock := await stack.stock(sku)) != (4, 0, 1):  # 5 seeded, 2 sold, 1 back on sale
        raise ScenarioFailed(f"{sku} after the restock: (available, reserved, sold) = {stock}")
    return [
        *_ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW),
        refund_workflow_id(refund_id),
    ]


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW, REFUND_WORKFLOW)
async def refund_exceeds_at_psp(stack: Stack) -> list[str]:
    """Refunded at the PSP's dashboard first: tradeflow's refund fits its own cap, not what the
    PSP has left, so it ends FAILED/exceeds_captured_at_psp and its amount is released."""
    from workflows.refund import EXCEEDS_CAPTURED_AT_PSP

    run = _run_id("refund_exceeds_at_psp")
    inp = await _delivered(stack, run)
    order = await stack.read_model(inp.order_id)
    payment_id = order["view"]["payment"]["payment_id"]
    r = await stack.psp.post(
        "/v1/refunds",
        json={"payment_id": payment_id, "amount_cents": 1000},
        headers={"Idempotency-Key": f"dashboard-{run}"},
    )
    r.raise_for_status()
    refund_id = await _request_refund(stack, inp.order_id, 1000)
    _expect_refund(await _refund_result(stack, refund_id), "FAILED", EXCEEDS_CAPTURED_AT_PSP)
    return [
        *_ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW),
        refund_workflow_id(refund_id),
    ]


async def _merchant_received(stack: Stack, event_id: str) -> None:
    r = await stack.psp.get("/v1/merchant/notifications")
    r.raise_for_status()
    if event_id not in {e["event_id"] for e in r.json()["items"]}:
        raise ScenarioFailed(f"the merchant never received {event_id}")


async def _notification(stack: Stack, event_id: str) -> NotificationOutcome:
    handle = stack.client.get_workflow_handle(
        notify_workflow_id(event_id), result_type=NotificationOutcome
    )
    return await handle.result()


@scenario(ORDER_WORKFLOW, DELIVERY_WORKFLOW, NOTIFY_WORKFLOW)
async def notify_delivered(stack: Stack) -> list[str]:
    """An order with ``notify_merchant``: on PAID it starts the merchant notification as an
    abandoned child, which the merchant endpoint takes on the first try; delivered."""
    run = _run_id("notify_delivered")
    inp = await _delivered(stack, run, notify_merchant=True)
    event_id = f"{inp.order_id}.paid"
    outcome = await _notification(stack, event_id)
    if (outcome.status, outcome.attempts) != ("DELIVERED", 1):
        raise ScenarioFailed(f"notification {event_id}: {outcome}")
    await _merchant_received(stack, event_id)
    # The notification is the order's child: ``record`` finds it in the order's history.
    return _ids(inp.order_id, ORDER_WORKFLOW, DELIVERY_WORKFLOW)


@scenario(NOTIFY_WORKFLOW)
async def notify_retried(stack: Stack) -> list[str]:
    """The merchant answers 503 once: the notification waits out its (here 1 s) backoff on a
    durable timer and is delivered on the second try. Started directly, as the order workflow
    would, since its production schedule begins at 15 s."""
    run = _run_id("notify_retried")
    event_id = f"o-{run}.paid"
    r = await stack.psp.post("/v1/merchant/fail_next", json={"count": 1})
    r.raise_for_status()
    await stack.client.start_workflow(
        NOTIFY_WORKFLOW,
        MerchantEvent(
            event_id=event_id,
            type=MerchantEventType("order.paid"),
            order_id=f"o-{run}",
            amount_cents=PRICE + DELIVERY_FEE_CENTS,
            currency="USD",
            occurred_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            backoff_s=[1.0, 1.0],
        ),
        id=notify_workflow_id(event_id),
        task_queue=stack.orders_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )
    outcome = await _notification(stack, event_id)
    if (outcome.status, outcome.attempts) != ("DELIVERED", 2):
        raise ScenarioFailed(f"notification {event_id}: {outcome}")
    await _merchant_received(stack, event_id)
    return [notify_workflow_id(event_id)]


@scenario(SWEEP_WORKFLOW)
async def inventory_sweep(stack: Stack) -> list[str]:
    """A hold whose order workflow never ran (its history gone) is past its TTL: the sweep
    finds it, sees no running order and releases it through the saga's fenced cancel."""
    from activities.inventory import InventoryActivities

    run = _run_id("inventory_sweep")
    sku, orphan = f"SKU-{run}", f"o-{run}-orphan"
    await stack.seed_product(sku, PRICE, 5)
    inventory = InventoryActivities(sessionmaker=make_sessionmaker(stack.engine))
    await inventory.try_reserve(ReservationKey(orphan, "main", sku, 2))
    async with stack.engine.begin() as conn:  # past any TTL
        await conn.execute(
            text(
                "UPDATE reservations SET created_at = '2000-01-01T00:00:00.000000Z'"
                " WHERE order_id = :o"
            ),
            {"o": orphan},
        )
    sweep_id = f"sweep-{run}"
    report = await stack.client.execute_workflow(
        SWEEP_WORKFLOW,
        SweepInput(ttl_s=600),
        id=sweep_id,
        task_queue=stack.orders_queue,
        result_type=SweepReport,
    )
    if orphan not in report.released_orders or await stack.stock(sku) != (5, 0, 0):
        raise ScenarioFailed(f"sweep did not release {orphan}: {report}")
    return [sweep_id]


# ------------------------------------------------------------------------------ reconciler


async def _stored_while_temporal_is_down(stack: Stack, inp: CheckoutInput) -> None:
    """The row ``POST /v1/orders`` stores before its ``start_workflow`` fails: PENDING, its
    view as of acceptance and its checkout input, and no workflow."""
    from dataclasses import asdict

    from domain.messages import (
        AmountsView,
        DeliveryView,
        ItemView,
        PaymentView,
        TimelineEntry,
        checkout_total_cents,
    )
    from store.orders import insert_order_if_new

    total = checkout_total_cents(inp)
    view = OrderView(
        order_id=inp.order_id,
        workflow_id=order_workflow_id(inp.order_id),
        customer_id=inp.customer_id,
        location_id=inp.location_id,
        status=OrderStatus.PENDING,
        failure_reason=None,
        items=[ItemView(li.sku, li.quantity, li.unit_price_cents) for li in inp.lines],
        currency=inp.currency,
        amounts=AmountsView(total - inp.delivery_fee_cents, inp.delivery_fee_cents, total),
        payment=PaymentView(),
        delivery=DeliveryView(),
        refunds=[],
        timeline=[TimelineEntry(OrderStatus.PENDING, inp.created_at)],
        created_at=inp.created_at,
        updated_at=inp.created_at,
    )
    async with make_sessionmaker(stack.engine)() as session:
        inserted = await insert_order_if_new(
            session,
            row={
                "order_id": inp.order_id,
                "customer_id": inp.customer_id,
                "idempotency_key": f"key-{inp.order_id}",
                "request_hash": "",
                "location_id": inp.location_id,
                "status": "PENDING",
                "failure_reason": None,
                "currency": inp.currency,
                "total_cents": total,
                "seq": 0,
                "view": asdict(view),
                "created_at": inp.created_at,
                "updated_at": inp.created_at,
                "checkout_input": asdict(inp),
            },
        )
        await session.commit()
    if not inserted:
        raise ScenarioFailed(f"order {inp.order_id} was stored already")


async def _refund_stored_while_temporal_is_down(stack: Stack, order_id: str, amount: int) -> str:
    """``POST /v1/orders/{id}/refunds`` with the workflow service down: the API's own service
    admits the refund (PENDING, its amount on the cap), then answers 503."""
    from api.errors import ApiProblem
    from api.routes.refunds import RefundBody, RefundsService

    state = SimpleNamespace(
        settings=SimpleNamespace(merchant_webhook_url=None),
        temporal=SimpleNamespace(client=None),
        orders_task_queue=stack.orders_queue,
    )
    async with make_sessionmaker(stack.engine)() as session:
        try:
            await RefundsService(cast("AppState", state)).request(
                session, order_id, RefundBody(amount_cents=amount, reason="while down"), "down"
            )
        except ApiProblem as e:
            if e.status != 503:
                raise
        else:
            raise ScenarioFailed("a refund was started with the workflow service down")
    async with stack.engine.connect() as c:
        refund_id = (
            await c.execute(
                text("SELECT refund_id FROM refunds WHERE order_id = :o AND status = 'PENDING'"),
                {"o": order_id},
            )
        ).scalar_one()
    return str(refund_id)


@scenario(RECONCILE_WORKFLOW)
async def reconcile(stack: Stack) -> list[str]:
    """One reconcile run (as the ``reconciler`` schedule starts it) over what outages and races
    leave behind: an order stored while Temporal was down (restarted; its card is declined,
    so it ends at once), one stored long ago (failed: its line fenced, FAILED/NOT_STARTED), a
    refund stored while Temporal was down (restarted, SUCCEEDED), a FAILED order whose
    authorization landed after it ended (voided) and a courier bound to it (released)."""
    from dataclasses import replace

    from temporalio.testing import ActivityEnvironment

    from activities.payments import PaymentActivities
    from domain.messages import AuthorizeInput, ReconcileInput, ReconcileReport
    from store import couriers as fleet

    run = _run_id("reconcile")
    sku, scarce = f"SKU-{run}-orphans", f"SKU-{run}-scarce"
    await stack.seed_product(sku, PRICE, 5)
    await stack.seed_product(scarce, PRICE, 1)

    fresh = stack.checkout([(sku, 1, PRICE)], token="tok_decline", order_id=f"o-{run}-fresh")
    await _stored_while_temporal_is_down(stack, fresh)
    old = replace(
        stack.checkout([(sku, 2, PRICE)], order_id=f"o-{run}-old"),
        created_at="2000-01-01T00:00:00.000000Z",
    )
    await _stored_while_temporal_is_down(stack, old)

    delivered = await _delivered(stack, run)
    refund_id = await _refund_stored_while_temporal_is_down(stack, delivered.order_id, PRICE)

    ended = stack.checkout([(scarce, 2, PRICE)], order_id=f"o-{run}-ended")
    _expect(await (await stack.start(ended)).result(), "FAILED", "OUT_OF_STOCK")
    payments = PaymentActivities(
        http=stack.psp, sessionmaker=make_sessionmaker(stack.engine), psp_url="http://psp"
    )
    total = 2 * PRICE + DELIVERY_FEE_CENTS
    await ActivityEnvironment().run(
        payments.authorize_payment,
        AuthorizeInput(ended.order_id, total, "USD", "tok_ok", f"authorize:{ended.order_id}"),
    )
    async with _couriers(stack, f"{run}-stranded", 0.5) as (courier,):
        async with make_sessionmaker(stack.engine)() as s, s.begin():
            await fleet.offer(s, order_id=ended.order_id, courier_id=courier)

        reconcile_id = f"reconcile-{run}"
        report = await stack.client.execute_workflow(
            RECONCILE_WORKFLOW,
            ReconcileInput(grace_s=0, restart_within_s=600),
            id=reconcile_id,
            task_queue=stack.orders_queue,
            result_type=ReconcileReport,
        )
    if (
        report.orders_restarted != [fresh.order_id]
        or report.orders_failed != [old.order_id]
        or report.refunds_restarted != [refund_id]
        or ended.order_id not in report.authorizations_voided
        or report.couriers_released != [courier]
        or report.errors
    ):
        raise ScenarioFailed(f"reconcile did not do what it should: {report}")
    restarted = stack.client.get_workflow_handle(
        order_workflow_id(fresh.order_id), result_type=OrderView
    )
    _expect(await restarted.result(), "FAILED", "PAYMENT_DECLINED")
    _expect_refund(await _refund_result(stack, refund_id), "SUCCEEDED")
    if await stack.stock(sku) != (5, 0, 0):
        raise ScenarioFailed(f"{sku} after the reconcile: {await stack.stock(sku)}")
    return [reconcile_id]
