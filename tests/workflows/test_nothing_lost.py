"""Nothing lost: the order saga under outside cancels, long outages and races (issue 7).

Each story drives the real workflows and activities (time-skipping server, SQLite, the PSP
simulator in-process) into a corner where stock, money or a courier used to be left behind,
and checks what is left once the order has ended. The races are made deterministic by holding
SQLite's write lock: every activity that writes then waits, exactly as it would behind a slow or
briefly unreachable database, while the test sends the racing request.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from domain.messages import (
    CancelRequest,
    CancelResult,
    DeliveryState,
    OrderTimeouts,
    RepairRequest,
    RepairResult,
)
from domain.names import QUERY_DELIVERY, UPDATE_CANCEL, UPDATE_REPAIR, delivery_workflow_id
from tests.support import Stack, order_stack, view_of, wait_for_view

PRICE = 1299
FEE = 500


@pytest.fixture
async def stack(ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with order_stack(ts_env.client, sqlite_url, tmp_path / "psp.db") as s:
        await s.seed_product("SKU-1", PRICE, 5)
        yield s


@pytest.fixture
async def dev_stack(dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The same stack on the real dev server, whose history is the one production writes
    (the time-skipping server records a workflow task even for a refused update)."""
    async with order_stack(dev_env.client, sqlite_url, tmp_path / "psp.db") as s:
        await s.seed_product("SKU-1", PRICE, 5)
        yield s


@pytest.fixture
def db_path(sqlite_url: str) -> Path:
    return Path(sqlite_url.removeprefix("sqlite:///"))


# The test's event loop also runs the stack's worker, so a blocking SQLite call here must not
# wait on it: an activity in the middle of a write transaction needs the loop to finish it
# (a deadlock until sqlite3's busy timeout). Each statement runs in a thread.


@contextlib.asynccontextmanager
async def writes_held(db_path: Path) -> AsyncIterator[None]:
    """Hold SQLite's write lock: every writing activity waits until the block ends."""
    con = sqlite3.connect(db_path, isolation_level=None, timeout=30, check_same_thread=False)
    await asyncio.to_thread(con.execute, "BEGIN IMMEDIATE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


async def _sql(db_path: Path, statement: str, *params: object) -> None:
    def run() -> None:
        con = sqlite3.connect(db_path, isolation_level=None, timeout=30)
        try:
            con.execute(statement, params)
        finally:
            con.close()

    await asyncio.to_thread(run)


async def _cancel(handle, reason: str = "changed my mind") -> CancelResult:  # type: ignore[no-untyped-def]
    return await handle.execute_update(
        UPDATE_CANCEL, CancelRequest(reason), result_type=CancelResult
    )


async def _repair(handle, reason: str) -> RepairResult:  # type: ignore[no-untyped-def]
    return await handle.execute_update(
        UPDATE_REPAIR, RepairRequest(reason, operator="ops-1"), result_type=RepairResult
    )


async def _psp_faults(stack: Stack, **faults: float) -> None:
    r = await stack.psp.post("/v1/admin/faults", json=faults)
    assert r.status_code == 200, r.text


_UPDATE_EVENTS = (
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
)


async def _update_events(handle) -> int:  # type: ignore[no-untyped-def]
    # Only the update events: the order's own steps after OUT_FOR_DELIVERY (the read-model
    # write, its workflow tasks) may still land while the repeats are sent.
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.event_type in _UPDATE_EVENTS)


async def test_compensation_retries_through_a_psp_outage_longer_than_any_retry_window(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    # No courier, so the order fails NO_COURIER after authorizing; by then the PSP answers 503
    # to everything. The void must keep trying (hours, not the old ~30 minutes) until it lands.
    inp = stack.checkout(
        [("SKU-1", 1, PRICE)],
        timeouts=OrderTimeouts(payment_timeout_s=60, offer_timeout_s=1, max_offers=1),
    )
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.status == "DISPATCHING")
    await _psp_faults(stack, error_rate=1.0)
    began = await ts_env.get_current_time()
    # Let the test server skip through the outage: sleeping on its clock skips time while the
    # void is in its retry backoff.
    await ts_env.sleep(6 * 3600)
    assert (await ts_env.get_current_time() - began).total_seconds() >= 6 * 3600
    assert (await h.describe()).status is not None
    assert (await view_of(h)).status == "DISPATCHING"  # still compensating, not given up
    assert [k for k, _ in await stack.ledger(inp.order_id)] == ["authorize"]

    await _psp_faults(stack, error_rate=0.0)  # the PSP is back
    final = await h.result()
    total = PRICE + FEE
    assert (final.status, final.failure_reason) == ("FAILED", "NO_COURIER")
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("void", total)]
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert (await stack.read_model(inp.order_id))["status"] == "FAILED"


async def test_stock_compensation_retries_through_a_database_outage_as_a_regular_activity(
    stack: Stack, ts_env: WorkflowEnvironment, db_path: Path
) -> None:
    # The stock undo is a local activity first (the ``local-steps`` patch); still failing
    # after options.LOCAL_TRIES tries (about 7 s of real time here) it goes on as the regular
    # activity, retried by the server for as long as it takes, so the history does not grow
    # with the outage.
    inp = stack.checkout(
        [("SKU-1", 2, PRICE)],
        timeouts=OrderTimeouts(payment_timeout_s=60, offer_timeout_s=1, max_offers=1),
    )
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.status == "DISPATCHING")
    # The fence table is gone (a database outage as the worker sees it): every return_stock
    # try fails with a retryable error until it is back.
    await _sql(db_path, "ALTER TABLE reservations RENAME TO reservations_offline")
    began = await ts_env.get_current_time()
    await ts_env.sleep(6 * 3600)
    assert (await ts_env.get_current_time() - began).total_seconds() >= 6 * 3600
    assert (await view_of(h)).status == "DISPATCHING"  # still compensating, not given up
    history = await h.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert "return_stock" in scheduled, scheduled  # the fallback, retried by the server
    assert len(history.events) < 150, len(history.events)  # six hours did not grow it

    await _sql(db_path, "ALTER TABLE reservations_offline RENAME TO reservations")
    final = await h.result()
    assert (final.status, final.failure_reason) == ("FAILED", "NO_COURIER")
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert await stack.reservations(inp.order_id) == {"SKU-1": "RETURNED"}
    assert (await stack.read_model(inp.order_id))["status"] == "FAILED"


async def test_outside_cancel_during_compensation_still_finishes_it(stack: Stack) -> None:
    inp = stack.checkout(
        [("SKU-1", 2, PRICE)],
        timeouts=OrderTimeouts(payment_timeout_s=60, offer_timeout_s=1, max_offers=1),
    )
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.status == "DISPATCHING")
    await _psp_faults(stack, error_rate=1.0)
    await asyncio.sleep(3)  # no courier: the order has failed and its void is retrying
    assert [k for k, _ in await stack.ledger(inp.order_id)] == ["authorize"]

    await h.cancel()  # an operator presses Cancel in the UI in the middle of it
    await asyncio.sleep(1)
    await _psp_faults(stack, error_rate=0.0)
    final = await h.result()  # the compensation was not abandoned: it finished

    total = 2 * PRICE + FEE
    assert (final.status, final.failure_reason) == ("FAILED", "NO_COURIER")
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("void", total)]
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert await stack.reservations(inp.order_id) == {"SKU-1": "RETURNED"}
    assert (await stack.read_model(inp.order_id))["status"] == "FAILED"


async def test_outside_cancel_while_a_delivered_order_frees_its_courier_keeps_it_delivered(
    stack: Stack, db_path: Path
) -> None:
    await stack.seed_courier("k-1", 1.0)
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1")
    await stack.courier_says(inp.order_id, "k-1", "accepted")
    await wait_for_view(h, lambda v: v.status == "COURIER_ASSIGNED")
    await stack.courier_says(inp.order_id, "k-1", "picked_up")
    await wait_for_view(h, lambda v: v.status == "OUT_FOR_DELIVERY")

    async with writes_held(db_path):
        await stack.courier_says(inp.order_id, "k-1", "delivered")
        await asyncio.sleep(0.5)  # the workflow is freeing the courier (blocked on the DB)
        await h.cancel()
        await asyncio.sleep(0.5)
    final = await h.result()

    assert final.status == "DELIVERED"  # not NEEDS_ATTENTION, and no stock put back
    assert await stack.stock("SKU-1") == (4, 0, 1)
    assert await stack.courier("k-1") == (None, None)
    assert (await stack.read_model(inp.order_id))["status"] == "DELIVERED"
    assert [k for k, _ in await stack.ledger(inp.order_id)] == ["authorize", "capture"]


async def test_cancel_racing_a_couriers_accept_frees_the_courier(
    stack: Stack, db_path: Path
) -> None:
    await stack.seed_courier("k-1", 1.0)
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1")
    delivery = stack.client.get_workflow_handle(delivery_workflow_id(inp.order_id))

    async with writes_held(db_path):
        # The accept is taken (the offer closes at once) but its assign waits on the DB...
        accept = asyncio.ensure_future(stack.courier_says(inp.order_id, "k-1", "accepted"))
        for _ in range(100):
            state = await delivery.query(QUERY_DELIVERY, result_type=DeliveryState)
            if state.status == "ASSIGNED":
                break
            await asyncio.sleep(0.05)
        assert state.status == "ASSIGNED" and state.offered_to is None
        # ...when the customer cancels.
        assert (await _cancel(h)).accepted
        await asyncio.sleep(0.5)
    await accept
    final = await h.result()

    assert final.status == "CANCELLED"
    assert await stack.courier("k-1") == (None, None)  # not bound to a cancelled order
    assert await stack.stock("SKU-1") == (5, 0, 0)


async def test_cancel_accepted_while_stock_runs_out_ends_cancelled(
    stack: Stack, db_path: Path
) -> None:
    await stack.seed_product("SKU-0", PRICE, 0)  # nothing on the shelf
    inp = stack.checkout([("SKU-0", 1, PRICE)])
    async with writes_held(db_path):
        h = await stack.start(inp)
        await asyncio.sleep(0.5)  # recording and reserving wait on the DB
        assert (await _cancel(h)).accepted
    final = await h.result()
    # The reservation then fails OUT_OF_STOCK, but the accepted cancel is the answer.
    assert (final.status, final.failure_reason) == ("CANCELLED", None)
    assert (await stack.read_model(inp.order_id))["status"] == "CANCELLED"
    assert await stack.stock("SKU-0") == (0, 0, 0)


async def test_authorization_that_lands_after_the_reservation_lapsed_is_voided(
    stack: Stack,
) -> None:
    # The PSP takes 3 s to commit an intent; the reservation lapses after 1 s. The payment
    # child is cancelled while its authorize attempt is still in flight.
    await _psp_faults(stack, authorize_latency_ms=3000)
    inp = stack.checkout(
        [("SKU-1", 1, PRICE)],
        timeouts=OrderTimeouts(
            payment_timeout_s=60, offer_timeout_s=10, max_offers=1, reservation_ttl_s=1
        ),
    )
    h = await stack.start(inp)
    final = await h.result()
    await asyncio.sleep(3.5)  # long enough for a late authorization to have landed
    await _psp_faults(stack, authorize_latency_ms=0)

    total = PRICE + FEE
    assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_TIMEOUT")
    ledger = await stack.ledger(inp.order_id)
    assert ledger == [("authorize", total), ("void", total)], ledger  # nothing left authorized
    assert await stack.stock("SKU-1") == (5, 0, 0)


async def test_order_parked_by_a_refused_compensation_is_repaired_by_an_operator(
    stack: Stack, db_path: Path
) -> None:
    inp = stack.checkout([("SKU-1", 2, PRICE)], token="tok_action_never")
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    # A data fault: the fence row says CONFIRMED (a confirm that landed where the saga never
    # heard of it), so the cancel of the hold is refused for good.
    await _sql(
        db_path, "UPDATE reservations SET state = 'CONFIRMED' WHERE order_id = ?", inp.order_id
    )
    assert (await _cancel(h)).accepted
    parked = await wait_for_view(h, lambda v: v.status == "NEEDS_ATTENTION")
    assert parked.payment.status == "VOIDED"  # what could be undone was
    assert await stack.stock("SKU-1") == (3, 2, 0)  # the hold is still there
    assert (await stack.read_model(inp.order_id))["status"] == "NEEDS_ATTENTION"

    with pytest.raises(WorkflowUpdateFailedError) as blank:
        await _repair(h, "  ")
    assert isinstance(blank.value.cause, ApplicationError)
    assert blank.value.cause.type == "NotRepairable"

    # Repairing before the cause is fixed changes nothing and says what is left.
    again = await _repair(h, "retry before the fix")
    assert (again.status, again.remaining) == ("NEEDS_ATTENTION", ["stock:SKU-1"])

    await _sql(db_path, "UPDATE reservations SET state = 'TRIED' WHERE order_id = ?", inp.order_id)
    done = await _repair(h, "fence row restored from the audit log")
    assert (done.status, done.remaining) == ("CANCELLED", [])
    final = await h.result()
    assert final.status == "CANCELLED"
    assert [t.status for t in final.timeline][-2:] == ["NEEDS_ATTENTION", "CANCELLED"]
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert (await stack.read_model(inp.order_id))["status"] == "CANCELLED"
    # The operator's reasons are part of the order's durable history.
    history = await h.fetch_history()
    reasons = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads[
            0
        ].data
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert any(b"fence row restored from the audit log" in r for r in reasons)

    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await _repair(h, "once more")  # closed: nothing to repair


async def test_parked_order_closed_from_outside_stays_needs_attention(
    stack: Stack, db_path: Path, ts_env: WorkflowEnvironment
) -> None:
    inp = stack.checkout([("SKU-1", 1, PRICE)], token="tok_action_never")
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    await _sql(
        db_path, "UPDATE reservations SET state = 'CONFIRMED' WHERE order_id = ?", inp.order_id
    )
    await _cancel(h)
    await wait_for_view(h, lambda v: v.status == "NEEDS_ATTENTION")
    # In real time: a parked order waits with no timer, so a result() that lets the server
    # skip time jumps it to its execution timeout if the cancel has not been handled yet
    # (seen on a loaded machine).
    with ts_env.auto_time_skipping_disabled():
        await h.cancel()
        with pytest.raises(WorkflowFailureError) as err:
            await h.result()
    assert isinstance(err.value.cause, CancelledError)
    assert (await stack.read_model(inp.order_id))["status"] == "NEEDS_ATTENTION"


async def test_repeated_courier_events_add_nothing_to_the_history(
    dev_stack: Stack,
) -> None:
    stack = dev_stack
    await stack.seed_courier("k-1", 1.0)
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1")
    await stack.courier_says(inp.order_id, "k-1", "accepted")
    await wait_for_view(h, lambda v: v.status == "COURIER_ASSIGNED")
    await stack.courier_says(inp.order_id, "k-1", "picked_up")
    await wait_for_view(h, lambda v: v.status == "OUT_FOR_DELIVERY")

    before = await _update_events(h)
    assert before >= 2  # the accepted picked_up left its accepted + completed events
    for _ in range(20):
        with pytest.raises(WorkflowUpdateFailedError) as repeat:
            await stack.courier_says(inp.order_id, "k-1", "picked_up")
        assert isinstance(repeat.value.cause, ApplicationError)
        assert repeat.value.cause.type == "AlreadyApplied"
    assert await _update_events(h) == before  # refused updates leave no events

    await stack.courier_says(inp.order_id, "k-1", "delivered")
    final = await h.result()
    assert final.status == "DELIVERED"
    assert [k for k, _ in await stack.ledger(inp.order_id)] == ["authorize", "capture"]
