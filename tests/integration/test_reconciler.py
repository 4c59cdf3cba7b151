"""The reconciler on the real dev server, the real API, the real workers and PSP simulator, on
SQLite and PostgreSQL: every orphan it is there for is left by a real path (Temporal down
while the API stored a row, an authorization landing after its order ended, a courier bound
after its order ended), and each is set right only by a reconcile run.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.payments import PaymentActivities
from activities.reconciler import ensure_reconciler_schedule
from cli.checks import check_money, check_stock
from domain.messages import (
    AuthorizeInput,
    CancelRequest,
    CancelResult,
    CheckoutInput,
    ReconcileInput,
    ReconcileReport,
    RefundInput,
)
from domain.names import (
    RECONCILER_SCHEDULE_ID,
    REFUND_WORKFLOW,
    UPDATE_CANCEL,
    order_workflow_id,
    refund_workflow_id,
)
from store import couriers as fleet
from store.db import make_sessionmaker
from store.orders import checkout_input_of
from tests.api.helpers import assert_problem, order_body
from tests.support import Stack, order_stack, wait_for_view
from tests.support.shop import FEE, PRICE, TOTAL, Shop, shop_api
from workflows.checkout import OrderWorkflow
from workflows.reconciler import ReconcileWorkflow

pytestmark = pytest.mark.slow


async def _reconcile(stack: Stack, **overrides: Any) -> ReconcileReport:
    """One run, as the schedule starts it, but with no grace: every row counts as old."""
    return await stack.client.execute_workflow(
        ReconcileWorkflow.run,
        ReconcileInput(**{"grace_s": 0.0, **overrides}),
        id=f"reconcile-{uuid.uuid4().hex[:8]}",
        task_queue=stack.orders_queue,
    )


async def _workflow_exists(stack: Stack, order_id: str) -> bool:
    try:
        await stack.client.get_workflow_handle(order_workflow_id(order_id)).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def _stored_while_temporal_is_down(
    stack: Stack, tmp_path: Path, db_url: str, shop: Shop, key: str
) -> tuple[str, dict[str, Any]]:
    """POST /v1/orders to an API that cannot reach Temporal: 503, the row is stored PENDING."""
    body = order_body(f"c-{uuid.uuid4().hex[:8]}", [(shop.sku, 2)])
    async with shop_api(stack, tmp_path, db_url, None) as down:
        r = await down.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
        assert_problem(r, 503, "temporal_unavailable")
    async with stack.engine.connect() as c:
        [(order_id, status)] = (
            await c.execute(
                text("SELECT order_id, status FROM orders WHERE customer_id = :c"),
                {"c": body["customer_id"]},
            )
        ).all()
    assert status == "PENDING"
    assert not await _workflow_exists(stack, order_id)
    return order_id, body


async def _stored_input(stack: Stack, order_id: str) -> CheckoutInput:
    async with stack.engine.connect() as c:
        stored = (
            await c.execute(
                text("SELECT checkout_input FROM orders WHERE order_id = :o"), {"o": order_id}
            )
        ).scalar_one()
    inp = checkout_input_of(json.loads(stored) if isinstance(stored, str) else stored)
    assert inp is not None
    return inp


async def _stock_and_money_are_exact(stack: Stack) -> None:
    sessions = make_sessionmaker(stack.engine)
    stock = await check_stock(sessions)
    assert stock.ok, [str(v) for v in stock.violations]
    money = await check_money(sessions, stack.psp)
    assert money.ok, [str(v) for v in money.violations]


async def _reconciliations(stack: Stack, subject_id: str) -> list[str]:
    async with stack.engine.connect() as c:
        rows = (
            await c.execute(
                text("SELECT action FROM reconciliations WHERE subject_id = :s ORDER BY action"),
                {"s": subject_id},
            )
        ).all()
    return [r[0] for r in rows]


# ---------------------------------------------------------------------------------- orders


async def test_an_order_stored_while_temporal_was_down_is_restarted_and_delivered_with_stock_exact(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack:
        async with shop_api(stack, tmp_path, db_url, dev_env.client) as http:
            shop = Shop(http)
            await shop.open()
            # An order whose workflow runs (waiting for its customer) is not the reconciler's.
            running = await http.post(
                "/v1/orders",
                json=order_body(
                    "c-waiting", [(shop.sku, 1)], payment={"token": "tok_action_never"}
                ),
                headers={"Idempotency-Key": "waiting"},
            )
            assert running.status_code == 202, running.text
            waiting_id = running.json()["order_id"]
            await shop.until_order(waiting_id, lambda o: o["status"] == "AWAITING_PAYMENT")

        order_id, _ = await _stored_while_temporal_is_down(stack, tmp_path, db_url, shop, "k")

        report = await _reconcile(stack)
        assert report.orders_restarted == [order_id]
        assert (report.orders_failed, report.errors) == ([], [])
        assert await _reconciliations(stack, order_id) == ["order_restarted"]

        async with shop_api(stack, tmp_path, db_url, dev_env.client) as http:
            shop.http = http
            await shop.deliver(order_id)
            order = await shop.order(order_id)
            assert order["amounts"]["captured_cents"] == TOTAL
            # 5 on sale: 2 sold to the restarted order, 1 held by the one still waiting.
            assert await shop.stock() == (2, 1, 2)

            again = await _reconcile(stack)  # nothing left to do, and nothing done twice
            assert (again.orders_restarted, again.orders_failed) == ([], [])

            r = await http.post(f"/v1/orders/{waiting_id}/cancel", json={"reason": "done"})
            assert r.status_code == 200, r.text
            await shop.until_order(waiting_id, lambda o: o["status"] == "CANCELLED")
            assert await shop.stock() == (3, 0, 2)
        await _stock_and_money_are_exact(stack)


async def test_an_order_nobody_started_in_time_is_failed_and_a_late_start_takes_nothing(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack:
        async with shop_api(stack, tmp_path, db_url, dev_env.client) as http:
            shop = Shop(http)
            await shop.open()
        order_id, body = await _stored_while_temporal_is_down(stack, tmp_path, db_url, shop, "k")

        report = await _reconcile(stack, restart_within_s=0.0)
        assert (report.orders_restarted, report.orders_failed) == ([], [order_id])
        assert await _reconciliations(stack, order_id) == ["order_failed"]
        # Those who follow the order event stream hear of it too.
        async with stack.engine.connect() as c:
            events = (
                await c.execute(
                    text("SELECT seq, status FROM order_events WHERE order_id = :o ORDER BY seq"),
                    {"o": order_id},
                )
            ).all()
        assert [tuple(e) for e in events] == [(0, "PENDING"), (1, "FAILED")]

        async with shop_api(stack, tmp_path, db_url, dev_env.client) as http:
            shop.http = http
            order = await shop.order(order_id)
            assert (order["status"], order["failure_reason"]) == ("FAILED", "NOT_STARTED")
            assert [t["status"] for t in order["timeline"]] == ["PENDING", "FAILED"]
            # The client's retry is told the outcome and starts nothing.
            r = await http.post("/v1/orders", json=body, headers={"Idempotency-Key": "k"})
            assert r.status_code == 200, r.text
            assert (r.json()["order_id"], r.json()["status"]) == (order_id, "FAILED")
            assert not await _workflow_exists(stack, order_id)

            # A start racing the fail (a retry that read PENDING just before) runs, but finds
            # its lines fenced: it reserves nothing, asks the PSP for nothing, and the read
            # model keeps the reconciler's outcome.
            inp = await _stored_input(stack, order_id)
            late = await stack.client.execute_workflow(
                OrderWorkflow.run,
                inp,
                id=order_workflow_id(order_id),
                task_queue=stack.orders_queue,
            )
            assert (late.status, late.failure_reason) == ("FAILED", "OUT_OF_STOCK")
            assert await shop.stock() == (5, 0, 0)
            assert await stack.ledger(order_id) == []
            order = await shop.order(order_id)
            assert (order["status"], order["failure_reason"]) == ("FAILED", "NOT_STARTED")
        await _stock_and_money_are_exact(stack)


async def test_an_order_whose_workflow_was_terminated_before_it_began_is_failed_cleanly(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, sqlite_url, tmp_path / "psp.db") as stack:
        async with shop_api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop = Shop(http)
            await shop.open()
        order_id, _ = await _stored_while_temporal_is_down(stack, tmp_path, sqlite_url, shop, "k")
        inp = await _stored_input(stack, order_id)
        # Started where no worker polls, then terminated by an operator: closed, still PENDING.
        handle = await stack.client.start_workflow(
            OrderWorkflow.run, inp, id=order_workflow_id(order_id), task_queue="nobody-polls"
        )
        await handle.terminate("operator")

        report = await _reconcile(stack)  # within the restart window, yet not restartable
        assert (report.orders_restarted, report.orders_failed) == ([], [order_id])
        async with shop_api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop.http = http
            order = await shop.order(order_id)
            assert (order["status"], order["failure_reason"]) == ("FAILED", "NOT_STARTED")
            assert await shop.stock() == (5, 0, 0)
        await _stock_and_money_are_exact(stack)


# --------------------------------------------------------------------------------- refunds


async def test_a_refund_stored_while_temporal_was_down_is_restarted_and_the_cap_holds(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack:
        async with shop_api(stack, tmp_path, db_url, dev_env.client) as http:
            shop = Shop(http)
            await shop.open()
            order_id = await shop.place()
            await shop.deliver(order_id)

        async with shop_api(stack, tmp_path, db_url, None) as down:
            r = await Shop(down).refund(order_id, PRICE, "while-down")
            assert_problem(r, 503, "temporal_unavailable")
        async with stack.engine.connect() as c:
            [(refund_id, status)] = (
                await c.execute(
                    text("SELECT refund_id, status FROM refunds WHERE order_id = :o"),
                    {"o": order_id},
                )
            ).all()
        assert status == "PENDING"  # stored, holding PRICE of the cap, and nobody runs it

        report = await _reconcile(stack)
        assert report.refunds_restarted == [refund_id]
        assert (report.refunds_failed, report.for_operator, report.errors) == ([], [], [])

        async with shop_api(stack, tmp_path, db_url, dev_env.client) as http:
            shop.http = http
            done = await shop.until_refund(order_id, refund_id)
            assert (done["status"], done["amount_cents"]) == ("SUCCEEDED", PRICE)
            # The cap counts it: one cent more than what is left is refused, what is left passes.
            left = TOTAL - PRICE
            assert left == PRICE + FEE
            assert_problem(
                await shop.refund(order_id, left + 1, "too-much"), 422, "refund_exceeds_captured"
            )
            # The client's retry of the restarted refund is answered with it, although a new
            # refund of that body would now be refused.
            again = await shop.refund(order_id, PRICE, "while-down")
            assert again.status_code == 200, again.text
            assert again.json()["refund_id"] == refund_id
            rest = await shop.refund(order_id, left, "the-rest")
            assert rest.status_code == 202, rest.text
            await shop.until_refund(order_id, rest.json()["refund_id"])
            order = await shop.order(order_id)
            assert order["amounts"]["refunded_cents"] == TOTAL
        assert [a for k, a in await stack.ledger(order_id) if k == "refund"] == [PRICE, left]
        assert (await _reconcile(stack)).refunds_restarted == []
        await _stock_and_money_are_exact(stack)


async def test_a_refund_whose_workflow_ended_pending_is_reported_and_keeps_its_hold(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, sqlite_url, tmp_path / "psp.db") as stack:
        async with shop_api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop = Shop(http)
            await shop.open()
            order_id = await shop.place()
            await shop.deliver(order_id)
        async with shop_api(stack, tmp_path, sqlite_url, None) as down:
            assert_problem(
                await Shop(down).refund(order_id, PRICE, "k"), 503, "temporal_unavailable"
            )
        async with stack.engine.connect() as c:
            refund_id = (
                await c.execute(
                    text("SELECT refund_id FROM refunds WHERE order_id = :o"), {"o": order_id}
                )
            ).scalar_one()
        # Its workflow started and was terminated: whether the PSP got the refund is unknown.
        handle = await stack.client.start_workflow(
            REFUND_WORKFLOW,
            RefundInput(refund_id, order_id, "unknown", PRICE, "USD", "main"),
            id=refund_workflow_id(refund_id),
            task_queue="nobody-polls",
        )
        await handle.terminate("operator")

        report = await _reconcile(stack)
        assert (report.refunds_restarted, report.refunds_failed) == ([], [])
        assert len(report.for_operator) == 1 and refund_id in report.for_operator[0]
        async with shop_api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop.http = http
            r = await http.get(f"/v1/orders/{order_id}/refunds/{refund_id}")
            assert r.json()["status"] == "PENDING"
            # Its amount stays on the cap until someone decides.
            assert_problem(
                await shop.refund(order_id, TOTAL - PRICE + 1, "more"),
                422,
                "refund_exceeds_captured",
            )


# ------------------------------------------------------------------- finished orders' leftovers


async def test_a_finished_order_whose_authorization_landed_late_is_voided_and_money_checks(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack:
        await stack.seed_product("SKU-scarce", PRICE, 1)
        inp = stack.checkout([("SKU-scarce", 2, PRICE)])
        view = await (await stack.start(inp)).result()
        assert (view.status, view.failure_reason) == ("FAILED", "OUT_OF_STOCK")
        # An authorize attempt that was still on its way lands after the order ended (what
        # the real payment activity does, under the saga's own key).
        payments = PaymentActivities(
            http=stack.psp, sessionmaker=make_sessionmaker(stack.engine), psp_url="http://psp"
        )
        amount = view.amounts.total_cents
        late = await ActivityEnvironment().run(
            payments.authorize_payment,
            AuthorizeInput(inp.order_id, amount, "USD", "tok_ok", f"authorize:{inp.order_id}"),
        )
        assert late.status == "AUTHORIZED"
        money = await check_money(make_sessionmaker(stack.engine), stack.psp)
        assert [(v.rule, v.order_id) for v in money.violations] == [
            ("dangling_authorization", inp.order_id)
        ]

        report = await _reconcile(stack)
        assert report.authorizations_voided == [inp.order_id]
        assert (report.authorizations_checked, report.errors) == (1, [])
        assert await stack.ledger(inp.order_id) == [("authorize", amount), ("void", amount)]
        await _stock_and_money_are_exact(stack)
        assert await _reconciliations(stack, inp.order_id) == ["authorization_voided"]

        again = await _reconcile(stack)  # looked at once: not asked about again
        assert (again.authorizations_voided, again.authorizations_checked) == ([], 0)


async def test_a_courier_bound_to_a_finished_order_is_released_and_offered_again(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack:
        await stack.seed_product("SKU-r", PRICE, 5)
        await stack.seed_courier("k-stranded", 0.5)
        declined = stack.checkout([("SKU-r", 1, PRICE)], token="tok_decline")
        view = await (await stack.start(declined)).result()
        assert (view.status, view.failure_reason) == ("FAILED", "PAYMENT_DECLINED")
        # The offer of a race lost to the end of the order lands after it (issue 7, defect 5).
        sessions = make_sessionmaker(stack.engine)
        async with sessions() as s, s.begin():
            assert await fleet.offer(s, order_id=declined.order_id, courier_id="k-stranded")
        assert await stack.courier("k-stranded") == (declined.order_id, "OFFERED")

        report = await _reconcile(stack)
        assert report.couriers_released == ["k-stranded"]
        assert await stack.courier("k-stranded") == (None, None)
        # (Its declined intent was looked at too: it holds nothing.)
        assert await _reconciliations(stack, declined.order_id) == [
            "authorization_checked",
            "courier_released",
        ]

        # Free again: the next order near it is offered to it.
        nxt = stack.checkout([("SKU-r", 1, PRICE)])
        handle = await stack.start(nxt)
        await wait_for_view(handle, lambda v: v.delivery.offered_to == "k-stranded")
        # Bound to a running order: the reconciler leaves it alone.
        assert (await _reconcile(stack)).couriers_released == []
        assert await stack.courier("k-stranded") == (nxt.order_id, "OFFERED")
        await handle.execute_update(UPDATE_CANCEL, CancelRequest("done"), result_type=CancelResult)
        assert (await handle.result()).status == "CANCELLED"
        assert await stack.courier("k-stranded") == (None, None)


async def test_the_reconciler_schedule_is_created_then_follows_changed_settings(
    dev_env: WorkflowEnvironment,
) -> None:
    first = await ensure_reconciler_schedule(
        dev_env.client, task_queue="unused-q", every_s=3600, inp=ReconcileInput()
    )
    second = await ensure_reconciler_schedule(
        dev_env.client, task_queue="unused-q", every_s=120, inp=ReconcileInput(grace_s=5)
    )
    handle = dev_env.client.get_schedule_handle(RECONCILER_SCHEDULE_ID)
    try:
        desc = await handle.describe()
        assert (first, second) == ("created", "updated")
        assert desc.schedule.spec.intervals[0].every.total_seconds() == 120
    finally:
        await handle.delete()
