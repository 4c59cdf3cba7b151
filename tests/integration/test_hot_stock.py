"""The flash-sale path against real Redis: the Lua scripts on their own, then the inventory
activities with Redis in front of real SQLite and PostgreSQL (``db_url``).

Database writes are counted, not assumed: ``StockWrites`` records every INSERT/UPDATE the
worker's engine sends to ``stock`` or ``reservations`` and the order it was for.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.inventory import InventoryActivities
from domain import errors
from domain.messages import ReservationKey
from infra.hot_stock import (
    Claim,
    HotStock,
    claims_key,
    counter_key,
    reconcile_hot_counters,
)
from infra.redis import make_redis
from store.db import make_engine, make_sessionmaker
from store.models import Product, Stock
from tests.api.helpers import closed_port
from tests.conftest import REDIS_URL

# ----------------------------------------------------------------------------- helpers


class StockWrites:
    """Every INSERT/UPDATE an engine sends to ``stock`` or ``reservations``, with its order.

    A fence statement names its order in a parameter; a stock UPDATE does not, so it is
    charged to the order whose fence statement ran earlier in the same transaction (and
    to nobody if there was none, which ``unattributed`` reports). A statement with
    data-modifying CTEs (PostgreSQL's one-statement try: ``WITH fence AS (INSERT INTO
    reservations ...), moved AS (UPDATE stock ...) SELECT ...``) counts as each write in it,
    and so does a call of ``tradeflow_try_reserve`` (PostgreSQL's try since migration 0009:
    a fence INSERT and a stock UPDATE); in autocommit it counts as committed once it returns.
    """

    _WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE)\s+\"?(stock|reservations)\"?[\s(]", re.I)
    _CTE_WRITE = re.compile(
        r"\bAS\s*\(\s*(INSERT\s+INTO|UPDATE)\s+\"?(stock|reservations)\"?[\s(]", re.I
    )
    _READ = re.compile(r"^\s*SELECT\b.*\bFROM\s+\"?reservations\"?\b", re.I | re.S)
    _TRY_CALL = re.compile(r"^\s*SELECT\s+tradeflow_try_reserve\s*\(", re.I)
    _TRY_WRITES = (("INSERT", "reservations"), ("UPDATE", "stock"))

    def __init__(self, engine: AsyncEngine, *, order_prefixes: tuple[str, ...] = ("o_", "o-")):
        self.writes: list[tuple[str, str, str | None]] = []
        """(verb, table, order_id) of every statement sent, committed or not"""
        self.committed: list[tuple[str, str, str | None]] = []
        """the same, for the transactions that committed"""
        self.reads: list[str | None] = []
        """order_id of each SELECT on reservations"""
        self._prefixes = order_prefixes
        self._engine = engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._on_execute)
        event.listen(self._engine, "after_cursor_execute", self._on_executed)
        event.listen(self._engine, "commit", self._on_commit)
        event.listen(self._engine, "rollback", self._on_rollback)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._on_execute)
        event.remove(self._engine, "after_cursor_execute", self._on_executed)
        event.remove(self._engine, "commit", self._on_commit)
        event.remove(self._engine, "rollback", self._on_rollback)

    def _order_in(self, parameters: Any) -> str | None:
        values = parameters.values() if isinstance(parameters, dict) else (parameters or ())
        for v in values:
            if isinstance(v, str) and v.startswith(self._prefixes):
                return v
        return None

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if re.match(r"^\s*WITH\b", statement, re.I):
            for m in self._CTE_WRITE.finditer(statement):
                self._write(conn, m, parameters)
            return
        if self._TRY_CALL.match(statement):
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                self._on_rollback(conn)  # its own transaction: nothing before it is pending
            for verb, table in self._TRY_WRITES:
                self._record(conn, verb, table, parameters)
            return
        m = self._WRITE.match(statement)
        if m:
            self._write(conn, m, parameters)
        elif self._READ.match(statement):
            self.reads.append(self._order_in(parameters))

    def _on_executed(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        # An autocommit statement that returned has committed; no commit event will come.
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if autocommit and self._TRY_CALL.match(statement):
            self._on_commit(conn)

    def _write(self, conn, m: re.Match[str], parameters: Any) -> None:  # type: ignore[no-untyped-def]
        self._record(conn, m.group(1).split()[0].upper(), m.group(2).lower(), parameters)

    def _record(self, conn, verb: str, table: str, parameters: Any) -> None:  # type: ignore[no-untyped-def]
        order = self._order_in(parameters)
        if table == "reservations" and order:
            conn.info["tf_order"] = order
        else:
            order = order or conn.info.get("tf_order")
        self.writes.append((verb, table, order))
        conn.info.setdefault("tf_writes", []).append((verb, table, order))

    def _on_commit(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.committed.extend(conn.info.pop("tf_writes", []))
        conn.info.pop("tf_order", None)

    @staticmethod
    def _on_rollback(conn) -> None:  # type: ignore[no-untyped-def]
        conn.info.pop("tf_writes", None)
        conn.info.pop("tf_order", None)

    def by(self, order_ids: set[str]) -> list[tuple[str, str, str | None]]:
        return [w for w in self.writes if w[2] in order_ids]

    @property
    def unattributed(self) -> list[tuple[str, str, str | None]]:
        return [w for w in self.writes if w[2] is None]


def pooled_redis(url: str = REDIS_URL, size: int = 64) -> aioredis.Redis:
    """A client whose callers wait for a free connection instead of failing with
    MaxConnectionsError (the default pool's answer beyond 100 at once)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=size, timeout=20, decode_responses=True
    )
    return aioredis.Redis.from_pool(pool)


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = pooled_redis()
    yield client
    await client.aclose()


@pytest.fixture
def sku() -> str:
    return f"FLASH-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
async def _forget_keys(redis: aioredis.Redis, sku: str) -> AsyncIterator[None]:
    yield
    await redis.delete(counter_key("main", sku), claims_key("main", sku))


# ------------------------------------------------------------------- the scripts alone


async def test_a_claim_deducts_once_and_a_repeat_for_the_same_order_changes_nothing(
    redis: aioredis.Redis, sku: str
) -> None:
    hot = HotStock(redis)
    await redis.set(counter_key("main", sku), 10)
    assert await hot.claim("main", sku, "o-1", 3) == Claim.CLAIMED
    assert await hot.claim("main", sku, "o-1", 3) == Claim.LIVE
    assert await hot.counter("main", sku) == 7
    state, qty, _ = (await hot.claims("main", sku))["o-1"]
    assert (state, qty) == (Claim.LIVE, 3)


async def test_sold_out_is_refused_and_leaves_no_trace(redis: aioredis.Redis, sku: str) -> None:
    hot = HotStock(redis)
    await redis.set(counter_key("main", sku), 2)
    assert await hot.claim("main", sku, "o-big", 3) == Claim.SOLD_OUT
    assert await hot.counter("main", sku) == 2
    assert await hot.claims("main", sku) == {}
    assert await hot.claim("main", sku, "o-fits", 2) == Claim.CLAIMED
    assert await hot.claim("main", sku, "o-late", 1) == Claim.SOLD_OUT
    assert await hot.counter("main", sku) == 0


async def test_no_counter_is_reported_so_the_caller_can_take_the_db_path(
    redis: aioredis.Redis, sku: str
) -> None:
    hot = HotStock(redis)
    assert await hot.claim("main", sku, "o-1", 1) == Claim.NO_COUNTER
    assert await hot.claims("main", sku) == {}


async def test_a_cancel_marker_blocks_a_claim_that_arrives_after_it(
    redis: aioredis.Redis, sku: str
) -> None:
    hot = HotStock(redis)
    await redis.set(counter_key("main", sku), 5)
    assert await hot.mark_cancel("main", sku, "o-hang") is None  # empty compensation
    assert await hot.claim("main", sku, "o-hang", 1) == Claim.CANCELLED  # anti-hanging
    assert await hot.counter("main", sku) == 5
    assert await hot.mark_cancel("main", sku, "o-hang") == Claim.CANCELLED  # repeat


async def test_a_double_cancel_gives_the_units_back_once(redis: aioredis.Redis, sku: str) -> None:
    hot = HotStock(redis)
    await redis.set(counter_key("main", sku), 5)
    await hot.claim("main", sku, "o-1", 2)
    assert await hot.mark_cancel("main", sku, "o-1") == Claim.LIVE
    results = await asyncio.gather(
        *(hot.release("main", sku, "o-1", returned=False) for _ in range(5))
    )
    assert sorted(results) == [0, 0, 0, 0, 2]
    assert await hot.counter("main", sku) == 5
    # Released is final: the order cannot claim again, and a write-off changes nothing.
    assert await hot.claim("main", sku, "o-1", 2) == Claim.RELEASED
    assert await hot.write_off("main", sku, "o-1") == 0
    assert await hot.counter("main", sku) == 5


async def test_a_written_off_claim_keeps_its_units_out_of_the_counter(
    redis: aioredis.Redis, sku: str
) -> None:
    hot = HotStock(redis)
    await redis.set(counter_key("main", sku), 5)
    await hot.claim("main", sku, "o-1", 2)
    assert await hot.write_off("main", sku, "o-1") == 2
    assert await hot.release("main", sku, "o-1", returned=False) == 0
    assert await hot.counter("main", sku) == 3
    assert await hot.claim("main", sku, "o-1", 2) == Claim.DEAD


async def test_500_concurrent_claims_for_50_units_grant_exactly_50(
    redis: aioredis.Redis, sku: str
) -> None:
    hot = HotStock(redis)
    await redis.set(counter_key("main", sku), 50)
    results = await asyncio.gather(*(hot.claim("main", sku, f"o-{i}", 1) for i in range(500)))
    assert results.count(Claim.CLAIMED) == 50
    assert results.count(Claim.SOLD_OUT) == 450
    assert await hot.counter("main", sku) == 0
    claims = await hot.claims("main", sku)
    assert len(claims) == 50 and all(c[0] == Claim.LIVE for c in claims.values())


async def test_mixed_quantities_never_take_the_counter_below_zero(
    redis: aioredis.Redis, sku: str
) -> None:
    hot = HotStock(redis)
    await redis.set(counter_key("main", sku), 37)
    qty = [1 + i % 4 for i in range(200)]
    results = await asyncio.gather(
        *(hot.claim("main", sku, f"o-{i}", q) for i, q in enumerate(qty))
    )
    granted = sum(q for q, r in zip(qty, results, strict=True) if r == Claim.CLAIMED)
    assert granted + (await hot.counter("main", sku) or 0) == 37
    assert 0 <= (await hot.counter("main", sku) or 0) < 4


# ----------------------------------------------------- the activities, Redis + database


@dataclass
class Shop:
    acts: InventoryActivities
    engine: AsyncEngine
    hot: HotStock
    redis: aioredis.Redis
    sku: str
    writes: StockWrites

    async def stock(self) -> tuple[int, int, int]:
        async with self.engine.connect() as c:
            r = (
                await c.execute(
                    text("SELECT available, reserved, sold FROM stock WHERE sku = :s"),
                    {"s": self.sku},
                )
            ).one()
        return (r[0], r[1], r[2])

    async def fence(self, order_id: str) -> str | None:
        async with self.engine.connect() as c:
            return (
                await c.execute(
                    text("SELECT state FROM reservations WHERE order_id = :o"), {"o": order_id}
                )
            ).scalar()

    def key(self, order_id: str, qty: int = 1) -> ReservationKey:
        return ReservationKey(order_id, "main", self.sku, qty, hot=True)


async def run(fn, *args):  # type: ignore[no-untyped-def]
    return await ActivityEnvironment().run(fn, *args)


@pytest.fixture
async def shop(db_url: str, redis: aioredis.Redis, sku: str) -> AsyncIterator[Shop]:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    async with sessions() as s, s.begin():
        s.add(Product(sku=sku, name="Grinder", price_cents=4999, currency="USD", hot=True))
        s.add(Stock(location_id="main", sku=sku, available=20, stocked=20))
    writes = StockWrites(engine)
    yield Shop(
        InventoryActivities(sessionmaker=sessions, redis=redis),
        engine,
        HotStock(redis),
        redis,
        sku,
        writes,
    )
    writes.close()
    await engine.dispose()


def _down_redis() -> aioredis.Redis:
    return make_redis(f"redis://127.0.0.1:{closed_port()}/0")


async def test_a_sold_out_loser_costs_no_database_write_for_its_try_or_its_cancel(
    shop: Shop,
) -> None:
    await shop.redis.set(counter_key("main", shop.sku), 2)
    with pytest.raises(ApplicationError) as err:
        await run(shop.acts.try_reserve, shop.key("o-loser", 3))
    assert err.value.type == errors.OUT_OF_STOCK and err.value.non_retryable
    res = await run(shop.acts.cancel_reservation, shop.key("o-loser", 3))
    assert (res.state, res.changed) == ("CANCELLED", False)
    # A second cancel (a retried compensation) is just as free.
    await run(shop.acts.cancel_reservation, shop.key("o-loser", 3))
    assert shop.writes.writes == []
    assert shop.writes.reads.count("o-loser") == 2  # the cancel reads the fence, once each
    assert await shop.fence("o-loser") is None
    # ... and its late try is refused by the Redis marker, still without a DB write.
    with pytest.raises(ApplicationError) as err:
        await run(shop.acts.try_reserve, shop.key("o-loser", 1))
    assert err.value.type == errors.RESERVATION_CANCELLED
    assert shop.writes.writes == []
    assert await shop.stock() == (20, 0, 0)


async def test_winners_reserve_in_the_database_too_and_confirm_there(shop: Shop) -> None:
    await shop.redis.set(counter_key("main", shop.sku), 20)
    first = await run(shop.acts.try_reserve, shop.key("o-w", 3))
    again = await run(shop.acts.try_reserve, shop.key("o-w", 3))
    assert (first.state, first.changed, again.changed) == ("TRIED", True, False)
    assert await shop.hot.counter("main", shop.sku) == 17
    assert await shop.stock() == (17, 3, 0)
    await run(shop.acts.confirm_reservation, shop.key("o-w", 3))
    assert await shop.stock() == (17, 0, 3)
    assert await shop.hot.counter("main", shop.sku) == 17
    assert {w[2] for w in shop.writes.writes} == {"o-w"}


async def test_a_winners_cancel_returns_units_to_the_db_then_to_redis_once(shop: Shop) -> None:
    await shop.redis.set(counter_key("main", shop.sku), 20)
    await run(shop.acts.try_reserve, shop.key("o-c", 4))
    results = await asyncio.gather(
        *(run(shop.acts.cancel_reservation, shop.key("o-c", 4)) for _ in range(4))
    )
    assert sum(r.changed for r in results) == 1
    assert await shop.stock() == (20, 0, 0)
    assert await shop.hot.counter("main", shop.sku) == 20
    assert (await shop.hot.claims("main", shop.sku))["o-c"][0] == Claim.RELEASED


async def test_return_after_confirm_gives_the_units_back_to_both_once(shop: Shop) -> None:
    await shop.redis.set(counter_key("main", shop.sku), 20)
    await run(shop.acts.try_reserve, shop.key("o-r", 2))
    await run(shop.acts.confirm_reservation, shop.key("o-r", 2))
    assert (await run(shop.acts.return_stock, shop.key("o-r", 2))).changed
    assert not (await run(shop.acts.return_stock, shop.key("o-r", 2))).changed
    assert await shop.stock() == (20, 0, 0)
    assert await shop.hot.counter("main", shop.sku) == 20
    assert (await shop.hot.claims("main", shop.sku))["o-r"][0] == Claim.RETURNED


async def test_redis_down_falls_back_to_the_database_path_and_stays_correct(shop: Shop) -> None:
    down = _down_redis()
    try:
        acts = InventoryActivities(sessionmaker=make_sessionmaker(shop.engine), redis=down)
        for i in range(20):
            await run(acts.try_reserve, shop.key(f"o-d{i}", 1))
        with pytest.raises(ApplicationError) as err:
            await run(acts.try_reserve, shop.key("o-d-extra", 1))
        assert err.value.type == errors.OUT_OF_STOCK
        assert await shop.stock() == (0, 20, 0)
        for i in range(5):
            res = await run(acts.cancel_reservation, shop.key(f"o-d{i}", 1))
            assert (res.state, res.changed) == ("CANCELLED", True)
        await run(acts.confirm_reservation, shop.key("o-d5", 1))
        assert (await run(acts.return_stock, shop.key("o-d5", 1))).changed
        assert await shop.stock() == (6, 14, 0)
    finally:
        await down.aclose()


async def test_a_try_on_the_db_path_is_cancelled_even_if_redis_is_back_for_the_cancel(
    shop: Shop,
) -> None:
    await shop.redis.set(counter_key("main", shop.sku), 20)
    down = _down_redis()
    try:
        acts_down = InventoryActivities(sessionmaker=make_sessionmaker(shop.engine), redis=down)
        await run(acts_down.try_reserve, shop.key("o-split", 2))
    finally:
        await down.aclose()
    assert await shop.stock() == (18, 2, 0)
    res = await run(shop.acts.cancel_reservation, shop.key("o-split", 2))
    assert (res.state, res.changed) == ("CANCELLED", True)
    assert await shop.stock() == (20, 0, 0)


async def test_a_late_hot_try_after_a_db_path_cancel_is_refused_and_gives_its_claim_back(
    shop: Shop,
) -> None:
    await shop.redis.set(counter_key("main", shop.sku), 20)
    down = _down_redis()
    try:
        acts_down = InventoryActivities(sessionmaker=make_sessionmaker(shop.engine), redis=down)
        res = await run(acts_down.cancel_reservation, shop.key("o-hang", 2))
        assert (res.state, res.changed) == ("CANCELLED", False)  # empty rollback, in the DB
    finally:
        await down.aclose()
    with pytest.raises(ApplicationError) as err:
        await run(shop.acts.try_reserve, shop.key("o-hang", 2))
    assert err.value.type == errors.RESERVATION_CANCELLED
    assert await shop.hot.counter("main", shop.sku) == 20
    assert (await shop.hot.claims("main", shop.sku))["o-hang"][0] == Claim.RELEASED
    assert await shop.stock() == (20, 0, 0)


async def test_a_counter_that_drifted_high_is_caught_by_the_database_and_reconciled(
    shop: Shop,
) -> None:
    async with shop.engine.begin() as c:
        await c.execute(
            text("UPDATE stock SET available = 1, stocked = 1 WHERE sku = :s"), {"s": shop.sku}
        )
    await shop.redis.set(counter_key("main", shop.sku), 10)  # drift: Redis thinks 10
    await run(shop.acts.try_reserve, shop.key("o-1", 1))
    with pytest.raises(ApplicationError) as err:
        await run(shop.acts.try_reserve, shop.key("o-2", 1))
    assert err.value.type == errors.OUT_OF_STOCK
    assert (await shop.hot.claims("main", shop.sku))["o-2"][0] == Claim.DEAD
    assert await shop.hot.counter("main", shop.sku) == 8  # not given back: it was too high
    # The dead claim's cancel moves nothing anywhere.
    await run(shop.acts.cancel_reservation, shop.key("o-2", 1))
    assert await shop.stock() == (0, 1, 0)

    changes = await reconcile_hot_counters(make_sessionmaker(shop.engine), shop.redis)
    assert [(c.sku, c.old, c.new) for c in changes] == [(shop.sku, 8, 0)]
    assert await shop.hot.counter("main", shop.sku) == 0
    assert await reconcile_hot_counters(make_sessionmaker(shop.engine), shop.redis) == []


async def test_a_missing_counter_is_loaded_from_the_database_on_first_use(shop: Shop) -> None:
    assert await shop.hot.counter("main", shop.sku) is None
    results = await asyncio.gather(
        *(run(shop.acts.try_reserve, shop.key(f"o-{i}", 1)) for i in range(5))
    )
    assert all(r.state == "TRIED" for r in results)
    assert await shop.hot.counter("main", shop.sku) == 15
    assert await shop.stock() == (15, 5, 0)
    assert len(await shop.hot.claims("main", shop.sku)) == 5


async def test_a_sku_that_is_not_hot_in_the_database_gets_no_counter(shop: Shop) -> None:
    async with shop.engine.begin() as c:
        await c.execute(text("UPDATE products SET hot = false WHERE sku = :s"), {"s": shop.sku})
    await run(shop.acts.try_reserve, shop.key("o-1", 1))
    assert await shop.hot.counter("main", shop.sku) is None
    assert await shop.stock() == (19, 1, 0)


async def test_racing_hot_tries_and_cancels_end_with_both_sides_agreeing(shop: Shop) -> None:
    await shop.redis.set(counter_key("main", shop.sku), 20)
    for i in range(15):
        k = shop.key(f"o-tc{i}", 1)
        await asyncio.gather(
            run(shop.acts.try_reserve, k),
            run(shop.acts.cancel_reservation, k),
            return_exceptions=True,
        )
        await run(shop.acts.cancel_reservation, k)
    assert await shop.stock() == (20, 0, 0)
    assert await shop.hot.counter("main", shop.sku) == 20
    assert await reconcile_hot_counters(make_sessionmaker(shop.engine), shop.redis) == []


# ------------------------------------------------------------- loading the counters


async def test_worker_start_loads_missing_counters_and_leaves_live_ones_alone(
    shop: Shop,
) -> None:
    from infra.hot_stock import load_hot_counters

    sessions = make_sessionmaker(shop.engine)
    changes = await load_hot_counters(sessions, shop.redis)
    assert [(c.sku, c.old, c.new) for c in changes if c.sku == shop.sku] == [(shop.sku, None, 20)]
    await shop.hot.claim("main", shop.sku, "o-live", 2)  # in flight: counter 18, DB still 20
    await shop.redis.set(counter_key("main", shop.sku), 11)  # whatever it is, it is live
    assert [c for c in await load_hot_counters(sessions, shop.redis) if c.sku == shop.sku] == []
    assert await shop.hot.counter("main", shop.sku) == 11


async def test_admin_restock_and_the_hot_flag_drive_the_counter(
    shop: Shop, db_url: str, tmp_path: Path
) -> None:
    from api.app import create_app
    from tests.api.helpers import ADMIN_TOKEN, make_settings

    app = create_app(
        make_settings(tmp_path, db_url),
        engine=shop.engine,
        redis=shop.redis,
        tracing=False,
        migrate_on_start=False,
    )
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    product = {"name": "Grinder", "price_cents": 4999, "currency": "USD"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        r = await http.put(
            f"/v1/admin/products/{shop.sku}", json=product | {"hot": True}, headers=admin
        )
        assert r.status_code == 200, r.text
        assert await shop.hot.counter("main", shop.sku) == 20  # flag on: loaded

        await run(shop.acts.try_reserve, shop.key("o-winner", 3))  # DB 17 reserved 3
        await shop.hot.claim("main", shop.sku, "o-midway", 2)  # claimed, DB try not yet in
        r = await http.put(
            f"/v1/admin/inventory/{shop.sku}",
            json={"location_id": "main", "available": 40},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        # Restocked to 40 available: minus the 2 units in flight.
        assert await shop.hot.counter("main", shop.sku) == 38

        r = await http.put(f"/v1/admin/products/{shop.sku}", json=product, headers=admin)
        assert await shop.hot.counter("main", shop.sku) == 38  # no flag in the body: kept
        r = await http.put(
            f"/v1/admin/products/{shop.sku}", json=product | {"hot": False}, headers=admin
        )
        assert r.status_code == 200, r.text
        assert await shop.hot.counter("main", shop.sku) is None  # off the flash-sale path
        # An order priced while it was hot takes the DB path now.
        await run(shop.acts.try_reserve, shop.key("o-after", 1))
        assert await shop.hot.counter("main", shop.sku) is None
        assert await shop.stock() == (39, 4, 0)
