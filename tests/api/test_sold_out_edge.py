"""The sold-out edge (infra/sold_out_edge.py) and its write-behind (api/write_behind.py), on the
real Redis, the real databases and the Temporal dev server (stand-in workflows).

A loser of a sold-out hot SKU is answered from Redis alone: 202 FAILED / OUT_OF_STOCK with no
workflow, readable (GET, cancel, its customer's token) before any SQL write, idempotent by
its key, inside the customer's one rate-limit budget; the write-behind then writes its row,
timeline and events once, whatever is redelivered, taken over or lost with the stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.service import RPCError, RPCStatusCode

from api.auth import mint_token
from api.orders_service import EdgeOutcome, OrdersService
from api.schemas import CheckoutBody
from api.write_behind import WriteBehind
from domain.names import order_workflow_id
from domain.roles import Role
from infra.hot_stock import counter_key
from infra.redis import make_redis
from infra.sold_out_edge import (
    DRAIN_GROUP,
    DRAIN_STREAM,
    INDEX_SINCE_KEY,
    complete_index,
    index_key,
    order_copy_key,
)
from store.db import make_sessionmaker
from store.orders import FINAL_SEQ
from tests.api.conftest import ApiFactory
from tests.api.helpers import REDIS_URL, Api, assert_problem, order_body, unique

SECRET = "edge-test-secret-" + "s" * 32


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = make_redis(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def edge_api(api_factory: ApiFactory, db_url: str) -> AsyncIterator[Api]:
    """The app on SQLite and PostgreSQL, its write-behind paused: each test drains when it
    means to (``drain``), so "not written yet" is a state a test can look at."""
    async with api_factory(db_url=db_url) as api:
        await api.app.state.write_behind.stop()
        yield api


async def hot_sku(api: Api, available: int) -> str:
    sku = unique("HOT")
    await api.put_product(sku, 4999, hot=True)
    r = await api.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "main", "available": available},
        headers=api.admin,
    )
    assert r.status_code == 200, r.text
    return sku


async def place(api: Api, body: dict[str, Any], key: str) -> Any:
    return await api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": key})


def reader(api: Api, redis: aioredis.Redis, **kw: Any) -> WriteBehind:
    return WriteBehind(make_sessionmaker(api.engine), redis, api.settings, **kw)


async def drain(api: Api, redis: aioredis.Redis) -> int:
    wb = reader(api, redis)
    await wb.create_group()
    n = 0
    while await wb.drain_once():
        n += 1
    return wb.written


async def sql_rows(api: Api, order_id: str) -> tuple[list[Any], list[str], list[str]]:
    row = await api.sql(
        "SELECT status, failure_reason, seq, request_hash FROM orders WHERE order_id = :o",
        o=order_id,
    )
    timeline = await api.sql(
        "SELECT status FROM order_timeline WHERE order_id = :o ORDER BY seq", o=order_id
    )
    events = await api.sql(
        "SELECT status FROM order_events WHERE order_id = :o ORDER BY seq", o=order_id
    )
    return row, [t[0] for t in timeline], [e[0] for e in events]


async def no_workflow(api: Api, order_id: str) -> None:
    assert api.temporal is not None
    with pytest.raises(RPCError) as gone:
        await api.temporal.get_workflow_handle(order_workflow_id(order_id)).describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND


async def test_a_loser_is_answered_without_a_workflow_or_sql_and_readable_at_once(
    edge_api: Api, redis: aioredis.Redis
) -> None:
    api = edge_api
    sku = await hot_sku(api, 0)
    body = order_body(unique("c"), [(sku, 1)])
    r = await place(api, body, "k-1")

    assert r.status_code == 202, r.text
    order = r.json()
    assert (order["status"], order["failure_reason"]) == ("FAILED", "OUT_OF_STOCK")
    assert [t["status"] for t in order["timeline"]] == ["PENDING", "FAILED"]
    assert order["items"] == [{"sku": sku, "quantity": 1, "unit_price_cents": 4999}]
    assert r.headers["location"] == f"/v1/orders/{order['order_id']}"
    await no_workflow(api, order["order_id"])
    # Nothing in SQL yet: the row lives in Redis until the write-behind writes it.
    assert await sql_rows(api, order["order_id"]) == ([], [], [])

    got = await api.http.get(f"/v1/orders/{order['order_id']}")
    assert got.status_code == 200, got.text
    assert got.json() == order  # the edge's own JSON is the Order the model serializes
    refused = await api.http.post(f"/v1/orders/{order['order_id']}/cancel", json={"reason": "x"})
    assert_problem(refused, 409, "not_cancellable")

    # The same after the drain, now from SQL.
    assert await drain(api, redis) >= 1
    row, timeline, events = await sql_rows(api, order["order_id"])
    assert [tuple(x) for x in row] == [("FAILED", "OUT_OF_STOCK", FINAL_SEQ, row[0][3])]
    assert timeline == events == ["PENDING", "FAILED"]
    await redis.delete(order_copy_key(order["order_id"]))  # SQL alone answers now
    got = await api.http.get(f"/v1/orders/{order['order_id']}")
    assert got.json() == order
    refused = await api.http.post(f"/v1/orders/{order['order_id']}/cancel", json={"reason": "x"})
    assert_problem(refused, 409, "not_cancellable")


async def test_a_repeat_gets_the_same_loser_and_another_body_is_422(
    edge_api: Api, redis: aioredis.Redis
) -> None:
    api = edge_api
    sku = await hot_sku(api, 0)
    body = order_body(unique("c"), [(sku, 1)])
    first = await place(api, body, "k-1")
    again = await place(api, body, "k-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json()
    other = await place(api, order_body(body["customer_id"], [(sku, 2)]), "k-1")
    problem = assert_problem(other, 422, "idempotency_key_reused")
    assert problem["order_id"] == first.json()["order_id"]
    # Another customer may use the same key (and a customer "a:b" with key "c" is not
    # customer "a" with key "b:c").
    twin = await place(api, order_body(body["customer_id"] + ":k", [(sku, 1)]), "1")
    assert twin.status_code == 202 and twin.json()["order_id"] != first.json()["order_id"]

    # Drained, then the copy gone: the repeat is answered by SQL, still the same order.
    await drain(api, redis)
    await redis.delete(order_copy_key(first.json()["order_id"]))
    again = await place(api, body, "k-1")
    assert (again.status_code, again.json()["order_id"]) == (200, first.json()["order_id"])
    rows = await api.sql(
        "SELECT order_id FROM orders WHERE customer_id = :c", c=body["customer_id"]
    )
    assert len(rows) == 1


async def test_a_winners_key_repeated_after_the_sell_out_gets_the_winners_order(
    edge_api: Api, redis: aioredis.Redis
) -> None:
    api = edge_api
    sku = await hot_sku(api, 1)
    winner = order_body(unique("c"), [(sku, 1)])
    first = await place(api, winner, "w-1")
    assert first.status_code == 202 and first.json()["status"] == "PENDING", first.text
    # Sold out (the stand-in workflow does not claim, so the admin empties the counter).
    r = await api.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "main", "available": 0},
        headers=api.admin,
    )
    assert r.status_code == 200
    loser = await place(api, order_body(unique("c"), [(sku, 1)]), "l-1")
    assert loser.json()["status"] == "FAILED"

    again = await place(api, winner, "w-1")
    assert again.status_code == 200, again.text
    assert (again.json()["order_id"], again.json()["status"]) == (
        first.json()["order_id"],
        "PENDING",
    )
    reused = await place(api, order_body(winner["customer_id"], [(sku, 3)]), "w-1")
    assert_problem(reused, 422, "idempotency_key_reused")

    # The index lost the key and knows it may be incomplete (Redis flushed): SQL is asked.
    await redis.delete(index_key(winner["customer_id"], "w-1"), INDEX_SINCE_KEY)
    again = await place(api, winner, "w-1")
    assert (again.status_code, again.json()["order_id"]) == (200, first.json()["order_id"])
    # ... and a new loser is still answered at the edge, SQL having said "no such key".
    fresh = await place(api, order_body(unique("c"), [(sku, 1)]), "l-2")
    assert (fresh.status_code, fresh.json()["status"]) == (202, "FAILED")
    await no_workflow(api, fresh.json()["order_id"])

    # Completing the index from SQL gives the winner's key back and sets the marker.
    assert await complete_index(make_sessionmaker(api.engine), redis, ttl_s=3600) >= 1
    assert await redis.get(index_key(winner["customer_id"], "w-1")) == (
        f"n|{first.json()['order_id']}"
    )
    assert await redis.exists(INDEX_SINCE_KEY)
    again = await place(api, winner, "w-1")
    assert (again.status_code, again.json()["order_id"]) == (200, first.json()["order_id"])


async def test_losers_and_normal_orders_share_the_customers_rate_limit(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(TRADEFLOW_CHECKOUT_RATE="1/h", TRADEFLOW_CHECKOUT_BURST=2) as api:
        hot = await hot_sku(api, 0)
        plain = unique("SKU")
        await api.put_product(plain)
        customer = unique("c")
        assert (await place(api, order_body(customer, [(plain, 1)]), "a")).status_code == 202
        loser = await place(api, order_body(customer, [(hot, 1)]), "b")
        assert (loser.status_code, loser.json()["status"]) == (202, "FAILED")
        refused = await place(api, order_body(customer, [(hot, 1)]), "c")
        assert_problem(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        assert_problem(
            await place(api, order_body(customer, [(plain, 1)]), "d"), 429, "rate_limited"
        )
        # Repeats are answered before the limit, on both paths.
        assert (await place(api, order_body(customer, [(hot, 1)]), "b")).status_code == 200
        assert (await place(api, order_body(customer, [(plain, 1)]), "a")).status_code == 200
        # Another customer has a budget of its own.
        other = await place(api, order_body(unique("c"), [(hot, 1)]), "b")
        assert other.status_code == 202


async def test_the_write_behind_writes_each_loser_once_whatever_is_redelivered(
    edge_api: Api, redis: aioredis.Redis
) -> None:
    api = edge_api
    sku = await hot_sku(api, 0)
    ids = []
    for i in range(5):
        r = await place(api, order_body(unique("c"), [(sku, 1)]), f"k-{i}")
        ids.append(r.json()["order_id"])
    copy = await redis.get(order_copy_key(ids[0]))
    assert copy is not None
    await drain(api, redis)
    # Delivered again (a reader that died after its commit, before its XACK).
    await redis.xadd(DRAIN_STREAM, {"row": copy})
    await drain(api, redis)
    for order_id in ids:
        row, timeline, events = await sql_rows(api, order_id)
        assert (len(row), timeline, events) == (1, ["PENDING", "FAILED"], ["PENDING", "FAILED"])
    stored = json.loads(copy)
    [(view, inp)] = await api.sql(
        "SELECT view, checkout_input FROM orders WHERE order_id = :o", o=ids[0]
    )
    view = json.loads(view) if isinstance(view, str) else view
    inp = json.loads(inp) if isinstance(inp, str) else inp
    assert view == stored["view"]
    assert inp["order_id"] == ids[0] and inp["lines"][0]["hot"] is True
    # Acknowledged and deleted: nothing of these is left in the stream.
    left = await redis.xrange(DRAIN_STREAM)
    assert not [e for e in left if json.loads(e[1]["row"])["order_id"] in ids]
    # Listings show them once drained.
    listed = await api.http.get("/v1/orders", params={"customer_id": stored["customer_id"]})
    assert [o["order_id"] for o in listed.json()["items"]] == [ids[0]]


async def test_a_dead_readers_pending_entry_is_taken_over(
    edge_api: Api, redis: aioredis.Redis
) -> None:
    api = edge_api
    sku = await hot_sku(api, 0)
    r = await place(api, order_body(unique("c"), [(sku, 1)]), "k-1")
    order_id = r.json()["order_id"]
    dead = reader(api, redis, consumer="dead-api")
    await dead.create_group()
    # The dead API read it (so it is pending under its name) and never wrote it.
    got = await redis.xreadgroup(DRAIN_GROUP, "dead-api", {DRAIN_STREAM: ">"}, count=10_000)
    assert any(json.loads(f["row"])["order_id"] == order_id for _, items in got for _, f in items)
    live = WriteBehind(
        make_sessionmaker(api.engine),
        redis,
        api.settings.model_copy(update={"write_behind_reclaim_s": 0.2}),
        consumer="live-api",
    )
    assert await live.drain_once() == 0  # nothing new, and not idle long enough yet
    assert (await sql_rows(api, order_id))[0] == []
    await asyncio.sleep(0.3)
    live._next_reclaim = 0.0
    assert await live.drain_once() >= 1
    assert len((await sql_rows(api, order_id))[0]) == 1
    pending = await redis.xpending_range(DRAIN_STREAM, DRAIN_GROUP, "-", "+", 10_000, "dead-api")
    assert pending == []


async def test_the_running_write_behind_makes_its_group_again_after_the_stream_is_lost(
    api_factory: ApiFactory, db_url: str, redis: aioredis.Redis
) -> None:
    async with api_factory(db_url=db_url) as api:
        sku = await hot_sku(api, 0)
        first = await place(api, order_body(unique("c"), [(sku, 1)]), "k-1")
        await settled(api, first.json()["order_id"])
        # Redis restarted empty, as far as the stream goes: no stream, no group.
        await redis.delete(DRAIN_STREAM)
        second = await place(api, order_body(unique("c"), [(sku, 1)]), "k-2")
        await settled(api, second.json()["order_id"])
        assert await redis.xinfo_groups(DRAIN_STREAM)


async def settled(api: Api, order_id: str, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not (await sql_rows(api, order_id))[0]:
        assert time.monotonic() < deadline, f"{order_id} not written behind"
        await asyncio.sleep(0.05)


async def test_the_customer_reads_an_undrained_loser_with_its_token(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(TRADEFLOW_AUTH="on", TRADEFLOW_JWT_SECRET=SECRET) as api:
        await api.app.state.write_behind.stop()
        sku = await hot_sku(api, 0)
        customer = unique("c")

        def token(sub: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {mint_token(api.settings, Role.CUSTOMER, sub)}"}

        r = await api.http.post(
            "/v1/orders",
            json=order_body(customer, [(sku, 1)]),
            headers={"Idempotency-Key": "k-1", **token(customer)},
        )
        assert r.status_code == 202, r.text
        order_id = r.json()["order_id"]
        mine = await api.http.get(f"/v1/orders/{order_id}", headers=token(customer))
        assert (mine.status_code, mine.json()["status"]) == (200, "FAILED")
        theirs = await api.http.get(f"/v1/orders/{order_id}", headers=token(unique("c")))
        assert_problem(theirs, 404, "not_found")
        # The fast path answers in the route's order: credentials, key, customer.
        body = order_body(customer, [(sku, 1)])
        anonymous = await api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": ""})
        assert_problem(anonymous, 401, "unauthorized")
        keyless = await api.http.post(
            "/v1/orders", json=body, headers={"Idempotency-Key": "", **token(customer)}
        )
        assert_problem(keyless, 400, "validation_error")
        other = await api.http.post(
            "/v1/orders", json=body, headers={"Idempotency-Key": "k-9", **token(unique("c"))}
        )
        assert_problem(other, 403, "forbidden")


async def test_a_price_changed_by_another_api_is_the_one_the_loser_gets(
    api_factory: ApiFactory, redis: aioredis.Redis
) -> None:
    """This process remembers the catalogue entries it priced from; the script checks them
    against the cache, so another API's price change (its invalidation, then a new entry)
    is what the next checkout here is priced at."""
    async with api_factory() as api:
        sku = await hot_sku(api, 0)
        first = await place(api, order_body(unique("c"), [(sku, 1)]), "k-1")
        assert first.json()["items"][0]["unit_price_cents"] == 4999
        cache_key = api.app.state.tradeflow.catalogue.cache_key(sku)
        entry = json.loads(await redis.get(cache_key))
        # Another API changed the price: the DB row, its invalidation, a reader's new entry.
        await api.sql("UPDATE products SET price_cents = 5999 WHERE sku = :s", s=sku)
        await redis.set(cache_key, json.dumps({**entry, "price_cents": 5999}))
        second = await place(api, order_body(unique("c"), [(sku, 1)]), "k-2")
        assert second.json()["items"][0]["unit_price_cents"] == 5999
        # Invalidated and not read again yet: the DB's price.
        await api.sql("UPDATE products SET price_cents = 6999 WHERE sku = :s", s=sku)
        await redis.delete(cache_key)
        third = await place(api, order_body(unique("c"), [(sku, 1)]), "k-3")
        assert (third.json()["status"], third.json()["items"][0]["unit_price_cents"]) == (
            "FAILED",
            6999,
        )


async def test_the_fast_path_answers_like_the_route(api_factory: ApiFactory) -> None:
    """Losers answered below the router (api/checkout_fast_path.py) are counted under the
    route's template, its problems are problems, and a body the model refuses still gets the
    route's own 422."""
    async with api_factory() as api:
        sku = await hot_sku(api, 0)
        body = order_body(unique("c"), [(sku, 1)])
        assert (await place(api, body, "k-1")).status_code == 202
        assert_problem(
            await api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": " "}),
            400,
            "validation_error",
        )
        bad = await place(api, {**body, "items": []}, "k-2")
        problem = assert_problem(bad, 422, "validation_error")
        assert problem["errors"]
        text = (await api.http.get("/metrics")).text
        assert 'tradeflow_http_requests_total{method="POST",route="/v1/orders",status="202"}' in (
            text
        )


async def test_units_claimed_after_the_edge_let_a_checkout_through_end_it_with_no_workflow(
    edge_api: Api, redis: aioredis.Redis
) -> None:
    """A crowd at a sale's opening: the edge sees a unit left, a winner claims it before this
    checkout's normal path writes its row. The normal path reads the counter again there and
    answers OUT_OF_STOCK itself, written in the request, with no workflow."""
    api = edge_api
    sku = await hot_sku(api, 1)
    body = order_body(unique("c"), [(sku, 1)])
    checkout = CheckoutBody.model_validate(body)
    service = OrdersService(api.app.state.tradeflow)
    passed = await service.edge(checkout, "k-late")
    assert isinstance(passed, EdgeOutcome), passed  # one unit left: on to the normal path
    await redis.set(counter_key("main", sku), 0)  # the winner's workflow claims it now

    placed = await service.place(checkout, "k-late", edge=passed)

    order = placed.order
    assert placed.created
    assert (order.status, order.failure_reason) == ("FAILED", "OUT_OF_STOCK")
    await no_workflow(api, order.order_id)
    row, timeline, events = await sql_rows(api, order.order_id)  # written in the request
    assert [tuple(x)[:3] for x in row] == [("FAILED", "OUT_OF_STOCK", FINAL_SEQ)]
    assert timeline == events == ["PENDING", "FAILED"]
    again = await place(api, body, "k-late")  # the key was the normal path's: SQL answers
    assert again.status_code == 200, again.text
    assert again.json()["order_id"] == order.order_id
    assert again.json()["status"] == "FAILED"
