"""``POST /v1/payments/webhook``: signatures on the raw body, dedupe by event id, signals.

Two harnesses on the Temporal dev server:

* the contract: the API (``api_factory``) in front of the real ``PaymentWorkflow`` (the
  child that orders started before ``PATCH_INLINE_PAYMENT`` run, and the API's fallback when
  no order takes the word) whose authorize activity is a stand-in that always needs customer
  action, so each test holds a payment waiting for exactly the webhook it sends;
* the whole path: the real order and delivery workers (``order_stack``), the API, and the PSP
  simulator posting its signed webhooks to the API, so a ``tok_action`` card goes
  REQUIRES_ACTION -> webhook -> the order's update ``payment_outcome`` -> AUTHORIZED -> PAID
  exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain.messages import (
    AuthorizeInput,
    AuthorizeResult,
    CancelRequest,
    CancelResult,
    PaymentInput,
    PaymentResult,
)
from domain.names import ACT_AUTHORIZE_PAYMENT, UPDATE_CANCEL, payment_workflow_id
from domain.status import PaymentStatus
from psp.signing import sign
from store.models import Payment
from tests.api.conftest import ApiFactory
from tests.api.helpers import Api, assert_problem, unique
from tests.support import wait_for_view
from tests.support.webhooks import World, deliver_to_the_door, world_with_webhooks
from workflows.payment import PaymentWorkflow

SECRET = "whsec-test-secret"
WEBHOOK = "/v1/payments/webhook"
SUCCEEDED = "payment_intent.succeeded"
FAILED = "payment_intent.failed"
AMOUNT = 3098
PRICE = 1299
FEE = 500

# --------------------------------------------------------------------------------- helpers


def event_body(
    order_id: str,
    payment_id: str,
    type_: str = SUCCEEDED,
    *,
    event_id: str | None = None,
    amount_cents: int = AMOUNT,
) -> bytes:
    return json.dumps(
        {
            "event_id": event_id or f"evt_{uuid.uuid4().hex}",
            "type": type_,
            "payment_id": payment_id,
            "order_id": order_id,
            "amount_cents": amount_cents,
        }
    ).encode()


def signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    return {"X-PSP-Signature": sign(secret, body, at), "Content-Type": "application/json"}


async def deliver(http: httpx.AsyncClient, body: bytes, **sign_kw: Any) -> httpx.Response:
    return await http.post(WEBHOOK, content=body, headers=signed(body, **sign_kw))


async def signals_received(handle: WorkflowHandle[Any, Any]) -> int:
    count = 0
    async for e in handle.fetch_history_events():
        if e.HasField("workflow_execution_signaled_event_attributes"):
            count += 1
    return count


async def stored(api_or_engine: Api, event_id: str) -> list[tuple[str, str | None]]:
    rows = await api_or_engine.sql(
        "SELECT outcome, detail FROM webhook_events WHERE event_id = :e", e=event_id
    )
    return [(r[0], r[1]) for r in rows]


# ------------------------------------------------------------- contract: a waiting payment


@activity.defn(name=ACT_AUTHORIZE_PAYMENT)
async def authorize_needs_customer_action(inp: AuthorizeInput) -> AuthorizeResult:
    return AuthorizeResult(status=PaymentStatus.REQUIRES_ACTION.value, payment_id=pi(inp.order_id))


def pi(order_id: str) -> str:
    return f"pi_{order_id}"


@pytest.fixture(scope="module")
async def payment_queue(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    queue = f"webhook-tests-{uuid.uuid4().hex[:8]}"
    async with Worker(
        dev_env.client,
        task_queue=queue,
        workflows=[PaymentWorkflow],
        activities=[authorize_needs_customer_action],
    ):
        yield queue


@activity.defn(name=ACT_AUTHORIZE_PAYMENT)
async def authorize_slowly_needs_customer_action(inp: AuthorizeInput) -> AuthorizeResult:
    await asyncio.sleep(1.0)  # webhooks may overtake the authorize call's answer
    return await authorize_needs_customer_action(inp)


@pytest.fixture(scope="module")
async def slow_payment_queue(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    queue = f"webhook-tests-slow-{uuid.uuid4().hex[:8]}"
    async with Worker(
        dev_env.client,
        task_queue=queue,
        workflows=[PaymentWorkflow],
        activities=[authorize_slowly_needs_customer_action],
    ):
        yield queue


@dataclass
class Waiting:
    order_id: str
    payment_id: str
    handle: WorkflowHandle[Any, PaymentResult]


async def waiting_payment(api: Api, queue: str) -> Waiting:
    """A real PaymentWorkflow whose card needs action: it waits for the webhook."""
    assert api.temporal is not None
    order_id = unique("o")
    handle = await api.temporal.start_workflow(
        PaymentWorkflow.run,
        PaymentInput(
            order_id=order_id,
            customer_id="c-1",
            amount_cents=AMOUNT,
            currency="USD",
            token="tok_action",
            payment_timeout_s=60,
            parent_workflow_id=f"order-{order_id}",  # absent: the child's progress note is lost
        ),
        id=payment_workflow_id(order_id),
        task_queue=queue,
    )
    return Waiting(order_id, pi(order_id), handle)


@pytest.fixture
async def api(api_factory: ApiFactory) -> AsyncIterator[Api]:
    async with api_factory(TRADEFLOW_WEBHOOK_SECRET=SECRET) as running:
        yield running


async def test_a_signed_success_authorizes_the_waiting_payment(
    api: Api, payment_queue: str
) -> None:
    p = await waiting_payment(api, payment_queue)
    body = event_body(p.order_id, p.payment_id, event_id="evt_first")

    r = await deliver(api.http, body)

    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "duplicate": False}
    result = await p.handle.result()
    assert (result.status, result.payment_id) == ("AUTHORIZED", p.payment_id)
    assert await stored(api, "evt_first") == [("signalled", None)]


async def test_a_signed_failure_declines_the_waiting_payment(api: Api, payment_queue: str) -> None:
    p = await waiting_payment(api, payment_queue)
    r = await deliver(api.http, event_body(p.order_id, p.payment_id, FAILED))
    assert r.status_code == 200, r.text
    assert (await p.handle.result()).status == "DECLINED"


async def test_a_repeated_event_is_a_duplicate_and_signals_nothing_more(
    api: Api, payment_queue: str
) -> None:
    p = await waiting_payment(api, payment_queue)
    body = event_body(p.order_id, p.payment_id, event_id=unique("evt"))
    first = await deliver(api.http, body)
    assert first.json()["duplicate"] is False
    await p.handle.result()

    again = [await deliver(api.http, body) for _ in range(3)]

    assert [(r.status_code, r.json()) for r in again] == [
        (200, {"received": True, "duplicate": True})
    ] * 3
    assert await signals_received(p.handle) == 1


async def test_concurrent_deliveries_of_one_event_take_effect_once(
    api: Api, payment_queue: str
) -> None:
    p = await waiting_payment(api, payment_queue)
    event_id = unique("evt")
    body = event_body(p.order_id, p.payment_id, event_id=event_id)

    responses = await asyncio.gather(*(deliver(api.http, body) for _ in range(10)))

    assert {r.status_code for r in responses} == {200}
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 9
    assert (await p.handle.result()).status == "AUTHORIZED"
    # Deliveries racing the first may signal too; the workflow keeps the first and drops the
    # repeats by event id. The dedupe row is one, and finished.
    assert 1 <= await signals_received(p.handle) <= 10
    assert await stored(api, event_id) == [("signalled", None)]


async def test_the_first_final_word_wins_over_a_later_contrary_one(
    api: Api, payment_queue: str
) -> None:
    p = await waiting_payment(api, payment_queue)
    succeeded = event_body(p.order_id, p.payment_id, SUCCEEDED)
    failed = event_body(p.order_id, p.payment_id, FAILED)

    assert (await deliver(api.http, succeeded)).status_code == 200
    late = await deliver(api.http, failed)

    assert late.status_code == 200 and late.json()["duplicate"] is False
    assert (await p.handle.result()).status == "AUTHORIZED"


async def test_contrary_words_arriving_before_the_payment_waits_the_first_wins(
    api: Api, slow_payment_queue: str
) -> None:
    p = await waiting_payment(api, slow_payment_queue)
    failed = await deliver(api.http, event_body(p.order_id, p.payment_id, FAILED))
    succeeded = await deliver(api.http, event_body(p.order_id, p.payment_id, SUCCEEDED))

    assert (failed.status_code, succeeded.status_code) == (200, 200)
    assert (await p.handle.result()).status == "DECLINED"
    assert await signals_received(p.handle) == 2


async def test_events_for_finished_or_unknown_orders_are_acknowledged_and_ignored(
    api: Api, payment_queue: str
) -> None:
    p = await waiting_payment(api, payment_queue)
    assert (await deliver(api.http, event_body(p.order_id, p.payment_id))).status_code == 200
    await p.handle.result()

    late_id, unknown_id = unique("evt"), unique("evt")
    late = await deliver(api.http, event_body(p.order_id, p.payment_id, event_id=late_id))
    unknown = await deliver(api.http, event_body(unique("o"), "pi_x", event_id=unknown_id))

    for r in (late, unknown):
        assert r.status_code == 200, r.text
        assert r.json() == {"received": True, "duplicate": False}
    for event_id in (late_id, unknown_id):
        [(outcome, detail)] = await stored(api, event_id)
        assert outcome == "ignored" and detail and "no running order or payment workflow" in detail


async def test_an_event_type_tradeflow_does_not_handle_is_acknowledged(
    api: Api, payment_queue: str
) -> None:
    p = await waiting_payment(api, payment_queue)
    body = event_body(p.order_id, p.payment_id, "payment_intent.processing")
    r = await deliver(api.http, body)
    assert r.json() == {"received": True, "duplicate": False}
    assert await signals_received(p.handle) == 0
    assert (await deliver(api.http, body)).json()["duplicate"] is True
    await p.handle.terminate("test over")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda body: {}, id="missing"),
        pytest.param(lambda body: {"X-PSP-Signature": ""}, id="empty"),
        pytest.param(lambda body: signed(body, secret="not-the-secret"), id="wrong-secret"),
        pytest.param(lambda body: signed(body + b" "), id="other-body"),
        pytest.param(lambda body: signed(body, at=int(time.time()) - 301), id="stale"),
        pytest.param(lambda body: signed(body, at=int(time.time()) + 600), id="from-the-future"),
        pytest.param(lambda body: {"X-PSP-Signature": "v1=abc"}, id="no-timestamp"),
        pytest.param(lambda body: {"X-PSP-Signature": "t=1,v1=" + "0" * 5000}, id="huge"),
        pytest.param(lambda body: {"X-PSP-Signature": "garbage"}, id="garbage"),
    ],
)
async def test_a_bad_or_stale_signature_is_400_and_changes_nothing(
    api: Api, payment_queue: str, headers: Any
) -> None:
    p = await waiting_payment(api, payment_queue)
    event_id = unique("evt")
    body = event_body(p.order_id, p.payment_id, event_id=event_id)

    r = await api.http.post(WEBHOOK, content=body, headers=headers(body))

    assert_problem(r, 400, "invalid_signature")
    assert await stored(api, event_id) == []
    assert await signals_received(p.handle) == 0
    await p.handle.terminate("test over")


async def test_a_stale_signature_says_so(api: Api) -> None:
    body = event_body("o-1", "pi_1")
    r = await deliver(api.http, body, at=int(time.time()) - 600)
    assert "300" in assert_problem(r, 400, "invalid_signature")["detail"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(json.dumps({"event_id": "evt_1", "type": SUCCEEDED}).encode(), id="missing"),
        pytest.param(event_body("o-1", "pi_1").replace(b"3098", b'"3098"'), id="amount-string"),
        pytest.param(event_body("o-1", "pi_1").replace(b"3098", b"-1"), id="amount-negative"),
        pytest.param(event_body("o-1", "pi_1").replace(b"3098", b"1e99"), id="amount-float"),
        pytest.param(event_body("o-\x00", "pi_1"), id="control-char"),
        pytest.param(event_body("o" * 65, "pi_1"), id="order-too-long"),
    ],
)
async def test_a_signed_but_malformed_body_is_400_validation_error(api: Api, body: bytes) -> None:
    r = await deliver(api.http, body)
    assert_problem(r, 400, "validation_error")


async def test_an_oversized_body_is_413(api: Api) -> None:
    body = b'{"pad": "' + b"x" * 70_000 + b'"}'
    assert_problem(await deliver(api.http, body), 413, "payload_too_large")


async def test_an_event_not_handed_over_is_delivered_by_the_psps_retry(
    api_factory: ApiFactory, payment_queue: str, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    event_id = unique("evt")
    async with api_factory(db_url=db_url, TRADEFLOW_WEBHOOK_SECRET=SECRET) as up:
        p = await waiting_payment(up, payment_queue)
    body = event_body(p.order_id, p.payment_id, event_id=event_id)

    # A replica that cannot reach Temporal: 503, so the PSP keeps the event and retries.
    async with api_factory(db_url=db_url, temporal=None, TRADEFLOW_WEBHOOK_SECRET=SECRET) as down:
        assert_problem(await deliver(down.http, body), 503, "temporal_unavailable")
        assert await stored(down, event_id) == [("received", None)]

    # The retry reaches a healthy replica: the half-done row does not count as done.
    async with api_factory(db_url=db_url, TRADEFLOW_WEBHOOK_SECRET=SECRET) as healthy:
        r = await deliver(healthy.http, body)
        assert r.status_code == 200, r.text
        assert (await p.handle.result()).status == "AUTHORIZED"
        assert await stored(healthy, event_id) == [("signalled", None)]
        assert (await deliver(healthy.http, body)).json()["duplicate"] is True


@pytest.mark.postgres
async def test_concurrent_deliveries_take_effect_once_on_postgres(
    api_factory: ApiFactory, payment_queue: str, postgres_url: str
) -> None:
    async with api_factory(db_url=postgres_url, TRADEFLOW_WEBHOOK_SECRET=SECRET) as api:
        p = await waiting_payment(api, payment_queue)
        event_id = unique("evt")
        body = event_body(p.order_id, p.payment_id, event_id=event_id)
        responses = await asyncio.gather(*(deliver(api.http, body) for _ in range(10)))
        assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 9
        assert (await p.handle.result()).status == "AUTHORIZED"
        assert await stored(api, event_id) == [("signalled", None)]


# ------------------------------------------------------------------- the whole path


async def payment_row(stack: Any, order_id: str) -> tuple[str, int, int]:
    """(status, authorized_cents, captured_cents) of the order's ``payments`` row."""
    p = Payment.__table__.c  # type: ignore[attr-defined]
    async with stack.engine.connect() as c:
        row = (
            await c.execute(
                select(p.status, p.authorized_cents, p.captured_cents).where(p.order_id == order_id)
            )
        ).one()
    return (row[0], row[1], row[2])


@pytest.fixture
async def world(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> AsyncIterator[World]:
    async with world_with_webhooks(
        dev_env.client,
        sqlite_url,
        tmp_path,
        secret=SECRET,
        sku="SKU-1",
        price_cents=PRICE,
        units=10,
    ) as world:
        yield world


async def test_a_card_needing_action_is_paid_by_the_psps_webhook_and_delivered(
    world: World,
) -> None:
    stack = world.stack
    await stack.seed_courier("k-1", 1.0)
    inp = stack.checkout([("SKU-1", 2, PRICE)], token="tok_action")
    handle = await stack.start(inp)

    paid = await wait_for_view(
        handle, lambda v: v.status not in ("PENDING", "RESERVED", "AWAITING_PAYMENT")
    )
    statuses = [t.status for t in paid.timeline]
    assert statuses[:4] == ["PENDING", "RESERVED", "AWAITING_PAYMENT", "PAID"], statuses
    responses = await world.sender.answered(1)
    assert [r.status_code for r in responses] == [200]
    assert responses[0].json() == {"received": True, "duplicate": False}
    # The payment row says what the PSP said at once, long before the capture at pick-up.
    total = 2 * PRICE + FEE
    assert await payment_row(stack, inp.order_id) == ("AUTHORIZED", total, 0)

    # Out of order: a contrary word for the same intent after the first final one changes
    # nothing (the payment has moved on; the event is acknowledged and ignored).
    assert paid.payment.payment_id is not None
    late = await deliver(world.api, event_body(inp.order_id, paid.payment.payment_id, FAILED))
    assert late.status_code == 200

    final = await deliver_to_the_door(stack, handle, inp.order_id)
    assert (final.status, final.amounts.captured_cents) == ("DELIVERED", total)
    assert await payment_row(stack, inp.order_id) == ("CAPTURED", total, total)
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("capture", total)]
    assert sorted(await world.outcomes(inp.order_id)) == ["ignored", "signalled"]


async def test_a_failed_customer_action_fails_the_order_and_returns_the_stock(
    world: World,
) -> None:
    stack = world.stack
    inp = stack.checkout([("SKU-1", 3, PRICE)], token="tok_action_fail")
    final = await (await stack.start(inp)).result()

    assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_DECLINED")
    assert "AWAITING_PAYMENT" in [t.status for t in final.timeline]
    assert await payment_row(stack, inp.order_id) == ("DECLINED", 0, 0)
    assert await stack.stock("SKU-1") == (10, 0, 0)
    assert await stack.ledger(inp.order_id) == []  # the card never held money
    assert await world.outcomes(inp.order_id) == ["signalled"]


async def test_a_psp_that_delivers_every_webhook_twice_at_once_pays_once(world: World) -> None:
    stack = world.stack
    world.sender.copies = 2
    inp = stack.checkout([("SKU-1", 1, PRICE)], token="tok_action")
    handle = await stack.start(inp)

    await wait_for_view(handle, lambda v: v.status in ("PAID", "DISPATCHING"))
    responses = await world.sender.answered(2)
    assert sorted(r.json()["duplicate"] for r in responses) == [False, True]
    cancelled = await handle.execute_update(
        UPDATE_CANCEL, CancelRequest("changed my mind"), result_type=CancelResult
    )
    assert cancelled.accepted
    final = await handle.result()
    assert final.status == "CANCELLED"
    total = PRICE + FEE
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("void", total)]
    assert await world.outcomes(inp.order_id) == ["signalled"]


async def test_a_forged_success_does_not_pay_the_order(world: World) -> None:
    stack = world.stack
    inp = stack.checkout([("SKU-1", 1, PRICE)], token="tok_action_never")
    handle = await stack.start(inp)
    waiting = await wait_for_view(handle, lambda v: v.status == "AWAITING_PAYMENT")
    assert waiting.payment.payment_id is not None
    body = event_body(inp.order_id, waiting.payment.payment_id)

    forged = await deliver(world.api, body, secret="guessed")
    assert_problem(forged, 400, "invalid_signature")
    await asyncio.sleep(0.5)
    assert (await wait_for_view(handle, lambda v: True)).status == "AWAITING_PAYMENT"

    with contextlib.suppress(Exception):
        await handle.terminate("test over")
    assert await stack.ledger(inp.order_id) == []
