"""Cache-aside against the real Redis: hits, invalidation, single-flight, stale writes, outages."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from infra.cache import CacheAside
from infra.redis import make_redis

REDIS_URL = "redis://127.0.0.1:6379/0"


class CountingLoader:
    def __init__(self, value: Any, delay_s: float = 0.0) -> None:
        self.value = value
        self.delay_s = delay_s
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.value


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def cache(redis: aioredis.Redis) -> AsyncIterator[CacheAside]:
    prefix = f"test:cache:{uuid.uuid4().hex}"
    yield CacheAside(redis, prefix=prefix)
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_miss_loads_and_stores_then_hits_serve_the_cache(
    cache: CacheAside, redis: aioredis.Redis
) -> None:
    loader = CountingLoader({"sku": "A", "price_cents": 100})
    assert await cache.get_or_load("A", loader, ttl_s=60) == {"sku": "A", "price_cents": 100}
    assert await cache.get_or_load("A", loader, ttl_s=60) == {"sku": "A", "price_cents": 100}
    assert loader.calls == 1
    stored = await redis.get(cache.value_key("A"))
    assert stored is not None and json.loads(stored) == {"sku": "A", "price_cents": 100}
    assert 0 < await redis.pttl(cache.value_key("A")) <= 60_000
    assert await redis.exists(cache.lease_key("A")) == 0


async def test_values_expire_after_the_ttl(cache: CacheAside) -> None:
    loader = CountingLoader(1)
    await cache.get_or_load("k", loader, ttl_s=0.05)
    await asyncio.sleep(0.1)
    await cache.get_or_load("k", loader, ttl_s=0.05)
    assert loader.calls == 2


async def test_invalidation_makes_the_next_read_load_the_new_value(cache: CacheAside) -> None:
    old, new = CountingLoader({"price_cents": 100}), CountingLoader({"price_cents": 150})
    assert await cache.get_or_load("A", old, ttl_s=60) == {"price_cents": 100}
    await cache.invalidate("A")
    assert await cache.get_or_load("A", new, ttl_s=60) == {"price_cents": 150}
    assert await cache.get_or_load("A", old, ttl_s=60) == {"price_cents": 150}


async def test_fifty_concurrent_misses_run_the_loader_once(cache: CacheAside) -> None:
    loader = CountingLoader({"v": 1}, delay_s=0.2)
    results = await asyncio.gather(
        *(cache.get_or_load("cold", loader, ttl_s=60) for _ in range(50))
    )
    assert loader.calls == 1
    assert results == [{"v": 1}] * 50


async def test_a_load_that_straddles_an_invalidation_does_not_store_the_old_value(
    cache: CacheAside,
) -> None:
    # The loader reads the source (old price), the price changes and the cache is invalidated,
    # then the loader finishes: storing now would serve the old price until the TTL ends.
    read_done = asyncio.Event()
    finish = asyncio.Event()

    async def slow_old_loader() -> dict[str, int]:
        read_done.set()
        await finish.wait()
        return {"price_cents": 100}

    task = asyncio.create_task(cache.get_or_load("A", slow_old_loader, ttl_s=60))
    await read_done.wait()
    await cache.invalidate("A")
    finish.set()
    assert await task == {"price_cents": 100}  # the caller still gets what it read

    fresh = CountingLoader({"price_cents": 150})
    assert await cache.get_or_load("A", fresh, ttl_s=60) == {"price_cents": 150}
    assert fresh.calls == 1


async def test_none_is_not_cached_unless_asked(cache: CacheAside) -> None:
    missing = CountingLoader(None)
    assert await cache.get_or_load("gone", missing, ttl_s=60) is None
    assert await cache.get_or_load("gone", missing, ttl_s=60) is None
    assert missing.calls == 2
    assert await cache.get_or_load("gone2", missing, ttl_s=60, cache_none=True) is None
    assert await cache.get_or_load("gone2", missing, ttl_s=60, cache_none=True) is None
    assert missing.calls == 3


async def test_a_failing_loader_releases_the_lease_at_once(cache: CacheAside) -> None:
    async def broken() -> None:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError):
        await cache.get_or_load("k", broken, ttl_s=60)
    loader = CountingLoader(7)
    started = asyncio.get_running_loop().time()
    assert await cache.get_or_load("k", loader, ttl_s=60) == 7
    assert asyncio.get_running_loop().time() - started < 0.5  # did not wait for the lease
    assert loader.calls == 1


async def test_waiters_read_the_source_themselves_when_the_leaseholder_is_too_slow(
    redis: aioredis.Redis,
) -> None:
    prefix = f"test:cache:{uuid.uuid4().hex}"
    cache = CacheAside(redis, prefix=prefix, wait_s=0.1)
    loader = CountingLoader("v", delay_s=0.4)
    try:
        results = await asyncio.gather(
            *(cache.get_or_load("k", loader, ttl_s=60) for _ in range(5))
        )
    finally:
        await redis.delete(cache.value_key("k"), cache.lease_key("k"))
    assert results == ["v"] * 5
    assert loader.calls == 5  # one leaseholder + four that gave up waiting


async def test_with_redis_down_the_loader_answers() -> None:
    dead = make_redis(f"redis://127.0.0.1:{closed_port()}/0")  # the production client factory
    cache = CacheAside(dead, prefix="test:cache:dead")
    loader = CountingLoader({"sku": "A"})
    started = asyncio.get_running_loop().time()
    try:
        assert await cache.get_or_load("A", loader, ttl_s=60) == {"sku": "A"}
        assert await cache.get_or_load("A", loader, ttl_s=60) == {"sku": "A"}
        assert loader.calls == 2
        assert asyncio.get_running_loop().time() - started < 1.0  # no long retry loop
        with pytest.raises(Exception):  # noqa: B017 - invalidation reports the outage
            await cache.invalidate("A")
    finally:
        await dead.aclose()
