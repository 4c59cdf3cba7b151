"""Over HTTP, on the real workflows: repeats that change nothing, and an operator's repair.

A courier app that sends the same event twice, a client that repeats an accepted cancel, and
an operator who repairs an order parked in NEEDS_ATTENTION (``POST
/v1/admin/orders/{id}/repair``, what ``tradeflow repair`` calls). On SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from temporalio.testing import WorkflowEnvironment

from tests.api.helpers import ADMIN_TOKEN, assert_problem, order_body
from tests.support import order_stack
from tests.support.shop import Shop, shop_api

pytestmark = pytest.mark.slow


def _set_fence(db_url: str, order_id: str, state: str) -> None:
    eng = sa.create_engine(db_url)
    with eng.begin() as c:
        c.execute(
            sa.text("UPDATE reservations SET state = :s WHERE order_id = :o"),
            {"s": state, "o": order_id},
        )
    eng.dispose()


async def _event(shop: Shop, order_id: str, type_: str) -> httpx.Response:
    return await shop.http.post(
        f"/v1/deliveries/{order_id}/events", json={"courier_id": shop.courier, "type": type_}
    )


async def test_repeated_courier_events_and_cancels_are_answered_with_no_second_effect(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with (
        order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack,
        shop_api(stack, tmp_path, db_url, dev_env.client) as http,
    ):
        shop = Shop(http)
        await shop.open()
        order_id = await shop.place()
        await shop.until_order(order_id, lambda o: o["delivery"]["offered_to"] == shop.courier)
        assert (await _event(shop, order_id, "accepted")).status_code == 202
        await shop.until_order(order_id, lambda o: o["status"] == "COURIER_ASSIGNED")
        again = await _event(shop, order_id, "accepted")  # the delivery workflow has closed
        assert again.status_code == 202, again.text
        assert again.json()["duplicate"] is True

        assert (await _event(shop, order_id, "picked_up")).status_code == 202
        await shop.until_order(order_id, lambda o: o["status"] == "OUT_FOR_DELIVERY")
        history = await dev_env.client.get_workflow_handle(f"order-{order_id}").fetch_history()
        for _ in range(5):
            r = await _event(shop, order_id, "picked_up")
            assert r.status_code == 202, r.text
            assert r.json()["duplicate"] is True
        after = await dev_env.client.get_workflow_handle(f"order-{order_id}").fetch_history()
        assert len(after.events) == len(history.events)

        assert (await _event(shop, order_id, "delivered")).status_code == 202
        await shop.until_order(order_id, lambda o: o["status"] == "DELIVERED")
        r = await _event(shop, order_id, "delivered")  # the order workflow has closed
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "DELIVERED"
        ledger = await stack.ledger(order_id)
        assert [k for k, _ in ledger] == ["authorize", "capture"]  # captured once
        assert await shop.stock() == (3, 0, 2)

        # Another courier repeating someone else's event still gets its 409.
        r = await http.post(
            f"/v1/deliveries/{order_id}/events", json={"courier_id": "k-other", "type": "delivered"}
        )
        assert r.status_code == 409, r.text

        # An accepted cancel, repeated: 200 with the order each time, one cancel in history.
        body = order_body("c-cancel", [(shop.sku, 1)], payment={"token": "tok_action_never"})
        r = await http.post("/v1/orders", json=body, headers={"Idempotency-Key": "c-1"})
        cancel_id = r.json()["order_id"]
        await shop.until_order(cancel_id, lambda o: o["status"] == "AWAITING_PAYMENT")
        for _ in range(3):
            r = await http.post(f"/v1/orders/{cancel_id}/cancel", json={"reason": "no"})
            assert r.status_code == 200, r.text
        final = await shop.until_order(cancel_id, lambda o: o["status"] == "CANCELLED")
        assert final["payment"]["status"] == "VOIDED"
        h = await dev_env.client.get_workflow_handle(f"order-{cancel_id}").fetch_history()
        accepted = [
            e for e in h.events if e.HasField("workflow_execution_update_accepted_event_attributes")
        ]
        assert len(accepted) == 1


async def test_operator_repairs_an_order_parked_in_needs_attention(
    dev_env: WorkflowEnvironment, db_url: str, tmp_path: Path
) -> None:
    async with (
        order_stack(dev_env.client, db_url, tmp_path / "psp.db") as stack,
        shop_api(stack, tmp_path, db_url, dev_env.client) as http,
    ):
        shop = Shop(http)
        await shop.open()
        admin = {"X-Admin-Token": ADMIN_TOKEN}
        body = order_body("c-park", [(shop.sku, 2)], payment={"token": "tok_action_never"})
        r = await http.post("/v1/orders", json=body, headers={"Idempotency-Key": "p-1"})
        order_id = r.json()["order_id"]
        await shop.until_order(order_id, lambda o: o["status"] == "AWAITING_PAYMENT")

        repair = f"/v1/admin/orders/{order_id}/repair"
        r = await http.post(repair, json={"reason": "nothing is wrong"}, headers=admin)
        assert_problem(r, 409, "not_repairable")  # not parked
        assert (await http.post(repair, json={"reason": "x"})).status_code == 401

        _set_fence(db_url, order_id, "CONFIRMED")  # the cancel of the hold will be refused
        r = await http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "no"})
        assert r.status_code == 200, r.text
        parked = await shop.until_order(order_id, lambda o: o["status"] == "NEEDS_ATTENTION")
        assert parked["payment"]["status"] == "VOIDED"
        assert await shop.stock() == (3, 2, 0)

        assert_problem(
            await http.post(repair, json={"reason": ""}, headers=admin), 422, "validation_error"
        )
        _set_fence(db_url, order_id, "TRIED")
        r = await http.post(
            repair, json={"reason": "fence row restored", "operator": "ops-7"}, headers=admin
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "CANCELLED"
        assert r.json()["repair"] == {"status": "CANCELLED", "remaining": []}
        assert await shop.stock() == (5, 0, 0)
        assert_problem(
            await http.post(repair, json={"reason": "again"}, headers=admin), 409, "not_repairable"
        )
        # The customer never completed the payment: the intent was cancelled, nothing moved.
        assert await stack.ledger(order_id) == []
        intent = await stack.psp.get(f"/v1/payment_intents/{parked['payment']['payment_id']}")
        assert intent.json()["status"] == "canceled"
