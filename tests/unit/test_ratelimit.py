"""GCRA limiter against the real Redis: bursts, refills, retry hints, concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from infra.ratelimit import GcraLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix of this test only; its keys are removed afterwards."""
    p = f"test:rl:{uuid.uuid4().hex}"
    yield p
    keys = [k async for k in redis.scan_iter(match=f"{p}:*")]
    if keys:
        await redis.delete(*keys)


async def test_a_burst_is_allowed_then_refused_with_a_retry_hint(
    redis: aioredis.Redis, prefix: str
) -> None:
    limiter = GcraLimiter(redis, rate_per_s=1.0, burst=5, prefix=prefix)
    decisions = [await limiter.allow("c-1") for _ in range(6)]

    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[-1]
    # One token comes back every second; the test's own calls took a few ms of it.
    assert 0.5 < refused.retry_after_s <= 1.0
    assert refused.retry_after_header == "1"


async def test_tokens_come_back_at_the_configured_rate(redis: aioredis.Redis, prefix: str) -> None:
    limiter = GcraLimiter(redis, rate_per_s=20.0, burst=2, prefix=prefix)
    assert (await limiter.allow("k")).allowed
    assert (await limiter.allow("k")).allowed
    refused = await limiter.allow("k")
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 0.05

    await asyncio.sleep(refused.retry_after_s + 0.01)
    assert (await limiter.allow("k")).allowed
    assert not (await limiter.allow("k")).allowed  # only one token had come back


async def test_a_full_bucket_refills_after_burst_over_rate(
    redis: aioredis.Redis, prefix: str
) -> None:
    limiter = GcraLimiter(redis, rate_per_s=50.0, burst=3, prefix=prefix)
    for _ in range(3):
        assert (await limiter.allow("k")).allowed
    await asyncio.sleep(3 / 50 + 0.02)
    assert [(await limiter.allow("k")).allowed for _ in range(4)] == [True, True, True, False]


async def test_keys_are_independent(redis: aioredis.Redis, prefix: str) -> None:
    limiter = GcraLimiter(redis, rate_per_s=0.1, burst=1, prefix=prefix)
    assert (await limiter.allow("a")).allowed
    assert not (await limiter.allow("a")).allowed
    assert (await limiter.allow("b")).allowed


async def test_concurrent_callers_never_get_more_than_the_burst(
    redis: aioredis.Redis, prefix: str
) -> None:
    limiter = GcraLimiter(redis, rate_per_s=0.01, burst=10, prefix=prefix)
    # Separate clients too, as separate API replicas would be.
    others = [aioredis.Redis.from_url(REDIS_URL) for _ in range(3)]
    limiters = [limiter] + [
        GcraLimiter(o, rate_per_s=0.01, burst=10, prefix=prefix) for o in others
    ]
    try:
        decisions = await asyncio.gather(
            *(limiters[i % len(limiters)].allow("hot") for i in range(200))
        )
    finally:
        for o in others:
            await o.aclose()
    assert sum(d.allowed for d in decisions) == 10


async def test_cost_takes_several_tokens(redis: aioredis.Redis, prefix: str) -> None:
    limiter = GcraLimiter(redis, rate_per_s=0.1, burst=5, prefix=prefix)
    assert (await limiter.allow("k", cost=3)).remaining == 2
    assert not (await limiter.allow("k", cost=3)).allowed
    assert (await limiter.allow("k", cost=2)).allowed
    with pytest.raises(ValueError):
        await limiter.allow("k", cost=6)


async def test_bucket_keys_expire_once_full_again(redis: aioredis.Redis, prefix: str) -> None:
    limiter = GcraLimiter(redis, rate_per_s=10.0, burst=4, prefix=prefix)
    await limiter.allow("k")
    ttl_ms = await redis.pttl(limiter.key("k"))
    assert 0 < ttl_ms <= 100  # one token's worth: 1 / 10 s
    await asyncio.sleep(0.15)
    assert await redis.exists(limiter.key("k")) == 0


async def test_works_after_the_script_cache_is_flushed(redis: aioredis.Redis, prefix: str) -> None:
    limiter = GcraLimiter(redis, rate_per_s=1.0, burst=2, prefix=prefix)
    assert (await limiter.allow("k")).allowed
    await redis.script_flush()  # EVALSHA now answers NOSCRIPT; the client reloads the script
    assert (await limiter.allow("k")).allowed
    assert not (await limiter.allow("k")).allowed


def test_rejects_nonsense_configuration() -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    with pytest.raises(ValueError):
        GcraLimiter(client, rate_per_s=0, burst=1, prefix="x")
    with pytest.raises(ValueError):
        GcraLimiter(client, rate_per_s=1, burst=0, prefix="x")
