"""The zone matcher on the real Redis and DB: batch offers only under the zone's lease, fenced."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, select

from dispatch.geoindex import CourierGeoIndex
from dispatch.service import ShardRegistry, ZoneMatcher
from dispatch.zones import zone_of
from infra.locks import LeaseLost, Redlock, RedlockConfig
from infra.redis import make_redis
from store.db import make_engine, make_sessionmaker
from store.fencing import Fence, next_token, token_source
from store.models import Courier
from tests.conftest import REDIS_URL

STORE = (31.2304, 121.4737)
ZONE = zone_of(*STORE, 7)


@pytest.fixture
async def world(sqlite_url: str) -> AsyncIterator[dict[str, Any]]:
    prefix = f"t-{uuid.uuid4().hex[:8]}:"
    redis = make_redis(REDIS_URL)
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    rnd = random.Random(5)
    async with sessions() as s, s.begin():
        for i in range(30):
            await s.execute(
                insert(Courier.__table__).values(  # type: ignore[attr-defined]
                    courier_id=f"k-{i}",
                    lat=STORE[0] + rnd.uniform(-0.008, 0.008),
                    lng=STORE[1] + rnd.uniform(-0.008, 0.008),
                )
            )
    geo = CourierGeoIndex(redis, resolution=7, prefix=prefix)
    await geo.rebuild(sessions)
    yield {"redis": redis, "sessions": sessions, "geo": geo, "prefix": prefix}
    keys = [k async for k in redis.scan_iter(f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    await engine.dispose()


def matcher(w: dict[str, Any], *, ttl_ms: int = 1500, window_s: float = 0.2) -> ZoneMatcher:
    lock = Redlock(
        [make_redis(REDIS_URL)],
        RedlockConfig(
            ttl_ms=ttl_ms,
            retry_count=200,
            retry_delay_ms=50,
            node_timeout_ms=300,
            prefix=w["prefix"],
        ),
        fencing=token_source(w["sessions"]),
    )
    return ZoneMatcher(
        w["redis"], w["geo"], w["sessions"], lock, window_s=window_s, prefix=w["prefix"]
    )


async def offers(w: dict[str, Any]) -> list[tuple[str, str | None, int | None]]:
    async with w["sessions"]() as s:
        rows = await s.execute(
            select(Courier.courier_id, Courier.current_order_id, Courier.fencing_token)  # type: ignore[call-overload]
        )
        return [tuple(r) for r in rows]


async def test_two_matchers_on_one_zone_offer_each_order_once_and_only_under_the_lease(
    world: dict[str, Any],
) -> None:
    a, b = matcher(world), matcher(world)
    rnd = random.Random(9)
    for i in range(40):
        await a.enqueue(ZONE, f"o-{i}", lat=STORE[0] + rnd.uniform(-0.004, 0.004), lng=STORE[1])
    await asyncio.gather(a.serve(ZONE, rounds=2), b.serve(ZONE, rounds=2))
    held = [(c, o, t) for c, o, t in await offers(world) if o is not None]
    assert len(held) == 30  # every courier got one order; 10 orders still wait
    assert len({o for _, o, _ in held}) == 30  # no order offered to two couriers
    assert len({t for _, _, t in held}) == 1  # all written under the first holder's lease
    for _, order, _ in held:
        assert await world["redis"].llen(f"{world['prefix']}offer:{order}") == 1
    assert await world["redis"].zcard(f"{world['prefix']}pending:{ZONE}") == 10


async def test_a_matcher_whose_zone_was_taken_over_writes_nothing(world: dict[str, Any]) -> None:
    old, new = matcher(world), matcher(world)
    await old.enqueue(ZONE, "o-1", lat=STORE[0], lng=STORE[1])
    first = await old.redlock.acquire(f"zone:{ZONE}")
    await old.redis.delete(old.redlock.key_for(f"zone:{ZONE}"))  # its lease lapsed meanwhile
    second = await new.redlock.acquire(f"zone:{ZONE}")
    assert await new.match_once(ZONE, Fence(ZONE, second.token or 0)) == 1
    await old.enqueue(ZONE, "o-2", lat=STORE[0], lng=STORE[1])
    with pytest.raises(LeaseLost):
        await old.match_once(ZONE, Fence(ZONE, first.token or 0))
    assert [o for _, o, _ in await offers(world) if o is not None] == ["o-1"]


async def test_a_dead_matchers_zone_is_served_again_within_lease_ttl_and_one_window(
    world: dict[str, Any],
) -> None:
    dead, heir = matcher(world, ttl_ms=1500), matcher(world, ttl_ms=1500)
    await dead.redlock.acquire(f"zone:{ZONE}")  # and never releases it: SIGKILL
    await heir.enqueue(ZONE, "o-1", lat=STORE[0], lng=STORE[1])
    started = time.monotonic()
    task = asyncio.create_task(heir.serve(ZONE))
    got = await heir.wait_offer("o-1", timeout_s=10)
    took = time.monotonic() - started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got is not None
    assert took <= 1.5 + heir.window_s + 1.5  # lease TTL + a window + scheduling slack


async def test_live_shards_divide_the_zones_between_them(world: dict[str, Any]) -> None:
    reg = ShardRegistry(world["redis"], prefix=world["prefix"], ttl_s=0.5)
    zones = [f"zone-{i}" for i in range(60)]
    await reg.heartbeat("0")
    await reg.heartbeat("1")
    mine0, mine1 = await reg.zones_of("0", zones), await reg.zones_of("1", zones)
    assert sorted(mine0 + mine1) == sorted(zones) and not set(mine0) & set(mine1)
    await asyncio.sleep(0.7)  # shard 1 stops beating
    await reg.heartbeat("0")
    assert await reg.members() == ["0"]
    assert await reg.zones_of("0", zones) == sorted(zones)
    assert await reg.zones_of("1", zones) == []


async def test_an_order_is_never_offered_to_a_courier_it_excludes(world: dict[str, Any]) -> None:
    m = matcher(world)
    nearest = (await world["geo"].search(lat=STORE[0], lng=STORE[1], radius_km=5, count=3))[0]
    await m.enqueue(ZONE, "o-ex", lat=STORE[0], lng=STORE[1], exclude=[nearest.courier_id])
    async with world["sessions"]() as s, s.begin():
        token = await next_token(s, name=f"zone:{ZONE}")
    assert await m.match_once(ZONE, Fence(ZONE, token)) == 1
    got = await m.wait_offer("o-ex", timeout_s=1)
    assert got is not None and got != nearest.courier_id


async def test_the_claim_lets_only_one_of_a_matcher_and_a_withdrawing_order_act(
    world: dict[str, Any],
) -> None:
    m = matcher(world)
    q = m.queue
    async with world["sessions"]() as s, s.begin():
        token = await next_token(s, name=f"zone:{ZONE}")
    # Withdrawn first: the matcher offers nothing.
    await m.enqueue(ZONE, "o-gone", lat=STORE[0], lng=STORE[1])
    assert await q.withdraw(ZONE, "o-gone") is True
    assert await m.match_once(ZONE, Fence(ZONE, token)) == 0
    assert all(o != "o-gone" for _, o, _ in await offers(world))
    # Matched first: the order's withdraw loses (False) and the offer is there to pick up.
    await m.enqueue(ZONE, "o-kept", lat=STORE[0], lng=STORE[1])
    assert await m.match_once(ZONE, Fence(ZONE, token)) == 1
    assert await q.withdraw(ZONE, "o-kept") is False
    held = [c for c, o, _ in await offers(world) if o == "o-kept"]
    assert len(held) == 1 and await m.wait_offer("o-kept", timeout_s=1) == held[0]


async def test_a_courier_missing_from_the_index_is_found_in_the_table(
    world: dict[str, Any],
) -> None:
    m = matcher(world)
    where = f"{world['prefix']}geo:where"
    for cid in await world["redis"].hkeys(where):
        await world["geo"].remove(cid)  # the index lags: nobody listed at all
    await m.enqueue(ZONE, "o-lag", lat=STORE[0], lng=STORE[1])
    async with world["sessions"]() as s, s.begin():
        token = await next_token(s, name=f"zone:{ZONE}")
    assert await m.match_once(ZONE, Fence(ZONE, token)) == 1
    assert await m.wait_offer("o-lag", timeout_s=1) is not None
    assert await world["redis"].hlen(where) > 0  # what the table said is listed again


async def test_a_refused_offer_puts_the_order_back_with_its_enqueue_time(
    world: dict[str, Any],
) -> None:
    m = matcher(world)
    await m.enqueue(ZONE, "o-back", lat=STORE[0], lng=STORE[1])
    since = await world["redis"].zscore(m.queue.pending(ZONE), "o-back")
    async with world["sessions"]() as s, s.begin():  # every courier taken behind the index
        await s.execute(
            Courier.__table__.update().values(current_order_id="someone-else")  # type: ignore[attr-defined]
        )
        token = await next_token(s, name=f"zone:{ZONE}")
    assert await m.match_once(ZONE, Fence(ZONE, token)) == 0
    assert await world["redis"].zscore(m.queue.pending(ZONE), "o-back") == since


async def test_an_order_enqueued_again_while_a_courier_holds_it_is_not_offered_twice(
    world: dict[str, Any],
) -> None:
    """A routed-again request puts the order back in the pending set while its first offer
    stands: the matcher publishes the holder again instead of offering a second courier."""
    m = matcher(world)
    async with world["sessions"]() as s, s.begin():
        token = await next_token(s, name=f"zone:{ZONE}")
    await m.enqueue(ZONE, "o-twice", lat=STORE[0], lng=STORE[1])
    assert await m.match_once(ZONE, Fence(ZONE, token)) == 1
    first = await m.wait_offer("o-twice", timeout_s=1)
    await m.enqueue(ZONE, "o-twice", lat=STORE[0], lng=STORE[1])
    assert await m.match_once(ZONE, Fence(ZONE, token)) == 0
    assert [c for c, o, _ in await offers(world) if o == "o-twice"] == [first]
    assert await m.wait_offer("o-twice", timeout_s=1) == first


async def test_a_shard_stays_live_while_one_of_its_replicas_beats(world: dict[str, Any]) -> None:
    one = ShardRegistry(world["redis"], prefix=world["prefix"], ttl_s=5)
    two = ShardRegistry(world["redis"], prefix=world["prefix"], ttl_s=5)
    await one.heartbeat("0")
    await two.heartbeat("0")
    await two.heartbeat("1")
    assert await one.members() == ["0", "1"]
    await one.leave("0")  # a replica of shard 0 stops gracefully: shard 0 stays in the ring
    assert await two.members() == ["0", "1"]
    await two.leave("0")
    assert await two.members() == ["1"]


async def test_a_cancelled_order_leaves_the_zone_even_when_a_matcher_holds_it_then_puts_it_back(
    world: dict[str, Any],
) -> None:
    """The matcher claimed the order (its ZREM) just before the cancel's withdraw, then found
    the courier taken and put the order back: the order must not stay pending, or the next
    window would offer a cancelled order to a courier."""
    q = matcher(world).queue
    await q.enqueue(ZONE, "o-back-late", lat=STORE[0], lng=STORE[1])
    since = await world["redis"].zscore(q.pending(ZONE), "o-back-late")
    assert await world["redis"].zrem(q.pending(ZONE), "o-back-late")  # the matcher's claim
    leaving = asyncio.ensure_future(q.leave(ZONE, "o-back-late", grace_s=5))
    await asyncio.sleep(0.3)
    assert not leaving.done()  # it waits while the matcher holds the order
    await q.requeue(ZONE, "o-back-late", since)  # the courier was taken: back it goes
    await asyncio.wait_for(leaving, 2)
    assert await world["redis"].zscore(q.pending(ZONE), "o-back-late") is None
    assert not await world["redis"].hexists(q.pickup, "o-back-late")


async def test_a_cancelled_order_leaves_once_the_matcher_holding_it_publishes_its_offer(
    world: dict[str, Any],
) -> None:
    q = matcher(world).queue
    await q.enqueue(ZONE, "o-offered-late", lat=STORE[0], lng=STORE[1])
    assert await world["redis"].zrem(q.pending(ZONE), "o-offered-late")  # the matcher's claim
    started = time.monotonic()
    leaving = asyncio.ensure_future(q.leave(ZONE, "o-offered-late", grace_s=5))
    await asyncio.sleep(0.3)
    assert not leaving.done()
    await q.publish("o-offered-late", "k-1")  # the offer landed: the caller frees k-1 next
    await asyncio.wait_for(leaving, 2)
    assert 0.3 <= time.monotonic() - started < 2
    assert await world["redis"].zscore(q.pending(ZONE), "o-offered-late") is None


async def test_an_order_that_was_not_waiting_leaves_at_once(world: dict[str, Any]) -> None:
    q = matcher(world).queue
    started = time.monotonic()
    await q.leave(ZONE, "o-never-waited", grace_s=5)
    assert time.monotonic() - started < 0.5
