"""Zone handover between dispatch shards: a stopped or killed shard's zones are matched again by
the live one within lease TTL + one window, and no order is ever offered twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, select

from dispatch.geoindex import CourierGeoIndex
from dispatch.zones import zone_of
from infra.redis import make_redis
from store.db import make_engine, make_sessionmaker
from store.models import Courier
from tests.conftest import REDIS_URL
from tests.integration import shard_process

pytestmark = pytest.mark.slow

STORES = [(31.20, 121.40), (31.25, 121.45), (31.30, 121.50), (31.20, 121.52)]
ZONES = [zone_of(lat, lng, 7) for lat, lng in STORES]
HANDOVER_BOUND_S = (
    shard_process.LEASE_TTL_MS / 1000 + shard_process.WINDOW_S + shard_process.BEAT_S + 2.0
)


@pytest.fixture
async def city(sqlite_url: str) -> AsyncIterator[dict[str, Any]]:
    assert len(set(ZONES)) == len(ZONES)
    prefix = f"t-{uuid.uuid4().hex[:8]}:"
    redis = make_redis(REDIS_URL)
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    async with sessions() as s, s.begin():
        for z, (lat, lng) in enumerate(STORES):
            for i in range(6):
                await s.execute(
                    insert(Courier.__table__).values(  # type: ignore[attr-defined]
                        courier_id=f"k-{z}-{i}", lat=lat + 0.001 * i, lng=lng
                    )
                )
    await CourierGeoIndex(redis, resolution=7, prefix=prefix).rebuild(sessions)
    yield {"redis": redis, "sessions": sessions, "prefix": prefix, "url": sqlite_url}
    keys = [k async for k in redis.scan_iter(f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    await engine.dispose()


async def held(city: dict[str, Any]) -> list[tuple[str, str]]:
    async with city["sessions"]() as s:
        rows = await s.execute(
            select(Courier.courier_id, Courier.current_order_id).where(  # type: ignore[call-overload]
                Courier.current_order_id.is_not(None)  # type: ignore[union-attr]
            )
        )
        return [(c, o) for c, o in rows]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
async def test_a_stopped_shards_zones_move_to_the_live_shard_within_ttl_and_a_window(
    city: dict[str, Any], how: signal.Signals
) -> None:
    here = shard_process.build(city["sessions"], REDIS_URL, city["prefix"], "0", ZONES)
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.shard_process",
        city["url"],
        REDIS_URL,
        city["prefix"],
        "1",
        ",".join(ZONES),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert other.stdout is not None
    runner = asyncio.create_task(here.run())
    try:
        while (
            not (line := (await asyncio.wait_for(other.stdout.readline(), 30)).decode())
            .strip()
            .removeprefix("serving ")
        ):
            pass
        theirs = line.split()[1].split(",")
        ours = await here.registry.zones_of("0", ZONES)
        assert theirs and ours and sorted(theirs + ours) == sorted(ZONES)

        # Both shards match: one order per zone, each offered once.
        for n, (lat, lng) in enumerate(STORES):
            await here.matcher.enqueue(ZONES[n], f"before-{n}", lat=lat, lng=lng)
        for n in range(len(STORES)):
            assert await here.matcher.wait_offer(f"before-{n}", timeout_s=10) is not None

        other.send_signal(how)
        stopped_at = time.monotonic()
        for n, (lat, lng) in enumerate(STORES):
            await here.matcher.enqueue(ZONES[n], f"after-{n}", lat=lat, lng=lng)
        for n, zone in enumerate(ZONES):
            got = await here.matcher.wait_offer(f"after-{n}", timeout_s=15)
            assert got is not None, zone
        took = time.monotonic() - stopped_at
        print(f"handover after {how.name}: {took:.2f} s (bound {HANDOVER_BOUND_S:.1f} s)")
        assert took <= HANDOVER_BOUND_S, (how, took)
        assert sorted(here.serving) == sorted(ZONES)

        offers = await held(city)
        assert len(offers) == 2 * len(STORES)
        assert len({o for _, o in offers}) == len(offers)  # no order offered twice
        for _, order in offers:
            assert await city["redis"].llen(f"{city['prefix']}offer:{order}") == 0  # popped once
    finally:
        if other.returncode is None:
            other.kill()
        await other.wait()
        await here.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
