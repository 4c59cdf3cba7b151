"""Refunds on the time-skipping test server, with the real activities.

Each story first drives a real order to DELIVERED (real workers, a migrated database, the PSP
simulator in-process), then refunds it: admission is the store function the API calls (one
transaction that stores the refund and moves the cap), the money movement is
``RefundWorkflow``. Money is checked on both sides: tradeflow's ``payments`` row and the PSP's
ledger. The admission race runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import CancelledError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from cli.checks import check_ledger
from domain.messages import (
    CheckoutInput,
    OrderView,
    RefundInput,
    RefundView,
    RestockLine,
)
from domain.names import notify_workflow_id, refund_workflow_id
from store import refunds as book
from store.db import make_engine, make_sessionmaker
from store.inventory import begin_snapshot
from tests.support import Stack, order_stack, wait_for_view
from workflows.refund import CANCELLED_BEFORE_SENDING, EXCEEDS_CAPTURED_AT_PSP, RefundWorkflow

PRICE = 1299
FEE = 500
TOTAL = 2 * PRICE + FEE  # two units of SKU-1 and the delivery fee


@pytest.fixture
async def stack(ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with order_stack(ts_env.client, sqlite_url, tmp_path / "psp.db") as s:
        await s.seed_product("SKU-1", PRICE, 5)
        yield s


# ------------------------------------------------------------------------------- helpers


async def _delivered(stack: Stack, quantity: int = 2) -> tuple[CheckoutInput, OrderView]:
    courier = f"k-{uuid.uuid4().hex[:6]}"
    await stack.seed_courier(courier, 1.0)
    inp = stack.checkout([("SKU-1", quantity, PRICE)])
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == courier)
    await stack.courier_says(inp.order_id, courier, "accepted")
    await stack.courier_says(inp.order_id, courier, "picked_up")
    await wait_for_view(h, lambda v: v.status == "OUT_FOR_DELIVERY")
    await stack.courier_says(inp.order_id, courier, "delivered")
    final = await h.result()
    assert final.status == "DELIVERED"
    assert final.amounts.captured_cents == quantity * PRICE + FEE
    await stack.off_shift(courier)
    return inp, final


async def _admit(
    engine: AsyncEngine,
    order_id: str,
    amount_cents: int,
    *,
    key: str | None = None,
    restock: list[RestockLine] | None = None,
    ordered: dict[str, int] | None = None,
    reason: str = "damaged",
) -> book.Admitted:
    """What the API does when a refund is requested (without the HTTP around it)."""
    async with make_sessionmaker(engine)() as s, s.begin():
        return await book.admit(
            s,
            refund_id=f"r_{uuid.uuid4().hex}",
            order_id=order_id,
            idempotency_key=key or uuid.uuid4().hex,
            request_hash=f"{amount_cents}:{reason}:{restock}",
            amount_cents=amount_cents,
            currency="USD",
            reason=reason,
            restock=restock or [],
            ordered=ordered if ordered is not None else {"SKU-1": 2},
        )


async def _start(
    stack: Stack, inp: CheckoutInput, admitted: book.Admitted, *, notify_merchant: bool = False
) -> WorkflowHandle[Any, RefundView]:
    assert admitted.payment_id is not None
    refund = admitted.refund
    return await stack.client.start_workflow(
        RefundWorkflow.run,
        RefundInput(
            refund_id=refund.refund_id,
            order_id=inp.order_id,
            payment_id=admitted.payment_id,
            amount_cents=refund.amount_cents,
            currency=refund.currency,
            location_id=inp.location_id,
            restock=list(refund.restock),
            notify_merchant=notify_merchant,
        ),
        id=refund_workflow_id(refund.refund_id),
        task_queue=stack.orders_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def _refund(
    stack: Stack, inp: CheckoutInput, amount_cents: int, **kw: Any
) -> tuple[book.Admitted, RefundView]:
    admitted = await _admit(stack.engine, inp.order_id, amount_cents, **kw)
    return admitted, await (await _start(stack, inp, admitted)).result()


async def _payment(engine: AsyncEngine, order_id: str) -> tuple[int, int, int]:
    """(captured, refunded, committed) of tradeflow's payments row."""
    async with engine.connect() as c:
        row = (
            await c.execute(
                text(
                    "SELECT captured_cents, refunded_cents, refund_committed_cents"
                    " FROM payments WHERE order_id = :o"
                ),
                {"o": order_id},
            )
        ).one()
    return (row[0], row[1], row[2])


async def _refund_rows(engine: AsyncEngine, order_id: str) -> list[tuple[str, int, str]]:
    async with engine.connect() as c:
        rows = (
            await c.execute(
                text(
                    "SELECT refund_id, amount_cents, status FROM refunds WHERE order_id = :o"
                    " ORDER BY created_at"
                ),
                {"o": order_id},
            )
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


async def _psp_refunds(stack: Stack, order_id: str) -> list[int]:
    return [amount for kind, amount in await stack.ledger(order_id) if kind == "refund"]


async def _activities_run(stack: Stack, refund_id: str) -> list[str]:
    history = await stack.client.get_workflow_handle(refund_workflow_id(refund_id)).fetch_history()
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


async def _faults(stack: Stack, error_rate: float) -> None:
    r = await stack.psp.post("/v1/admin/faults", json={"error_rate": error_rate})
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------------- stories


async def test_full_refund_gives_back_the_capture_and_the_order_stays_delivered(
    stack: Stack,
) -> None:
    inp, order = await _delivered(stack)

    admitted, refund = await _refund(stack, inp, TOTAL)

    assert admitted.created and admitted.refund.status == "PENDING"
    assert refund.status == "SUCCEEDED" and refund.failure_reason is None
    assert refund.amount_cents == TOTAL and refund.refund_id == admitted.refund.refund_id
    assert await _activities_run(stack, refund.refund_id) == [
        "check_refundable_at_psp",
        "send_refund",
        "mark_refund_succeeded",
    ]
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, TOTAL, TOTAL)
    assert await stack.ledger(inp.order_id) == [
        ("authorize", TOTAL),
        ("capture", TOTAL),
        ("refund", TOTAL),
    ]
    intent = (await stack.psp.get(f"/v1/payment_intents/{order.payment.payment_id}")).json()
    assert (intent["amount_received"], intent["amount_refunded"]) == (TOTAL, TOTAL)
    assert (await stack.read_model(inp.order_id))["status"] == "DELIVERED"
    assert await stack.stock("SKU-1") == (3, 0, 2)  # no restock asked, none done


async def test_a_succeeded_refund_notifies_the_merchant_only_when_asked(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    # On the dev server: run on the time-skipping server, this test (the abandoned
    # notification child) left the tests after it (PSP down for minutes, relying on time
    # skipping) timing out; on the real-time server nothing here waits on a timer.
    async with order_stack(dev_env.client, sqlite_url, tmp_path / "psp.db") as stack:
        await stack.seed_product("SKU-1", PRICE, 5)
        await _notifies_only_when_asked(stack)


async def _notifies_only_when_asked(stack: Stack) -> None:
    inp, _ = await _delivered(stack)

    told = await _admit(stack.engine, inp.order_id, 700)
    refund = await (await _start(stack, inp, told, notify_merchant=True)).result()
    assert refund.status == "SUCCEEDED"
    event_id = f"{refund.refund_id}.succeeded"
    child = stack.client.get_workflow_handle(notify_workflow_id(event_id))
    # No merchant URL on this stack's workers: the notification runs and is SKIPPED.
    outcome = await child.result()  # NotificationOutcome, as a dict
    assert (outcome["event_id"], outcome["order_id"], outcome["type"], outcome["status"]) == (
        event_id,
        inp.order_id,
        "refund.succeeded",
        "SKIPPED",
    )
    desc = await child.describe()
    assert desc.parent_id == refund_workflow_id(refund.refund_id)
    async with stack.engine.connect() as c:
        row = (
            await c.execute(
                text("SELECT order_id, type, status FROM notifications WHERE event_id = :e"),
                {"e": event_id},
            )
        ).one()
    assert tuple(row) == (inp.order_id, "refund.succeeded", "SKIPPED")

    silent = await _admit(stack.engine, inp.order_id, 300)
    quiet = await (await _start(stack, inp, silent)).result()
    assert quiet.status == "SUCCEEDED"
    with pytest.raises(RPCError) as e:
        await stack.client.get_workflow_handle(
            notify_workflow_id(f"{quiet.refund_id}.succeeded")
        ).describe()
    assert e.value.status == RPCStatusCode.NOT_FOUND


async def test_partial_refunds_up_to_the_capture_then_one_more_cent_is_refused(
    stack: Stack,
) -> None:
    inp, _ = await _delivered(stack)
    parts = [1000, 1000, TOTAL - 2000]

    for amount in parts:
        _, refund = await _refund(stack, inp, amount)
        assert refund.status == "SUCCEEDED"

    with pytest.raises(book.RefundExceedsCaptured) as refused:
        await _admit(stack.engine, inp.order_id, 1)
    assert refused.value.refundable_cents == 0
    assert [amount for _, amount, _ in await _refund_rows(stack.engine, inp.order_id)] == parts
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, TOTAL, TOTAL)
    assert await _psp_refunds(stack, inp.order_id) == parts


async def test_refund_above_the_capture_is_refused_before_anything_is_stored_or_sent(
    stack: Stack,
) -> None:
    inp, _ = await _delivered(stack)

    with pytest.raises(book.RefundExceedsCaptured) as refused:
        await _admit(stack.engine, inp.order_id, TOTAL + 1)

    assert refused.value.refundable_cents == TOTAL
    assert await _refund_rows(stack.engine, inp.order_id) == []  # rolled back with the cap
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, 0, 0)
    assert await _psp_refunds(stack, inp.order_id) == []


async def test_two_concurrent_refunds_that_together_exceed_the_capture_exactly_one_succeeds(
    stack: Stack,
) -> None:
    inp, _ = await _delivered(stack)
    amount = TOTAL - 100  # either fits alone, both together do not

    outcomes = await asyncio.gather(
        _admit(stack.engine, inp.order_id, amount),
        _admit(stack.engine, inp.order_id, amount),
        return_exceptions=True,
    )

    admitted = [o for o in outcomes if isinstance(o, book.Admitted)]
    refused = [o for o in outcomes if isinstance(o, book.RefundExceedsCaptured)]
    assert (len(admitted), len(refused)) == (1, 1), outcomes
    refund = await (await _start(stack, inp, admitted[0])).result()
    assert refund.status == "SUCCEEDED"
    assert await _psp_refunds(stack, inp.order_id) == [amount]
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, amount, amount)


async def test_same_key_twice_is_one_refund_and_one_psp_refund(stack: Stack) -> None:
    inp, _ = await _delivered(stack)

    first = await _admit(stack.engine, inp.order_id, 700, key="support-ticket-42")
    again = await _admit(stack.engine, inp.order_id, 700, key="support-ticket-42")
    assert first.created and not again.created
    assert again.refund.refund_id == first.refund.refund_id
    h1 = await _start(stack, inp, first)
    h2 = await _start(stack, inp, again)  # a retried API request: USE_EXISTING, same run
    assert h1.result_run_id == h2.result_run_id
    assert (await h1.result()).status == "SUCCEEDED"
    # The activity's own retry after an unknown outcome resends under the same key: the PSP
    # answers with its first response and moves nothing.
    r = await stack.psp.post(
        "/v1/refunds",
        json={"payment_id": first.payment_id, "amount_cents": 700},
        headers={"Idempotency-Key": f"refund:{first.refund.refund_id}"},
    )
    assert r.status_code == 200 and r.headers.get("Idempotent-Replayed") == "true"

    assert await _psp_refunds(stack, inp.order_id) == [700]
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, 700, 700)
    assert len(await _refund_rows(stack.engine, inp.order_id)) == 1
    with pytest.raises(book.IdempotencyKeyReused):
        await _admit(stack.engine, inp.order_id, 701, key="support-ticket-42")


async def skip(env: WorkflowEnvironment, seconds: int, step: int = 30) -> None:
    """Skip ``seconds`` of workflow time in steps: one long ``env.sleep`` is one RPC that runs
    every retry of the skipped span before it answers, and on a loaded machine it can outlast
    the RPC's own timeout ("Timeout expired")."""
    for _ in range(0, seconds, step):
        await env.sleep(min(step, seconds))


async def test_refund_while_the_psp_is_down_for_a_while_succeeds_once_it_is_back(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    inp, _ = await _delivered(stack)
    await _faults(stack, 1.0)
    try:
        admitted = await _admit(stack.engine, inp.order_id, 1500)
        h = await _start(stack, inp, admitted)
        await skip(ts_env, 15 * 60)  # a quarter of an hour of 503s, retried with backoff

        assert await _refund_rows(stack.engine, inp.order_id) == [
            (admitted.refund.refund_id, 1500, "PENDING")
        ]
        assert await _psp_refunds(stack, inp.order_id) == []
        assert await _payment(stack.engine, inp.order_id) == (TOTAL, 0, 1500)  # still held
    finally:
        await _faults(stack, 0.0)

    refund = await h.result()
    assert refund.status == "SUCCEEDED"
    assert await _psp_refunds(stack, inp.order_id) == [1500]
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, 1500, 1500)


async def test_refund_made_outside_tradeflow_counts_and_one_that_no_longer_fits_fails(
    stack: Stack,
) -> None:
    inp, order = await _delivered(stack)
    # A support agent refunds 2000 in the PSP's dashboard; tradeflow's cap does not know.
    r = await stack.psp.post(
        "/v1/refunds",
        json={"payment_id": order.payment.payment_id, "amount_cents": 2000},
        headers={"Idempotency-Key": "dashboard-1"},
    )
    assert r.status_code == 200, r.text

    admitted, refund = await _refund(stack, inp, 2000)  # fits tradeflow's cap, not the PSP's

    assert admitted.created
    assert (refund.status, refund.failure_reason) == ("FAILED", EXCEEDS_CAPTURED_AT_PSP)
    # Decided on the PSP's figures, before anything was sent (not by the PSP refusing it).
    assert await _activities_run(stack, admitted.refund.refund_id) == [
        "check_refundable_at_psp",
        "mark_refund_failed",
    ]
    assert await _psp_refunds(stack, inp.order_id) == [2000]  # only the outside one
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, 0, 0)  # cap released
    # What is really left at the PSP can still be refunded through tradeflow.
    _, rest = await _refund(stack, inp, TOTAL - 2000)
    assert rest.status == "SUCCEEDED"
    assert await _psp_refunds(stack, inp.order_id) == [2000, TOTAL - 2000]


async def test_cancelling_a_refund_before_the_psp_was_asked_releases_its_amount(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    inp, _ = await _delivered(stack)
    await _faults(stack, 1.0)  # the first step (reading the intent) keeps failing
    try:
        admitted = await _admit(stack.engine, inp.order_id, 900)
        h = await _start(stack, inp, admitted)
        await skip(ts_env, 60)
        await h.cancel()  # an operator gives up on it
        with pytest.raises(WorkflowFailureError) as err:
            await h.result()
    finally:
        await _faults(stack, 0.0)

    assert isinstance(err.value.cause, CancelledError)
    row = await _refund_rows(stack.engine, inp.order_id)
    assert row == [(admitted.refund.refund_id, 900, "FAILED")]
    async with make_sessionmaker(stack.engine)() as s:
        stored = await book.get(s, refund_id=admitted.refund.refund_id)
    assert stored is not None and stored.failure_reason == CANCELLED_BEFORE_SENDING
    assert await _payment(stack.engine, inp.order_id) == (TOTAL, 0, 0)
    assert await _psp_refunds(stack, inp.order_id) == []


async def test_restock_returns_units_exactly_once_and_never_more_than_the_order_sold(
    stack: Stack,
) -> None:
    inp, _ = await _delivered(stack)
    assert await stack.stock("SKU-1") == (3, 0, 2)

    admitted, refund = await _refund(stack, inp, PRICE, restock=[RestockLine("SKU-1", 1)])

    assert refund.status == "SUCCEEDED" and refund.restock == [RestockLine("SKU-1", 1)]
    assert await stack.stock("SKU-1") == (4, 0, 1)
    refund_id = admitted.refund.refund_id
    # A retried activity (or a replayed step) finds the fence row and moves nothing.
    async with make_sessionmaker(stack.engine)() as s, s.begin():
        again = await book.restock(
            s,
            refund_id=refund_id,
            order_id=inp.order_id,
            location_id="main",
            sku="SKU-1",
            quantity=1,
        )
    assert again == book.Restocked.ALREADY
    assert await stack.stock("SKU-1") == (4, 0, 1)
    assert await stack.reservations(inp.order_id) == {"SKU-1": "CONFIRMED"}
    assert await stack.reservations(book.restock_fence_id(refund_id)) == {"SKU-1": "RETURNED"}

    # Only one more unit was ordered and not yet given back: asking for two is refused at
    # admission, and the fence refuses it too should anything get past admission.
    with pytest.raises(book.RestockExceedsOrdered):
        await _admit(stack.engine, inp.order_id, PRICE, restock=[RestockLine("SKU-1", 2)])
    with pytest.raises(book.RestockRefused):
        async with make_sessionmaker(stack.engine)() as s, s.begin():
            await book.restock(
                s,
                refund_id="r_rogue",
                order_id=inp.order_id,
                location_id="main",
                sku="SKU-1",
                quantity=2,
            )
    assert await stack.reservations(book.restock_fence_id("r_rogue")) == {}
    assert await stack.stock("SKU-1") == (4, 0, 1)

    _, last = await _refund(stack, inp, PRICE, restock=[RestockLine("SKU-1", 1)])
    assert last.status == "SUCCEEDED"
    assert await stack.stock("SKU-1") == (5, 0, 0)
    # The stock check's invariants hold: sold equals the CONFIRMED units still held.
    async with make_sessionmaker(stack.engine)() as s:
        await begin_snapshot(s)
        report = await check_ledger(s)
    assert report.ok, report.violations


# ----------------------------------------------------------------- admission, both databases


async def _seed_captured(engine: AsyncEngine, order_id: str, captured: int) -> None:
    async with engine.begin() as c:
        await c.execute(
            text(
                "INSERT INTO payments (order_id, payment_id, idempotency_key, status, currency,"
                " amount_cents, authorized_cents, captured_cents, refunded_cents,"
                " refund_committed_cents, updated_at)"
                " VALUES (:o, :p, :k, :st, 'USD', :a, :a, :c, 0, 0, '2026-01-01T00:00:00Z')"
            ),
            {
                "o": order_id,
                "p": f"pi_{order_id}",
                "k": f"authorize:{order_id}",
                "st": "CAPTURED" if captured else "AUTHORIZED",
                "a": 1000,
                "c": captured,
            },
        )


async def test_racing_admissions_never_commit_more_than_the_capture(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await _seed_captured(engine, "o-race", 1000)
        # Ten requests of 300 against 1000 captured, all at once: exactly three fit.
        outcomes = await asyncio.gather(
            *(_admit(engine, "o-race", 300, ordered={}) for _ in range(10)),
            return_exceptions=True,
        )
        admitted = [o for o in outcomes if isinstance(o, book.Admitted)]
        refused = [o for o in outcomes if isinstance(o, book.RefundExceedsCaptured)]
        assert (len(admitted), len(refused)) == (3, 7), outcomes
        assert len(await _refund_rows(engine, "o-race")) == 3
        assert await _payment(engine, "o-race") == (1000, 0, 900)

        # Two at the same instant for the last 100 (and then some): exactly one passes.
        pair = await asyncio.gather(
            _admit(engine, "o-race", 100, ordered={}),
            _admit(engine, "o-race", 100, ordered={}),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in pair) == ["Admitted", "RefundExceedsCaptured"]
        assert await _payment(engine, "o-race") == (1000, 0, 1000)

        # A failed refund gives its amount back, once, however often it is marked.
        loser = admitted[0].refund.refund_id
        for _ in range(2):
            async with make_sessionmaker(engine)() as s, s.begin():
                view = await book.mark_failed(s, refund_id=loser, failure_reason="test")
            assert view.status == "FAILED"
        assert await _payment(engine, "o-race") == (1000, 0, 700)
        # A success is booked once, however often it is marked.
        winner = admitted[1].refund.refund_id
        for _ in range(2):
            async with make_sessionmaker(engine)() as s, s.begin():
                view = await book.mark_succeeded(s, refund_id=winner, psp_refund_id="re_1")
            assert view.status == "SUCCEEDED"
        assert await _payment(engine, "o-race") == (1000, 300, 700)
        # A refund that failed cannot later succeed (and the reverse).
        async with make_sessionmaker(engine)() as s, s.begin():
            assert (await book.mark_succeeded(s, refund_id=loser, psp_refund_id="x")).status == (
                "FAILED"
            )
        assert await _payment(engine, "o-race") == (1000, 300, 700)
    finally:
        await engine.dispose()


async def test_a_refund_whose_sum_with_the_committed_would_overflow_int4_is_refused(
    db_url: str,
) -> None:
    engine = make_engine(db_url)
    try:
        await _seed_captured(engine, "o-big", 1000)
        await _admit(engine, "o-big", 100, ordered={})
        # 100 committed + 2^31-1 asked does not fit in INT4: refused, not a database error.
        with pytest.raises(book.RefundExceedsCaptured):
            await _admit(engine, "o-big", 2**31 - 1, ordered={})
        assert await _payment(engine, "o-big") == (1000, 0, 100)
        assert len(await _refund_rows(engine, "o-big")) == 1  # the refused one left no row
    finally:
        await engine.dispose()


async def test_racing_requests_with_one_key_make_one_refund(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await _seed_captured(engine, "o-key", 1000)
        outcomes = await asyncio.gather(
            *(_admit(engine, "o-key", 400, key="same", ordered={}) for _ in range(6))
        )
        assert sum(o.created for o in outcomes) == 1
        assert len({o.refund.refund_id for o in outcomes}) == 1
        assert await _payment(engine, "o-key") == (1000, 0, 400)
    finally:
        await engine.dispose()


async def test_nothing_captured_is_not_refundable(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await _seed_captured(engine, "o-auth", 0)
        with pytest.raises(book.NotRefundable):
            await _admit(engine, "o-auth", 100, ordered={})
        with pytest.raises(book.NotRefundable):
            await _admit(engine, "o-nobody", 100, ordered={})  # no payment at all
        assert await _refund_rows(engine, "o-auth") == []
    finally:
        await engine.dispose()
