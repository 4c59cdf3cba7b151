"""The inventory TCC participant against real SQLite and PostgreSQL, with real races.

Each test runs on both databases (the ``db_url`` fixture). Stock is asserted exactly.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.inventory import InventoryActivities
from domain import errors
from domain.messages import ReservationKey
from store.db import make_engine, make_sessionmaker
from store.models import Product, Reservation, Stock


@pytest.fixture
async def inv(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    async with sessions() as s, s.begin():
        s.add(Product(sku="SKU-1", name="Beans", price_cents=1299, currency="USD"))
        s.add(Stock(location_id="main", sku="SKU-1", available=20, stocked=20))
    yield InventoryActivities(sessionmaker=sessions), engine
    await engine.dispose()


async def _stock(engine) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    async with engine.connect() as c:
        r = (await c.execute(select(Stock.available, Stock.reserved, Stock.sold))).one()
    return (r[0], r[1], r[2])


def key(order: str, qty: int = 1) -> ReservationKey:
    return ReservationKey(order, "main", "SKU-1", qty)


async def run(fn, *args):  # type: ignore[no-untyped-def]
    return await ActivityEnvironment().run(fn, *args)


async def test_try_confirm_cancel_are_idempotent(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    first = await run(acts.try_reserve, key("o1", 3))
    again = await run(acts.try_reserve, key("o1", 3))
    assert (first.state, first.changed) == ("TRIED", True)
    assert (again.state, again.changed) == ("TRIED", False)
    assert await _stock(engine) == (17, 3, 0)

    assert (await run(acts.confirm_reservation, key("o1", 3))).changed
    assert not (await run(acts.confirm_reservation, key("o1", 3))).changed
    assert await _stock(engine) == (17, 0, 3)

    await run(acts.try_reserve, key("o2", 2))
    assert (await run(acts.cancel_reservation, key("o2", 2))).changed
    assert not (await run(acts.cancel_reservation, key("o2", 2))).changed
    assert await _stock(engine) == (17, 0, 3)


async def test_cancel_without_try_is_an_empty_rollback_and_blocks_a_late_try(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    res = await run(acts.cancel_reservation, key("o-late", 4))
    assert (res.state, res.changed) == ("CANCELLED", False)
    assert await _stock(engine) == (20, 0, 0)

    with pytest.raises(ApplicationError) as err:  # anti-hanging: the try arrived after its cancel
        await run(acts.try_reserve, key("o-late", 4))
    assert err.value.type == errors.RESERVATION_CANCELLED
    assert await _stock(engine) == (20, 0, 0)


async def test_confirm_after_cancel_and_cancel_after_confirm_are_refused(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    await run(acts.try_reserve, key("o-a", 1))
    await run(acts.cancel_reservation, key("o-a", 1))
    with pytest.raises(ApplicationError) as err:
        await run(acts.confirm_reservation, key("o-a", 1))
    assert err.value.type == errors.RESERVATION_CONFLICT

    await run(acts.try_reserve, key("o-b", 1))
    await run(acts.confirm_reservation, key("o-b", 1))
    with pytest.raises(ApplicationError) as err:
        await run(acts.cancel_reservation, key("o-b", 1))
    assert err.value.type == errors.RESERVATION_CONFLICT
    assert await _stock(engine) == (19, 0, 1)

    # The compensation after confirm is a return, once.
    assert (await run(acts.return_stock, key("o-b", 1))).changed
    assert not (await run(acts.return_stock, key("o-b", 1))).changed
    assert await _stock(engine) == (20, 0, 0)


async def test_out_of_stock_try_leaves_nothing_a_later_cancel_would_misread(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    with pytest.raises(ApplicationError) as err:
        await run(acts.try_reserve, key("o-big", 21))
    assert err.value.type == errors.OUT_OF_STOCK
    assert err.value.non_retryable
    async with engine.connect() as c:
        fence = (await c.execute(select(Reservation).where(Reservation.order_id == "o-big"))).all()
    assert fence == []
    # The failed try's transaction rolled back its fence row: the cancel is an empty rollback,
    # and must not hand back 21 units that were never taken.
    res = await run(acts.cancel_reservation, key("o-big", 21))
    assert (res.state, res.changed) == ("CANCELLED", False)
    assert await _stock(engine) == (20, 0, 0)


async def test_concurrent_tries_never_oversell(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    results = await asyncio.gather(
        *(run(acts.try_reserve, key(f"o{i}", 1)) for i in range(60)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, ApplicationError) and r.type == errors.OUT_OF_STOCK]
    assert len(won) == 20 and len(lost) == 40, [
        r for r in results if isinstance(r, BaseException) and r not in lost
    ]
    assert await _stock(engine) == (0, 20, 0)


async def test_racing_cancels_on_a_branch_with_no_fence_row_do_not_double_release(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    results = await asyncio.gather(
        *(run(acts.cancel_reservation, key("o-race", 5)) for _ in range(8))
    )
    assert all(r.state == "CANCELLED" and not r.changed for r in results)
    assert await _stock(engine) == (20, 0, 0)


async def test_racing_try_and_cancel_end_with_stock_conserved(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    for i in range(15):
        k = key(f"o-tc{i}", 1)
        await asyncio.gather(
            run(acts.try_reserve, k), run(acts.cancel_reservation, k), return_exceptions=True
        )
        # Whatever order they landed in, a cancel was the last word: nothing stays reserved.
        await run(acts.cancel_reservation, k)
    assert await _stock(engine) == (20, 0, 0)


async def test_racing_confirms_move_stock_once(inv) -> None:  # type: ignore[no-untyped-def]
    acts, engine = inv
    await run(acts.try_reserve, key("o-c", 4))
    results = await asyncio.gather(
        *(run(acts.confirm_reservation, key("o-c", 4)) for _ in range(6))
    )
    assert sum(r.changed for r in results) == 1
    assert await _stock(engine) == (16, 0, 4)


async def test_racing_repeats_of_one_try_move_stock_once(inv) -> None:  # type: ignore[no-untyped-def]
    # A retried activity racing its first attempt: one inserts the fence and takes the stock,
    # the others wait on the fence's key and then take nothing (on PostgreSQL both happen in
    # one statement, so this is the race that statement must get right).
    acts, engine = inv
    for i in range(5):
        results = await asyncio.gather(
            *(run(acts.try_reserve, key(f"o-rep{i}", 2)) for _ in range(8))
        )
        assert all(r.state == "TRIED" for r in results)
        assert sum(r.changed for r in results) == 1
    assert await _stock(engine) == (10, 10, 0)
