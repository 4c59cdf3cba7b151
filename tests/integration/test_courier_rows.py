"""``store.couriers.assigned_to``: what the API asks when a courier repeats an accept after the
delivery workflow has closed (``OrdersService._already_recorded``), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import insert

from store import couriers
from store.db import make_engine, make_sessionmaker
from store.models import Courier


async def test_a_courier_is_assigned_to_an_order_only_from_its_accept_to_its_release(
    db_url: str,
) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as s, s.begin():
            for cid in ("k-1", "k-2"):
                await s.execute(
                    insert(Courier.__table__).values(courier_id=cid, lat=31.2, lng=121.4)  # type: ignore[attr-defined]
                )

        async def asked(order_id: str, courier_id: str) -> bool:
            async with sessions() as s:
                return await couriers.assigned_to(s, order_id=order_id, courier_id=courier_id)

        async with sessions() as s, s.begin():
            assert await couriers.offer(s, order_id="o-1", courier_id="k-1")
        assert not await asked("o-1", "k-1")  # offered, not accepted
        async with sessions() as s, s.begin():
            assert await couriers.assign(s, order_id="o-1", courier_id="k-1")
        assert await asked("o-1", "k-1")
        assert not await asked("o-1", "k-2")  # another courier
        assert not await asked("o-2", "k-1")  # another order
        async with sessions() as s, s.begin():
            assert await couriers.release(s, order_id="o-1", courier_id="k-1")
        assert not await asked("o-1", "k-1")  # freed: the order view answers from here on
    finally:
        await engine.dispose()
