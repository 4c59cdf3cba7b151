"""Refunds through the real API and the real workflows on the Temporal dev server.

An order is placed and delivered over HTTP (the courier's events included), then refunded over
HTTP: the answers, the Refund resource, the Order resource's overlay (refunds, refunded money,
payment status, status still DELIVERED), the race for the last cents between two requests,
and a refund stored while the workflow service is down, started by the retry. On SQLite and
on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from tests.api.helpers import assert_problem
from tests.support import order_stack
from tests.support.shop import TOTAL, Shop, shop_api

pytestmark = pytest.mark.slow


async def test_refunds_over_http_from_not_refundable_to_fully_refunded(
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

        # Before capture there is nothing to refund; malformed requests never get that far.
        assert_problem(await shop.refund(order_id, 100, "early"), 409, "not_refundable")
        assert_problem(await shop.refund(order_id, 100, None), 400, "validation_error")
        assert_problem(await shop.refund("o_nope", 100, "k"), 404, "not_found")
        assert_problem(await shop.refund(order_id, 0, "k"), 422, "validation_error")
        assert_problem(await shop.refund(order_id, 10.5, "k"), 422, "validation_error")  # type: ignore[arg-type]
        r = await shop.refund(order_id, 100, "k", restock=[{"sku": "SKU-other", "quantity": 1}])
        assert_problem(r, 422, "validation_error")
        r = await shop.refund(order_id, 100, "k", restock=[{"sku": shop.sku, "quantity": 3}])
        assert_problem(r, 422, "validation_error")

        await shop.deliver(order_id)
        assert await shop.stock() == (3, 0, 2)

        # A partial refund with one unit back on sale: 202, then the same request is a 200.
        first = await shop.refund(
            order_id, 1000, "refund-1", restock=[{"sku": shop.sku, "quantity": 1}]
        )
        assert first.status_code == 202, first.text
        refund = first.json()
        assert refund["status"] == "PENDING" and refund["order_id"] == order_id
        assert refund["restock"] == [{"sku": shop.sku, "quantity": 1}]
        assert first.headers["location"] == f"/v1/orders/{order_id}/refunds/{refund['refund_id']}"
        again = await shop.refund(
            order_id, 1000, "refund-1", restock=[{"sku": shop.sku, "quantity": 1}]
        )
        assert again.status_code == 200, again.text
        assert again.json()["refund_id"] == refund["refund_id"]
        reused = assert_problem(
            await shop.refund(order_id, 999, "refund-1"), 422, "idempotency_key_reused"
        )
        assert reused["refund_id"] == refund["refund_id"]

        done = await shop.until_refund(order_id, refund["refund_id"])
        assert {"refund_id", "order_id", "amount_cents", "status", "restock", "created_at"} <= set(
            done
        )
        assert (done["status"], done["amount_cents"]) == ("SUCCEEDED", 1000)
        assert await shop.stock() == (4, 0, 1)
        order = await shop.order(order_id)
        assert order["status"] == "DELIVERED"
        assert order["amounts"]["refunded_cents"] == 1000
        assert order["amounts"]["captured_cents"] == TOTAL
        assert order["payment"]["status"] == "PARTIALLY_REFUNDED"
        assert [(x["refund_id"], x["status"]) for x in order["refunds"]] == [
            (refund["refund_id"], "SUCCEEDED")
        ]
        listed = (await http.get("/v1/orders", params={"customer_id": order["customer_id"]})).json()
        assert listed["items"][0]["amounts"]["refunded_cents"] == 1000
        assert listed["items"][0]["payment"]["status"] == "PARTIALLY_REFUNDED"

        # Two requests race for what is left, each asking for all of it: exactly one passes.
        left = TOTAL - 1000
        racing = await asyncio.gather(
            shop.refund(order_id, left, "race-a"), shop.refund(order_id, left, "race-b")
        )
        assert sorted(r.status_code for r in racing) == [202, 422], [r.text for r in racing]
        loser = next(r for r in racing if r.status_code == 422)
        assert assert_problem(loser, 422, "refund_exceeds_captured")["refundable_cents"] == 0
        winner = next(r for r in racing if r.status_code == 202).json()
        assert (await shop.until_refund(order_id, winner["refund_id"]))["status"] == "SUCCEEDED"
        assert_problem(await shop.refund(order_id, 1, "one-more"), 422, "refund_exceeds_captured")

        order = await shop.order(order_id)
        assert order["status"] == "DELIVERED"
        assert order["amounts"]["refunded_cents"] == TOTAL
        assert order["payment"]["status"] == "REFUNDED"
        assert [x["amount_cents"] for x in order["refunds"]] == [1000, left]
        listing = (await http.get(f"/v1/orders/{order_id}/refunds")).json()
        assert [x["refund_id"] for x in listing["items"]] == [
            refund["refund_id"],
            winner["refund_id"],
        ]
        assert await stack.ledger(order_id) == [
            ("authorize", TOTAL),
            ("capture", TOTAL),
            ("refund", 1000),
            ("refund", left),
        ]

        r = await http.get(f"/v1/orders/{order_id}/refunds/r_nope")
        assert_problem(r, 404, "not_found")
        r = await http.get(f"/v1/orders/o_nope/refunds/{refund['refund_id']}")
        assert_problem(r, 404, "not_found")
        assert_problem(await http.get("/v1/orders/o_nope/refunds"), 404, "not_found")


async def test_refund_stored_while_temporal_is_down_is_started_by_the_retry(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, sqlite_url, tmp_path / "psp.db") as stack:
        async with shop_api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop = Shop(http)
            await shop.open()
            order_id = await shop.place()
            await shop.deliver(order_id)

        async with shop_api(stack, tmp_path, sqlite_url, None) as down:
            r = await Shop(down).refund(order_id, 500, "while-down")
            assert_problem(r, 503, "temporal_unavailable")
        async with stack.engine.connect() as c:
            rows = (
                await c.execute(
                    text("SELECT refund_id, status FROM refunds WHERE order_id = :o"),
                    {"o": order_id},
                )
            ).all()
        assert [status for _, status in rows] == ["PENDING"]  # stored, holding its 500

        async with shop_api(stack, tmp_path, sqlite_url, dev_env.client) as http:
            shop.http = http
            r = await shop.refund(order_id, 500, "while-down")
            assert r.status_code == 200, r.text  # a repeat of the stored refund...
            assert r.json()["refund_id"] == rows[0][0]
            done = await shop.until_refund(order_id, rows[0][0])  # ...that now runs
            assert done["status"] == "SUCCEEDED"
            assert (await shop.order(order_id))["amounts"]["refunded_cents"] == 500
        assert [a for k, a in await stack.ledger(order_id) if k == "refund"] == [500]
