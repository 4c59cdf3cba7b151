"""``tradeflow check stock``: passes on a consistent ledger, and names the row when any one
invariant is broken by hand. Real SQLite and PostgreSQL (``db_url``) and real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.inventory import InventoryActivities
from cli.checks import StockReport, check_stock
from cli.main import main as tradeflow
from domain.messages import ReservationKey
from infra.hot_stock import HotStock, claims_key, counter_key, reconcile_hot_counters
from store.db import make_engine, make_sessionmaker
from store.models import Order, Product, Stock, utcnow_iso
from tests.conftest import REDIS_URL
from tests.integration.test_hot_stock import pooled_redis


@dataclass
class Ledger:
    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: aioredis.Redis
    plain: str
    """A SKU on the DB path."""
    hot: str
    """A flash-sale SKU (Redis counter in front)."""

    async def sql(self, statement: str, **params: object) -> None:
        async with self.engine.begin() as c:
            await c.execute(text(statement), params)

    async def check(self) -> StockReport:
        return await check_stock(self.sessions, redis=self.redis)

    def counter(self) -> str:
        return counter_key("main", self.hot)


async def _order(sessions: async_sessionmaker[AsyncSession], order_id: str, status: str) -> None:
    now = utcnow_iso()
    async with sessions() as s, s.begin():
        s.add(
            Order(
                order_id=order_id,
                customer_id="c-1",
                idempotency_key=order_id,
                request_hash="x",
                location_id="main",
                status=status,
                currency="USD",
                total_cents=100,
                view={},
                created_at=now,
                updated_at=now,
            )
        )


async def run(fn, *args):  # type: ignore[no-untyped-def]
    return await ActivityEnvironment().run(fn, *args)


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Ledger]:
    """Every kind of branch on both paths: tried, confirmed, cancelled, returned, a hot
    winner still reserved, a hot winner sold, a hot loser, each with its order row."""
    tag = uuid.uuid4().hex[:8]
    plain, hot = f"PLAIN-{tag}", f"HOT-{tag}"
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    redis = pooled_redis()
    async with sessions() as s, s.begin():
        s.add(Product(sku=plain, name="Beans", price_cents=1299, currency="USD"))
        s.add(Product(sku=hot, name="Grinder", price_cents=4999, currency="USD", hot=True))
        s.add(Stock(location_id="main", sku=plain, available=20, stocked=20))
        s.add(Stock(location_id="main", sku=hot, available=10, stocked=10))
    acts = InventoryActivities(sessionmaker=sessions, redis=redis)

    def k(order: str, qty: int, sku: str = plain) -> ReservationKey:
        return ReservationKey(f"o-{tag}-{order}", "main", sku, qty, hot=sku == hot)

    await run(acts.try_reserve, k("tried", 3))
    await run(acts.try_reserve, k("sold", 2))
    await run(acts.confirm_reservation, k("sold", 2))
    await run(acts.try_reserve, k("cancelled", 1))
    await run(acts.cancel_reservation, k("cancelled", 1))
    await run(acts.try_reserve, k("returned", 4))
    await run(acts.confirm_reservation, k("returned", 4))
    await run(acts.return_stock, k("returned", 4))
    await run(acts.try_reserve, k("hot-tried", 2, hot))
    await run(acts.try_reserve, k("hot-sold", 3, hot))
    await run(acts.confirm_reservation, k("hot-sold", 3, hot))
    with pytest.raises(ApplicationError):  # a flash-sale loser, refused by Redis
        await run(acts.try_reserve, k("hot-big", 9, hot))
    await run(acts.cancel_reservation, k("hot-big", 9, hot))
    for name, status in [
        ("tried", "RESERVED"),
        ("sold", "PAID"),
        ("cancelled", "CANCELLED"),
        ("returned", "CANCELLED"),
        ("hot-tried", "AWAITING_PAYMENT"),
        ("hot-sold", "DISPATCHING"),
    ]:
        await _order(sessions, f"o-{tag}-{name}", status)
    yield Ledger(db_url, engine, sessions, redis, plain, hot)
    await redis.delete(counter_key("main", hot), claims_key("main", hot))
    await redis.aclose()
    await engine.dispose()


@pytest.fixture
def order(ledger: Ledger):  # type: ignore[no-untyped-def]
    tag = ledger.plain.split("-", 1)[1]
    return lambda name: f"o-{tag}-{name}"


def _rules(report: StockReport) -> list[tuple[str, str, str | None]]:
    return [(v.rule, v.sku, v.order_id) for v in report.violations]


async def test_a_consistent_ledger_passes(ledger: Ledger) -> None:
    report = await ledger.check()
    assert report.ok, report.violations
    assert (report.stock_rows, report.hot_counters) == (2, 1)
    assert report.notes == []


async def test_stocked_that_does_not_add_up_is_named(ledger: Ledger) -> None:
    await ledger.sql("UPDATE stock SET stocked = stocked + 1 WHERE sku = :s", s=ledger.plain)
    report = await ledger.check()
    assert _rules(report) == [("conservation", ledger.plain, None)]
    assert "stocked is 21" in report.violations[0].message


async def test_a_negative_figure_is_named(ledger: Ledger) -> None:
    # available/reserved/sold have CHECK constraints; stocked has none.
    await ledger.sql("UPDATE stock SET stocked = -1 WHERE sku = :s", s=ledger.plain)
    report = await ledger.check()
    assert ("negative", ledger.plain, None) in _rules(report)
    assert "stocked -1" in str(report.violations[0])


async def test_reserved_that_disagrees_with_the_tried_reservations_is_named(
    ledger: Ledger, order
) -> None:  # type: ignore[no-untyped-def]
    await ledger.sql(
        "UPDATE reservations SET quantity = quantity + 1 WHERE order_id = :o", o=order("tried")
    )
    report = await ledger.check()
    assert _rules(report) == [("reserved", ledger.plain, None)]
    assert "reserved is 3, but TRIED reservations hold 4" in report.violations[0].message


async def test_sold_that_disagrees_with_the_confirmed_reservations_is_named(
    ledger: Ledger, order
) -> None:  # type: ignore[no-untyped-def]
    await ledger.sql(
        "UPDATE reservations SET state = 'RETURNED' WHERE order_id = :o", o=order("sold")
    )
    report = await ledger.check()
    assert _rules(report) == [("sold", ledger.plain, None)]


async def test_a_reservation_of_an_ended_order_is_named_with_its_order(
    ledger: Ledger, order
) -> None:  # type: ignore[no-untyped-def]
    await ledger.sql("UPDATE orders SET status = 'FAILED' WHERE order_id = :o", o=order("tried"))
    report = await ledger.check()
    assert _rules(report) == [("terminal_order", ledger.plain, order("tried"))]
    assert "FAILED" in report.violations[0].message


async def test_reservations_with_no_stock_row_are_named(ledger: Ledger, order) -> None:  # type: ignore[no-untyped-def]
    await ledger.sql(
        "UPDATE reservations SET location_id = 'nowhere' WHERE order_id = :o", o=order("tried")
    )
    report = await ledger.check()
    assert sorted(_rules(report)) == [
        ("orphan_fence", ledger.plain, None),
        ("reserved", ledger.plain, None),
    ]
    assert "nowhere" in str([str(v) for v in report.violations])


async def test_redis_drift_either_way_is_detected_and_reconciliation_repairs_it(
    ledger: Ledger,
) -> None:
    # DB: hot available 10 - 2 (tried) - 3 (sold) = 5, no claim in flight.
    assert await HotStock(ledger.redis).counter("main", ledger.hot) == 5
    for drifted in (9, 1):
        await ledger.redis.set(ledger.counter(), drifted)
        report = await ledger.check()
        assert _rules(report) == [("hot_counter", ledger.hot, None)]
        assert f"is {drifted}, DB says 5" in report.violations[0].message
        changes = await reconcile_hot_counters(ledger.sessions, ledger.redis)
        assert [(c.sku, c.old, c.new) for c in changes] == [(ledger.hot, drifted, 5)]
        assert (await ledger.check()).ok
    await ledger.redis.delete(ledger.counter())
    report = await ledger.check()
    assert report.ok and "missing" in report.notes[0]


async def test_claims_in_flight_and_give_backs_under_way_are_not_drift(
    ledger: Ledger, order
) -> None:  # type: ignore[no-untyped-def]
    hot = HotStock(ledger.redis)
    # A claim whose DB try has not landed yet: the counter is rightly 1 below the DB.
    await hot.claim("main", ledger.hot, order("hot-new"), 1)
    assert (await ledger.check()).ok
    # A cancel whose DB half is done and Redis half is not (the worker died in between).
    await ledger.sql(
        "UPDATE reservations SET state = 'CANCELLED' WHERE order_id = :o", o=order("hot-tried")
    )
    await ledger.sql(
        "UPDATE stock SET available = available + 2, reserved = reserved - 2 WHERE sku = :s",
        s=ledger.hot,
    )
    assert (await ledger.check()).ok
    # Reconciliation finishes the give-back; no counter change is reported.
    assert await reconcile_hot_counters(ledger.sessions, ledger.redis) == []
    assert await hot.counter("main", ledger.hot) == 6
    assert (await hot.claims("main", ledger.hot))[order("hot-tried")][0] == "R"


async def test_a_claim_leaked_by_an_ended_order_is_named_and_written_off(
    ledger: Ledger, order
) -> None:  # type: ignore[no-untyped-def]
    leaked = order("hot-leaked")
    await _order(ledger.sessions, leaked, "NEEDS_ATTENTION")
    long_ago = int(time.time()) - 3600
    await ledger.redis.hset(claims_key("main", ledger.hot), leaked, f"L|2|{long_ago}")  # type: ignore[misc]
    await ledger.redis.decrby(ledger.counter(), 2)
    report = await ledger.check()
    assert {v.rule for v in report.violations} == {"hot_counter"}
    assert any("ended orders" in v.message for v in report.violations)
    changes = await reconcile_hot_counters(ledger.sessions, ledger.redis)
    assert [(c.old, c.new) for c in changes] == [(3, 5)]
    assert (await ledger.check()).ok


async def test_the_cli_exits_0_when_all_is_well_and_1_naming_the_row_when_not(
    ledger: Ledger, order, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    argv = ["check", "stock", "--database-url", ledger.url, "--redis-url", REDIS_URL]
    assert await asyncio.to_thread(tradeflow, argv) == 0
    assert "stock check OK: 2 stock rows" in capsys.readouterr().out

    await ledger.sql("UPDATE orders SET status = 'CANCELLED' WHERE order_id = :o", o=order("tried"))
    await ledger.redis.set(ledger.counter(), 7)
    assert await asyncio.to_thread(tradeflow, argv) == 1
    out = capsys.readouterr().out
    assert f"FAIL [terminal_order] main/{ledger.plain} order {order('tried')}" in out
    assert f"FAIL [hot_counter] main/{ledger.hot}: hot counter main/{ledger.hot} is 7" in out
    assert "stock check FAILED: 2 problems" in out

    assert await asyncio.to_thread(tradeflow, [*argv[:4], "--no-redis"]) == 1
    assert "hot_counter" not in capsys.readouterr().out
