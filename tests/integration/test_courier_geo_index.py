"""The free-courier geo index on the real Redis: per zone, in step with the couriers table."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, update
from temporalio.testing import ActivityEnvironment

from activities.couriers import CourierActivities
from dispatch.geoindex import CourierGeoIndex
from dispatch.zones import zone_of
from domain.messages import CourierOffer, FindCourierInput
from infra.redis import make_redis
from store.couriers import haversine_km
from store.db import make_engine, make_sessionmaker
from store.models import Courier, Location
from tests.conftest import REDIS_URL

CENTRE = (31.2304, 121.4737)


@pytest.fixture
async def geo() -> AsyncIterator[CourierGeoIndex]:
    redis = make_redis(REDIS_URL)
    index = CourierGeoIndex(redis, resolution=7, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    yield index
    keys = [k async for k in redis.scan_iter(f"{index.prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
async def sessions(sqlite_url: str) -> AsyncIterator[Any]:
    engine = make_engine(sqlite_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


def scattered(n: int, *, spread_deg: float = 0.25, seed: int = 7) -> list[tuple[str, float, float]]:
    rnd = random.Random(seed)
    return [
        (
            f"k-{i}",
            CENTRE[0] + rnd.uniform(-spread_deg, spread_deg),
            CENTRE[1] + rnd.uniform(-spread_deg, spread_deg),
        )
        for i in range(n)
    ]


async def test_search_finds_the_same_nearest_free_couriers_as_a_full_scan(
    geo: CourierGeoIndex,
) -> None:
    fleet = scattered(1500)
    for cid, lat, lng in fleet:
        await geo.put(cid, lat=lat, lng=lng, free=True)
    rnd = random.Random(3)
    for _ in range(25):
        lat, lng = CENTRE[0] + rnd.uniform(-0.2, 0.2), CENTRE[1] + rnd.uniform(-0.2, 0.2)
        for radius in (1.0, 5.0, 50.0):
            found = await geo.search(lat=lat, lng=lng, radius_km=radius, count=5)
            brute = sorted(
                (haversine_km(lat, lng, clat, clng), cid)
                for cid, clat, clng in fleet
                if haversine_km(lat, lng, clat, clng) <= radius
            )[:5]
            assert [c.courier_id for c in found] == [cid for _, cid in brute]


async def test_a_courier_lives_in_one_zone_and_leaves_the_index_when_not_free(
    geo: CourierGeoIndex,
) -> None:
    here = await geo.put("k-1", lat=31.20, lng=121.40, free=True)
    assert here == zone_of(31.20, 121.40, 7)
    there = await geo.put("k-1", lat=31.30, lng=121.60, free=True)
    assert there != here
    assert await geo.in_zone(here) == [] and await geo.in_zone(there) == ["k-1"]
    assert await geo.zone_of_courier("k-1") == there
    await geo.put("k-1", lat=31.30, lng=121.60, free=False)
    assert await geo.in_zone(there) == [] and await geo.zone_of_courier("k-1") is None
    assert await geo.search(lat=31.30, lng=121.60, radius_km=50, count=1) == []


async def test_the_index_is_rebuilt_from_the_couriers_table(
    geo: CourierGeoIndex, sessions: Any
) -> None:
    async with sessions() as s, s.begin():
        for cid, lat, lng in scattered(40):
            await s.execute(insert(Courier.__table__).values(courier_id=cid, lat=lat, lng=lng))  # type: ignore[attr-defined]
        await s.execute(
            update(Courier.__table__)  # type: ignore[attr-defined]
            .where(Courier.__table__.c.courier_id.in_(["k-1", "k-2"]))  # type: ignore[attr-defined]
            .values(current_order_id="o-1", assignment="OFFERED")
        )
        await s.execute(
            update(Courier.__table__)  # type: ignore[attr-defined]
            .where(Courier.__table__.c.courier_id == "k-3")  # type: ignore[attr-defined]
            .values(available=False)
        )
    await geo.put("ghost", lat=CENTRE[0], lng=CENTRE[1], free=True)  # not in the table
    await geo.put("k-1", lat=CENTRE[0], lng=CENTRE[1], free=True)  # busy in the table

    assert await geo.rebuild(sessions) == 37
    listed = {
        c.courier_id
        for c in await geo.search(lat=CENTRE[0], lng=CENTRE[1], radius_km=100, count=100)
    }
    assert listed == {f"k-{i}" for i in range(40)} - {"k-1", "k-2", "k-3"}


async def test_offers_unlist_a_courier_and_a_release_lists_it_again(
    geo: CourierGeoIndex, sessions: Any
) -> None:
    async with sessions() as s, s.begin():
        await s.execute(
            insert(Location.__table__).values(location_id="store-1", name="S", lat=31.2, lng=121.4)  # type: ignore[attr-defined]
        )
        for cid, lat in (("k-near", 31.201), ("k-far", 31.25)):
            await s.execute(insert(Courier.__table__).values(courier_id=cid, lat=lat, lng=121.4))  # type: ignore[attr-defined]
    await geo.rebuild(sessions)
    acts = CourierActivities(sessionmaker=sessions, geo=geo)
    env = ActivityEnvironment()

    found = await env.run(acts.find_nearest_courier, FindCourierInput("o-1", "store-1", []))
    assert found.courier_id == "k-near"
    assert (await env.run(acts.offer_to_courier, CourierOffer("o-1", "k-near"))).offered
    assert await geo.zone_of_courier("k-near") is None
    found = await env.run(acts.find_nearest_courier, FindCourierInput("o-2", "store-1", []))
    assert found.courier_id == "k-far"

    assert (await env.run(acts.release_courier, CourierOffer("o-1", "k-near"))).offered
    assert await geo.zone_of_courier("k-near") == zone_of(31.201, 121.4, 7)
    found = await env.run(acts.find_nearest_courier, FindCourierInput("o-3", "store-1", ["k-x"]))
    assert found.courier_id == "k-near"
