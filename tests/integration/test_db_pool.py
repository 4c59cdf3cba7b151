"""The PostgreSQL pool's disconnect handling (store/db.py): a connection idle past the bypass
window is pinged and replaced if its server end is gone; one lost within the window fails
its first statement once, and the pool recovers for the next caller. Real PostgreSQL, real
``pg_terminate_backend``."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import OperationalError

from store import inventory as ledger
from store.db import PING_IDLE_AFTER_S, make_engine, make_sessionmaker
from store.models import Product, Stock
from tests.conftest import PG_URL


async def _terminate(pids: list[int]) -> None:
    import psycopg

    dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://", 1).split("?")[0]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for pid in pids:
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(100):  # until the backends are gone
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            )
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"backends {pids} still there")


async def _pids(engine, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Check ``n`` connections out at once (so the pool holds ``n``), return their pids."""
    conns = [await engine.connect() for _ in range(n)]
    try:
        return [int((await c.exec_driver_sql("SELECT pg_backend_pid()")).scalar()) for c in conns]
    finally:
        for c in conns:
            await c.close()


@pytest.fixture
async def shop(postgres_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(postgres_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    async with sessions() as s, s.begin():
        s.add(Product(sku="SKU-P", name="Beans", price_cents=100, currency="USD"))
        s.add(Stock(location_id="main", sku="SKU-P", available=10, stocked=10))
    yield engine, sessions
    await engine.dispose()


async def test_a_connection_idle_past_the_window_is_pinged_and_replaced(shop) -> None:  # type: ignore[no-untyped-def]
    engine, sessions = shop
    before = await _pids(engine, 2)
    await _terminate(before)
    await asyncio.sleep(PING_IDLE_AFTER_S + 0.2)
    # No caller sees the dead connections: the checkout pings them and reconnects.
    out = await ledger.try_reserve(
        sessions, order_id="o-1", location_id="main", sku="SKU-P", quantity=1
    )
    assert out.changed
    async with sessions() as s, s.begin():
        assert await ledger.stock_available(s, location_id="main", sku="SKU-P") == 9
    assert set(await _pids(engine, 2)).isdisjoint(before)


async def test_a_connection_lost_within_the_window_fails_once_and_the_pool_recovers(shop) -> None:  # type: ignore[no-untyped-def]
    engine, sessions = shop
    before = await _pids(engine, 2)
    await _terminate(before)
    # Back in the pool a moment ago: handed out unpinged, its first statement fails as a
    # database gone mid-transaction does (the activity is retried), nothing is written...
    with pytest.raises(OperationalError) as err:
        await ledger.try_reserve(
            sessions, order_id="o-1", location_id="main", sku="SKU-P", quantity=1
        )
    assert err.value.connection_invalidated
    # ...and SQLAlchemy invalidated the whole pool: the other dead connection is replaced
    # at its checkout, so the retry goes through.
    out = await ledger.try_reserve(
        sessions, order_id="o-1", location_id="main", sku="SKU-P", quantity=1
    )
    assert out.changed
    async with sessions() as s, s.begin():
        assert await ledger.stock_available(s, location_id="main", sku="SKU-P") == 9
        assert await ledger.fence(s, order_id="o-1", location_id="main", sku="SKU-P") == (
            "TRIED",
            1,
        )
    assert set(await _pids(engine, 2)).isdisjoint(before)
