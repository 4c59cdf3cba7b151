"""``tradeflow check money``: real orders run through the real workflows (time-skipping server,
the PSP simulator in-process, a real database) to DELIVERED, CANCELLED, FAILED and refunded;
the check passes; then each invariant is broken by hand (an UPDATE of tradeflow's payments
row, or a money movement made straight at the PSP, outside tradeflow) and the check fails
naming the order and the rule."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from cli.checks import MoneyReport, check_money
from cli.main import main as tradeflow
from domain.messages import CancelRequest, CancelResult
from domain.money import DELIVERY_FEE_CENTS
from domain.names import UPDATE_CANCEL
from psp.app import create_app
from psp.testing import serve_in_background
from store.db import make_sessionmaker
from tests.api.test_webhook import PRICE
from tests.api.test_webhook import SECRET as WEBHOOK_SECRET
from tests.support import Stack, order_stack, scenarios, wait_for_view
from tests.support.webhooks import World, deliver_to_the_door, world_with_webhooks


async def _check(stack: Stack) -> MoneyReport:
    return await check_money(make_sessionmaker(stack.engine), stack.psp)


async def _fails(stack: Stack, order_id: str, *rules: str) -> MoneyReport:
    report = await _check(stack)
    assert not report.ok
    assert report.offenders() == [order_id], [str(v) for v in report.violations]
    assert {v.rule for v in report.violations} == set(rules), [str(v) for v in report.violations]
    return report


async def _sql(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as c:
        await c.execute(text(sql), params)


async def _order_with(engine: AsyncEngine, where: str) -> tuple[str, str]:
    """(order_id, payment_id) of the one order matching ``where`` (on payments p, orders o)."""
    async with engine.connect() as c:
        rows = (
            await c.execute(
                text(
                    "SELECT p.order_id, p.payment_id FROM payments p"
                    f" JOIN orders o ON o.order_id = p.order_id WHERE {where}"
                )
            )
        ).all()
    assert len(rows) == 1, rows
    return rows[0][0], rows[0][1]


async def _psp(stack: Stack, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    r = await stack.psp.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


async def test_money_check_passes_on_real_orders_and_names_each_broken_invariant(
    ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    psp_db = tmp_path / "psp.db"
    async with order_stack(ts_env.client, sqlite_url, psp_db) as stack:
        # ---- real orders, every money path
        await scenarios.happy_path(stack)  # authorized, captured: DELIVERED
        await scenarios.refund_partial_with_restock(stack)  # DELIVERED, then half refunded
        await scenarios.cancel_before_pickup(stack)  # authorized, voided: CANCELLED
        await scenarios.cancel_awaiting_payment(stack)  # never authorized, voided: CANCELLED
        await scenarios.payment_declined(stack)  # FAILED, nothing held
        await scenarios.out_of_stock(stack)  # FAILED before any payment

        report = await _check(stack)
        assert report.ok, [str(v) for v in report.violations]
        assert report.orders == 5 and report.ledger_entries > 0
        assert 0 < report.refunded_cents < report.captured_cents <= report.authorized_cents

        delivered, delivered_pi = await _order_with(
            stack.engine, "o.status = 'DELIVERED' AND p.refunded_cents = 0"
        )
        refunded, _ = await _order_with(stack.engine, "p.refunded_cents > 0")
        cancelled, _ = await _order_with(
            stack.engine, "o.status = 'CANCELLED' AND p.authorized_cents > 0"
        )
        failed, _ = await _order_with(stack.engine, "o.status = 'FAILED'")

        # ---- the CLI, against the same PSP state served over HTTP: exit 0
        second_psp = create_app(psp_db, webhook_url=None, webhook_secret="test-secret")
        async with serve_in_background(second_psp) as psp_url:
            argv = ["check", "money", "--database-url", sqlite_url, "--psp-url", psp_url]
            assert await asyncio.to_thread(tradeflow, argv) == 0

            # ---- tradeflow's record disagrees with the PSP
            await _sql(
                stack.engine,
                "UPDATE payments SET captured_cents = captured_cents - 1 WHERE order_id = :o",
                o=delivered,
            )
            await _fails(stack, delivered, "captured")
            assert await asyncio.to_thread(tradeflow, argv) == 1  # and the CLI says so
            await _sql(
                stack.engine,
                "UPDATE payments SET captured_cents = captured_cents + 1 WHERE order_id = :o",
                o=delivered,
            )
        assert (await _check(stack)).ok

        await _sql(
            stack.engine,
            "UPDATE payments SET authorized_cents = authorized_cents + 7 WHERE order_id = :o",
            o=cancelled,
        )
        await _fails(stack, cancelled, "authorized")
        await _sql(
            stack.engine,
            "UPDATE payments SET authorized_cents = authorized_cents - 7 WHERE order_id = :o",
            o=cancelled,
        )

        # refunded <= captured <= authorized on tradeflow's side
        await _sql(
            stack.engine,
            "UPDATE payments SET authorized_cents = captured_cents - 1 WHERE order_id = :o",
            o=delivered,
        )
        await _fails(stack, delivered, "authorized", "order")
        await _sql(
            stack.engine,
            "UPDATE payments SET authorized_cents = captured_cents WHERE order_id = :o",
            o=delivered,
        )

        # tradeflow recorded more refunded than the PSP refunded (and than it committed)
        await _sql(
            stack.engine,
            "UPDATE payments SET refunded_cents = refunded_cents + 1 WHERE order_id = :o",
            o=refunded,
        )
        await _fails(stack, refunded, "refunded", "committed")
        await _sql(
            stack.engine,
            "UPDATE payments SET refunded_cents = refunded_cents - 1 WHERE order_id = :o",
            o=refunded,
        )

        # the committed amount fell below what was refunded
        await _sql(
            stack.engine,
            "UPDATE payments SET refund_committed_cents = refunded_cents - 1 WHERE order_id = :o",
            o=refunded,
        )
        await _fails(stack, refunded, "committed")
        await _sql(
            stack.engine,
            "UPDATE payments SET refund_committed_cents = refunded_cents WHERE order_id = :o",
            o=refunded,
        )

        # a delivered payment that tradeflow believes voided
        await _sql(
            stack.engine, "UPDATE payments SET status = 'VOIDED' WHERE order_id = :o", o=delivered
        )
        await _fails(stack, delivered, "voided")
        await _sql(
            stack.engine, "UPDATE payments SET status = 'CAPTURED' WHERE order_id = :o", o=delivered
        )
        assert (await _check(stack)).ok

        # ---- money moved at the PSP, outside tradeflow
        await _psp(stack, "/v1/refunds", {"payment_id": delivered_pi, "amount_cents": 100})
        report = await _fails(stack, delivered, "refund_outside_tradeflow")
        assert "100 refunded outside tradeflow" in str(report.violations[0])
        # tradeflow learns of it (as its refund workflow would count it) and the books agree
        await _sql(
            stack.engine,
            "UPDATE payments SET refunded_cents = 100, refund_committed_cents = 100"
            " WHERE order_id = :o",
            o=delivered,
        )
        assert (await _check(stack)).ok

        # an authorization for an order that FAILED, never voided: dangling
        intent = await _psp(
            stack,
            "/v1/payment_intents",
            {"order_id": failed, "amount_cents": 999, "currency": "USD", "token": "tok_ok"},
        )
        report = await _fails(stack, failed, "dangling_authorization")
        assert "999" in str(report.violations[0]) and "FAILED" in str(report.violations[0])
        await _psp(stack, f"/v1/payment_intents/{intent['id']}/cancel")
        assert (await _check(stack)).ok  # voided: nothing held any more

        # money moved for an order tradeflow never took
        ghost = f"o-ghost-{uuid.uuid4().hex[:6]}"
        await _psp(
            stack,
            "/v1/payment_intents",
            {"order_id": ghost, "amount_cents": 500, "currency": "USD", "token": "tok_ok"},
        )
        await _fails(stack, ghost, "unknown_order")

        # a second authorization and capture for a delivered order (no restore: last)
        second = await _psp(
            stack,
            "/v1/payment_intents",
            {"order_id": delivered, "amount_cents": 250, "currency": "USD", "token": "tok_ok"},
        )
        await _psp(stack, f"/v1/payment_intents/{second['id']}/capture")
        report = await _check(stack)
        by_order = {(v.order_id, v.rule) for v in report.violations}
        assert {
            (delivered, "duplicate_authorize"),
            (delivered, "duplicate_capture"),
            (delivered, "captured"),
            (ghost, "unknown_order"),
        } <= by_order


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_money_check_reads_the_ledger_per_order_when_given_orders(
    ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path, concurrency: int
) -> None:
    async with order_stack(ts_env.client, sqlite_url, tmp_path / "psp.db") as stack:
        await scenarios.happy_path(stack)
        await scenarios.cancel_before_pickup(stack)
        delivered, _ = await _order_with(stack.engine, "o.status = 'DELIVERED'")
        cancelled, _ = await _order_with(stack.engine, "o.status = 'CANCELLED'")
        sessions = make_sessionmaker(stack.engine)
        report = await check_money(
            sessions, stack.psp, order_ids=[delivered, cancelled], concurrency=concurrency
        )
        assert report.ok and report.orders == 2, [str(v) for v in report.violations]
        await _sql(
            stack.engine,
            "UPDATE payments SET captured_cents = 0, status = 'AUTHORIZED' WHERE order_id = :o",
            o=delivered,
        )
        # Only the orders asked about are read: the broken one is left out here...
        assert (await check_money(sessions, stack.psp, order_ids=[cancelled])).ok
        # ...and named when asked about.
        report = await check_money(sessions, stack.psp, order_ids=[delivered, cancelled])
        assert report.offenders() == [delivered]
        assert {v.rule for v in report.violations} == {"captured"}


# ------------------------------------------------------- the webhook path, end to end


@pytest.fixture
async def webhook_world(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> AsyncIterator[World]:
    """The real order, payment and delivery workers on the dev server, the API, and the PSP
    simulator posting its signed webhooks to the API: ``tok_action`` cards are authorized by
    the customer's action, as after ``make up``."""
    async with world_with_webhooks(
        dev_env.client,
        sqlite_url,
        tmp_path,
        secret=WEBHOOK_SECRET,
        sku="SKU-1",
        price_cents=PRICE,
        units=20,
    ) as world:
        yield world


async def _payment_row(stack: Stack, order_id: str) -> tuple[str, int, int]:
    async with stack.engine.connect() as c:
        row = (
            await c.execute(
                text(
                    "SELECT status, authorized_cents, captured_cents FROM payments"
                    " WHERE order_id = :o"
                ),
                {"o": order_id},
            )
        ).one()
    return (row[0], row[1], row[2])


async def test_orders_authorized_by_the_customers_action_keep_a_true_payment_record(
    webhook_world: World,
) -> None:
    """The PSP's webhook, not the authorize call, says the money is held: whatever becomes of
    the order (delivered, cancelled after the authorization, cancelled before it, declined by
    the customer), tradeflow's payments row says what the PSP holds and the money check
    passes."""
    stack = webhook_world.stack
    total = PRICE + DELIVERY_FEE_CENTS
    await stack.seed_courier("k-1", 1.0)

    delivered = stack.checkout([("SKU-1", 1, PRICE)], token="tok_action")
    handle = await stack.start(delivered)
    await wait_for_view(
        handle, lambda v: v.status not in ("PENDING", "RESERVED", "AWAITING_PAYMENT")
    )
    assert (await deliver_to_the_door(stack, handle, delivered.order_id)).status == "DELIVERED"

    cancelled = stack.checkout([("SKU-1", 1, PRICE)], token="tok_action")
    handle = await stack.start(cancelled)
    await wait_for_view(handle, lambda v: v.status in ("PAID", "DISPATCHING"))
    assert (
        await handle.execute_update(UPDATE_CANCEL, CancelRequest("no"), result_type=CancelResult)
    ).accepted
    assert (await handle.result()).status == "CANCELLED"

    never = stack.checkout([("SKU-1", 1, PRICE)], token="tok_action_never")
    handle = await stack.start(never)
    await wait_for_view(handle, lambda v: v.status == "AWAITING_PAYMENT")
    assert (
        await handle.execute_update(UPDATE_CANCEL, CancelRequest("no"), result_type=CancelResult)
    ).accepted
    assert (await handle.result()).status == "CANCELLED"

    declined = stack.checkout([("SKU-1", 1, PRICE)], token="tok_action_fail")
    assert (await (await stack.start(declined)).result()).status == "FAILED"

    assert await stack.ledger(delivered.order_id) == [("authorize", total), ("capture", total)]
    assert await stack.ledger(cancelled.order_id) == [("authorize", total), ("void", total)]
    assert await stack.ledger(never.order_id) == []
    assert await stack.ledger(declined.order_id) == []

    report = await _check(stack)
    assert report.ok, [str(v) for v in report.violations]
    assert report.orders == 4
    assert report.authorized_cents == 2 * total and report.captured_cents == total
    assert await _payment_row(stack, delivered.order_id) == ("CAPTURED", total, total)
    assert await _payment_row(stack, cancelled.order_id) == ("VOIDED", total, 0)
    assert await _payment_row(stack, never.order_id) == ("VOIDED", 0, 0)
    assert await _payment_row(stack, declined.order_id) == ("DECLINED", 0, 0)
