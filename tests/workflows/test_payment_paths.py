"""Payment stories on the time-skipping server with the real PSP simulator in-process: the
flaky and slow tokens, capture and void that fail and are retried, and a webhook that arrives
before the order waits for it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain.errors import ALREADY_APPLIED, NOT_WAITING
from domain.messages import (
    CancelRequest,
    CancelResult,
    OrderTimeouts,
    PaymentOutcome,
    PaymentOutcomeResult,
)
from domain.names import QUERY_ORDER, UPDATE_CANCEL, UPDATE_PAYMENT_OUTCOME
from psp.app import create_app
from tests.support import Stack, order_stack, wait_for_view

PRICE = 1299
FEE = 500


@pytest.fixture
async def stack(ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    # tok_slow answers after 5 s; the activity's client gives up after 3 s (unknown outcome).
    app = create_app(
        tmp_path / "psp.db", webhook_url=None, webhook_secret="s", slow_s=5.0, action_delay_s=3600
    )
    async with order_stack(ts_env.client, sqlite_url, tmp_path / "psp.db", psp_app=app) as s:
        await s.seed_product("SKU-1", PRICE, 5)
        await s.seed_courier("k-1", 1.0)
        yield s


async def _deliver(stack: Stack, order_id: str) -> None:
    for kind in ("accepted", "picked_up", "delivered"):
        await stack.courier_says(order_id, "k-1", kind)


@pytest.mark.parametrize("token", ["tok_flaky", "tok_slow"])
async def test_flaky_and_slow_psp_authorize_once(stack: Stack, token: str) -> None:
    inp = stack.checkout([("SKU-1", 1, PRICE)], token=token)
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1", within=60)
    await _deliver(stack, inp.order_id)
    final = await h.result()
    assert final.status == "DELIVERED"
    assert await stack.ledger(inp.order_id) == [
        ("authorize", PRICE + FEE),
        ("capture", PRICE + FEE),
    ]


async def test_capture_that_fails_is_retried_until_the_psp_answers(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    inp = stack.checkout([("SKU-1", 1, PRICE)])
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1")
    await stack.courier_says(inp.order_id, "k-1", "accepted")
    await stack.psp.post("/v1/admin/faults", json={"error_rate": 1.0})
    await stack.courier_says(inp.order_id, "k-1", "picked_up")
    await ts_env.sleep(300)  # five minutes of failing captures
    v = await wait_for_view(h, lambda v: v.status == "COURIER_ASSIGNED")
    assert v.payment.status == "AUTHORIZED"
    await stack.psp.post("/v1/admin/faults", json={"error_rate": 0.0})
    await wait_for_view(h, lambda v: v.status == "OUT_FOR_DELIVERY", within=60)
    await stack.courier_says(inp.order_id, "k-1", "delivered")
    final = await h.result()
    assert (final.status, final.payment.status) == ("DELIVERED", "CAPTURED")
    assert await stack.ledger(inp.order_id) == [
        ("authorize", PRICE + FEE),
        ("capture", PRICE + FEE),
    ]


async def test_void_that_fails_is_retried_and_the_cancel_completes(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    inp = stack.checkout([("SKU-1", 2, PRICE)])
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1")
    await stack.psp.post("/v1/admin/faults", json={"error_rate": 1.0})
    await h.execute_update(
        UPDATE_CANCEL, CancelRequest("changed my mind"), result_type=CancelResult
    )
    await ts_env.sleep(120)  # the void keeps failing meanwhile
    await stack.psp.post("/v1/admin/faults", json={"error_rate": 0.0})
    final = await h.result()
    total = 2 * PRICE + FEE
    assert (final.status, final.payment.status) == ("CANCELLED", "VOIDED")
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("void", total)]
    assert await stack.stock("SKU-1") == (5, 0, 0)


async def test_early_duplicate_out_of_order_and_foreign_webhooks_leave_only_the_first_word(
    stack: Stack,
) -> None:
    inp = stack.checkout(
        [("SKU-1", 1, PRICE)],
        token="tok_action",  # the simulator here sends no webhook itself (webhook_url=None)
        timeouts=OrderTimeouts(payment_timeout_s=600, offer_timeout_s=10, max_offers=3),
    )
    h = await stack.start(inp)

    async def hand_over(ev: PaymentOutcome) -> str | None:
        """The webhook's update; None when the order took the word, else why it refused."""
        try:
            await h.execute_update(UPDATE_PAYMENT_OUTCOME, ev, result_type=PaymentOutcomeResult)
        except WorkflowUpdateFailedError as e:
            assert isinstance(e.cause, ApplicationError), e
            return e.cause.type
        return None

    # An event for another intent, as early as the order takes one (usually before the
    # authorization returns, when the order does not know its intent yet): must not count.
    foreign = PaymentOutcome(
        f"evt_{uuid.uuid4().hex}", "payment_intent.succeeded", "pi_someone_else", 1
    )
    for _ in range(500):
        refused = await hand_over(foreign)
        if refused is None or (await h.query(QUERY_ORDER)).status != "RESERVED":
            break  # taken early, or refused as another intent once the order knew its own
        assert refused == NOT_WAITING, refused
        await asyncio.sleep(0.005)
    v = await wait_for_view(h, lambda v: v.status == "AWAITING_PAYMENT")
    pid = v.payment.payment_id
    assert pid
    r = await stack.psp.post(f"/v1/test/payment_intents/{pid}/complete")
    assert r.status_code == 200, r.text
    word = PaymentOutcome("evt_1", "payment_intent.succeeded", pid, PRICE + FEE)
    assert await hand_over(word) is None
    assert await hand_over(word) == ALREADY_APPLIED  # a repeat: no second effect, no history
    late = PaymentOutcome("evt_2", "payment_intent.failed", pid, PRICE + FEE)
    assert await hand_over(late) == NOT_WAITING  # late and contrary: the first word stands
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1", within=60)
    await _deliver(stack, inp.order_id)
    final = await h.result()
    assert final.status == "DELIVERED"
    assert await stack.ledger(inp.order_id) == [
        ("authorize", PRICE + FEE),
        ("capture", PRICE + FEE),
    ]
