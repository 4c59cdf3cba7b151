"""The order saga on the time-skipping test server, with the real activities.

Activities run for real against a migrated SQLite database and the PSP simulator in-process, so
each story checks money and stock as well as the order's status.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain.messages import CancelRequest, CancelResult, OrderTimeouts
from domain.names import UPDATE_CANCEL
from tests.support import Stack, order_stack, view_of, wait_for_view

PRICE = 1299
FEE = 500


@pytest.fixture
async def stack(ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with order_stack(ts_env.client, sqlite_url, tmp_path / "psp.db") as s:
        await s.seed_product("SKU-1", PRICE, 5)
        await s.seed_product("SKU-2", 250, 1)
        yield s


async def _cancel(handle, reason: str = "changed my mind") -> CancelResult:  # type: ignore[no-untyped-def]
    return await handle.execute_update(
        UPDATE_CANCEL, CancelRequest(reason), result_type=CancelResult
    )


async def _until_offered(handle, courier: str):  # type: ignore[no-untyped-def]
    return await wait_for_view(handle, lambda v: v.delivery.offered_to == courier)


async def test_happy_path_reaches_delivered_and_captures_once(stack: Stack) -> None:
    await stack.seed_courier("k-1", 1.0)
    inp = stack.checkout([("SKU-1", 2, PRICE)])
    h = await stack.start(inp)

    await _until_offered(h, "k-1")
    assert (await stack.courier_says(inp.order_id, "k-1", "accepted")).accepted
    v = await wait_for_view(h, lambda v: v.status == "COURIER_ASSIGNED")
    assert v.delivery.courier_id == "k-1"
    await stack.courier_says(inp.order_id, "k-1", "picked_up")
    await wait_for_view(h, lambda v: v.status == "OUT_FOR_DELIVERY")
    await stack.courier_says(inp.order_id, "k-1", "delivered")
    final = await h.result()

    total = 2 * PRICE + FEE
    assert final.status == "DELIVERED"
    assert [t.status for t in final.timeline] == [
        "PENDING",
        "RESERVED",
        "PAID",
        "DISPATCHING",
        "COURIER_ASSIGNED",
        "OUT_FOR_DELIVERY",
        "DELIVERED",
    ]
    assert final.amounts.total_cents == total
    assert final.amounts.authorized_cents == total
    assert final.amounts.captured_cents == total
    assert final.payment.status == "CAPTURED"
    assert final.delivery.status == "DELIVERED"
    assert await stack.stock("SKU-1") == (3, 0, 2)
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("capture", total)]
    assert await stack.courier("k-1") == (None, None)  # free for the next order
    rm = await stack.read_model(inp.order_id)
    assert rm["status"] == "DELIVERED" and rm["view"]["amounts"]["captured_cents"] == total
    assert await stack.reservations(inp.order_id) == {"SKU-1": "CONFIRMED"}


async def test_out_of_stock_fails_and_releases_every_line(stack: Stack) -> None:
    inp = stack.checkout([("SKU-1", 2, PRICE), ("SKU-2", 3, 250)])  # only 1 of SKU-2
    final = await (await stack.start(inp)).result()

    assert (final.status, final.failure_reason) == ("FAILED", "OUT_OF_STOCK")
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert await stack.stock("SKU-2") == (1, 0, 0)
    assert await stack.ledger(inp.order_id) == []
    assert set((await stack.reservations(inp.order_id)).values()) == {"CANCELLED"}
    assert (await stack.read_model(inp.order_id))["failure_reason"] == "OUT_OF_STOCK"


async def test_declined_card_fails_and_returns_stock(stack: Stack) -> None:
    inp = stack.checkout([("SKU-1", 1, PRICE)], token="tok_decline")
    final = await (await stack.start(inp)).result()

    assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_DECLINED")
    assert final.payment.status == "DECLINED"
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert [k for k, _ in await stack.ledger(inp.order_id)] == []


async def test_payment_timeout_holds_stock_while_awaiting_then_releases_it(stack: Stack) -> None:
    inp = stack.checkout(
        [("SKU-1", 1, PRICE)],
        token="tok_action_never",
        timeouts=OrderTimeouts(payment_timeout_s=600, offer_timeout_s=10, max_offers=3),
    )
    h = await stack.start(inp)
    v = await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    assert v.payment.status == "REQUIRES_ACTION" and v.payment.payment_id
    assert await stack.stock("SKU-1") == (4, 1, 0)  # held while the customer decides

    final = await h.result()  # the test server skips the 600 s
    assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_TIMEOUT")
    assert await stack.stock("SKU-1") == (5, 0, 0)
    intent = (await stack.psp.get(f"/v1/payment_intents/{v.payment.payment_id}")).json()
    assert intent["status"] == "canceled"


async def test_cancel_while_awaiting_payment_voids_intent_and_returns_stock(stack: Stack) -> None:
    inp = stack.checkout([("SKU-1", 2, PRICE)], token="tok_action_never")
    h = await stack.start(inp)
    v = await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")

    assert (await _cancel(h)).accepted
    final = await h.result()
    assert final.status == "CANCELLED" and final.failure_reason is None
    assert await stack.stock("SKU-1") == (5, 0, 0)
    intent = (await stack.psp.get(f"/v1/payment_intents/{v.payment.payment_id}")).json()
    assert intent["status"] == "canceled"
    # Repeating an accepted cancel is answered, not refused.
    assert (await stack.read_model(inp.order_id))["status"] == "CANCELLED"


async def test_cancel_before_pickup_voids_authorization_and_returns_stock(stack: Stack) -> None:
    await stack.seed_courier("k-1", 1.0)
    inp = stack.checkout([("SKU-1", 2, PRICE)])
    h = await stack.start(inp)
    await _until_offered(h, "k-1")
    await stack.courier_says(inp.order_id, "k-1", "accepted")
    await wait_for_view(h, lambda v: v.status == "COURIER_ASSIGNED")

    assert (await _cancel(h)).accepted
    # A repeat changes nothing and leaves no trace in the history: the validator refuses it
    # as AlreadyApplied, which the API answers 200 with the order.
    with pytest.raises(WorkflowUpdateFailedError) as repeat:
        await _cancel(h, "again")
    assert isinstance(repeat.value.cause, ApplicationError)
    assert repeat.value.cause.type == "AlreadyApplied"
    final = await h.result()
    total = 2 * PRICE + FEE
    assert final.status == "CANCELLED"
    assert final.payment.status == "VOIDED"
    assert await stack.stock("SKU-1") == (5, 0, 0)  # sold units came back
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("void", total)]
    assert await stack.courier("k-1") == (None, None)
    assert await stack.reservations(inp.order_id) == {"SKU-1": "RETURNED"}


async def test_cancel_after_pickup_is_refused_and_order_completes(stack: Stack) -> None:
    await stack.seed_courier("k-1", 1.0)
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await _until_offered(h, "k-1")
    await stack.courier_says(inp.order_id, "k-1", "accepted")
    await stack.courier_says(inp.order_id, "k-1", "picked_up")

    with pytest.raises(WorkflowUpdateFailedError) as err:
        await _cancel(h)
    assert isinstance(err.value.cause, ApplicationError)
    assert err.value.cause.type == "NotCancellable"

    await stack.courier_says(inp.order_id, "k-1", "delivered")
    final = await h.result()
    assert final.status == "DELIVERED"
    assert [k for k, _ in await stack.ledger(inp.order_id)] == ["authorize", "capture"]


async def test_courier_offer_timeout_reoffers_to_next_courier(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    await stack.seed_courier("k-near", 0.5)
    await stack.seed_courier("k-far", 3.0)
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await _until_offered(h, "k-near")  # nearest first

    await ts_env.sleep(inp.timeouts.offer_timeout_s + 1)  # k-near never answers
    await _until_offered(h, "k-far")
    assert await stack.courier("k-near") == (None, None)  # released when the offer lapsed

    with pytest.raises(WorkflowUpdateFailedError) as err:  # too late now
        await stack.courier_says(inp.order_id, "k-near", "accepted")
    assert err.value.cause.type == "CourierMismatch"  # type: ignore[union-attr]

    await stack.courier_says(inp.order_id, "k-far", "accepted")
    v = await wait_for_view(h, lambda v: v.status == "COURIER_ASSIGNED")
    assert v.delivery.courier_id == "k-far"
    assert await stack.courier("k-far") == (inp.order_id, "ASSIGNED")
    await _cancel(h)
    assert (await h.result()).status == "CANCELLED"


async def test_declined_offer_goes_to_next_courier(stack: Stack) -> None:
    await stack.seed_courier("k-1", 0.5)
    await stack.seed_courier("k-2", 1.5)
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await _until_offered(h, "k-1")
    await stack.courier_says(inp.order_id, "k-1", "declined")
    await _until_offered(h, "k-2")
    await _cancel(h)
    assert (await h.result()).status == "CANCELLED"
    assert await stack.courier("k-1") == (None, None)
    assert await stack.courier("k-2") == (None, None)


async def test_no_courier_at_all_fails_voids_and_returns_stock(stack: Stack) -> None:
    inp = stack.checkout([("SKU-1", 2, PRICE)])
    final = await (await stack.start(inp)).result()
    total = 2 * PRICE + FEE

    assert (final.status, final.failure_reason) == ("FAILED", "NO_COURIER")
    assert final.delivery.status == "FAILED"
    assert final.payment.status == "VOIDED"
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("void", total)]


async def test_courier_events_from_the_wrong_courier_or_out_of_order_are_refused(
    stack: Stack,
) -> None:
    await stack.seed_courier("k-1", 1.0)
    await stack.seed_courier("k-2", 2.0)
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await _until_offered(h, "k-1")

    for courier, kind, expected in [
        ("k-2", "accepted", "CourierMismatch"),  # not offered to k-2
        ("k-1", "picked_up", "OutOfOrder"),  # not assigned yet
    ]:
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await stack.courier_says(inp.order_id, courier, kind)
        assert err.value.cause.type == expected  # type: ignore[union-attr]

    await stack.courier_says(inp.order_id, "k-1", "accepted")
    for courier, kind, expected in [
        ("k-1", "delivered", "OutOfOrder"),  # before picked_up
        ("k-2", "picked_up", "CourierMismatch"),
    ]:
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await stack.courier_says(inp.order_id, courier, kind)
        assert err.value.cause.type == expected  # type: ignore[union-attr]
    assert (await view_of(h)).status in ("COURIER_ASSIGNED", "DISPATCHING")
    await _cancel(h)
    assert (await h.result()).status == "CANCELLED"


async def test_cancelling_the_workflow_from_outside_still_compensates(stack: Stack) -> None:
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import CancelledError

    inp = stack.checkout([("SKU-1", 2, PRICE)], token="tok_action_never")
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    await h.cancel()  # an operator pressed Cancel in the UI
    with pytest.raises(WorkflowFailureError) as err:
        await h.result()
    assert isinstance(err.value.cause, CancelledError)
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert (await stack.read_model(inp.order_id))["status"] == "CANCELLED"


async def test_reservation_lapses_on_the_orders_own_timer_when_payment_never_finishes(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    inp = stack.checkout(
        [("SKU-1", 2, PRICE)],
        token="tok_action_never",
        # The TTL is shorter than the payment timeout: the order's own timer must win.
        timeouts=OrderTimeouts(
            payment_timeout_s=3600, offer_timeout_s=10, max_offers=1, reservation_ttl_s=300
        ),
    )
    h = await stack.start(inp)
    v = await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    assert await stack.stock("SKU-1") == (3, 2, 0)

    # Skip just past the TTL, then let the order finish in real time: a result() that lets
    # the test server skip time can jump to the payment child's own 3600 s timer while the
    # order's cancel of that child is still in flight (the server does not count a pending
    # child cancel as work), which is an artifact of time skipping, not of the saga.
    await ts_env.sleep(301)
    with ts_env.auto_time_skipping_disabled():
        final = await h.result()
    assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_TIMEOUT")
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert await stack.reservations(inp.order_id) == {"SKU-1": "CANCELLED"}
    intent = (await stack.psp.get(f"/v1/payment_intents/{v.payment.payment_id}")).json()
    assert intent["status"] == "canceled"
    lapsed_after = (
        _parse(final.timeline[-1].at)
        - _parse(next(t.at for t in final.timeline if t.status == "RESERVED"))
    ).total_seconds()
    assert 295 <= lapsed_after < 3600, lapsed_after


def _parse(ts: str):  # type: ignore[no-untyped-def]
    from datetime import datetime

    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
