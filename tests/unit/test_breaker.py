"""Circuit breaker against the real Redis: rates, slow calls, bounded probes, shared state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from infra.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Permit,
)
from tests.api.helpers import closed_port

REDIS_URL = "redis://127.0.0.1:6379/0"

FAST = BreakerConfig(
    window_s=10,
    buckets=10,
    min_calls=10,
    failure_rate=0.5,
    slow_call_s=0.5,
    slow_call_rate=0.6,
    open_s=0.3,
    half_open_probes=3,
    probe_successes=2,
    probe_timeout_s=5,
)
"""Half-open rounds of three probes: two successes close it, two failures reopen it."""


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix of this test only; its keys are removed afterwards."""
    p = f"test:breaker:{uuid.uuid4().hex}"
    yield p
    keys = [k async for k in redis.scan_iter(match=f"{p}:*")]
    if keys:
        await redis.delete(*keys)


def make(redis: aioredis.Redis, prefix: str, config: BreakerConfig = FAST) -> CircuitBreaker:
    return CircuitBreaker(redis, name="psp", config=config, prefix=prefix)


async def call(breaker: CircuitBreaker, *, failed: bool = False, duration_s: float = 0.01) -> None:
    permit = await breaker.allow()
    await breaker.record(permit, failed=failed, duration_s=duration_s)


async def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.min_calls):
        await call(breaker, failed=True)
    assert await breaker.state() == BreakerState.OPEN


async def until_half_open(breaker: CircuitBreaker) -> None:
    await asyncio.sleep(breaker.config.open_s + 0.05)
    assert await breaker.state() == BreakerState.HALF_OPEN


async def test_a_failure_rate_at_the_threshold_opens_it_though_failures_never_run_in_a_row(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    for i in range(9):
        await call(breaker, failed=i % 2 == 1)  # 4 failures in 9 calls, never two in a row
    assert await breaker.state() == BreakerState.CLOSED, "below min_calls: no verdict yet"
    await call(breaker, failed=True)  # 5 of 10: 50 %

    snap = await breaker.snapshot()
    assert snap.state == BreakerState.OPEN
    assert 0.2 < snap.open_for_s <= FAST.open_s
    with pytest.raises(CircuitOpen) as refused:
        await breaker.allow()
    assert refused.value.state == BreakerState.OPEN
    assert 0 < refused.value.retry_after_s <= FAST.open_s


async def test_a_failure_rate_below_the_threshold_keeps_it_closed(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    for i in range(40):
        await call(breaker, failed=i % 5 >= 3)  # never above 40 % failures, in runs of two
    snap = await breaker.snapshot()
    assert snap.state == BreakerState.CLOSED
    assert (snap.calls, snap.failures, snap.slow_calls) == (40, 16, 0)


async def test_slow_calls_open_it_even_when_they_all_succeed(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    for i in range(10):
        await call(breaker, duration_s=0.6 if i < 6 else 0.1)  # 60 % slow, none failed
    assert await breaker.state() == BreakerState.OPEN


async def test_old_outcomes_slide_out_of_the_window(redis: aioredis.Redis, prefix: str) -> None:
    config = BreakerConfig(window_s=0.5, buckets=5, min_calls=10, failure_rate=0.5)
    breaker = make(redis, prefix, config)
    for _ in range(9):
        await call(breaker, failed=True)
    await asyncio.sleep(0.6)  # every bucket of those nine has left the window
    assert (await breaker.snapshot()).calls == 0
    await call(breaker, failed=True)
    snap = await breaker.snapshot()
    assert (snap.state, snap.calls) == (BreakerState.CLOSED, 1)


async def test_half_open_lets_exactly_the_probe_budget_through_to_fifty_concurrent_callers(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    await trip(breaker)
    await until_half_open(breaker)

    outcomes = await asyncio.gather(*(breaker.allow() for _ in range(50)), return_exceptions=True)

    permits = [o for o in outcomes if isinstance(o, Permit)]
    refused = [o for o in outcomes if isinstance(o, CircuitOpen)]
    assert len(permits) == FAST.half_open_probes
    assert all(p.probe for p in permits)
    assert len(refused) == 50 - FAST.half_open_probes
    assert {r.state for r in refused} == {BreakerState.HALF_OPEN}


async def test_successful_probes_close_it_with_an_empty_window(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    await trip(breaker)
    await until_half_open(breaker)
    first, second = await breaker.allow(), await breaker.allow()

    assert await breaker.record(first, failed=False, duration_s=0.01) == BreakerState.HALF_OPEN
    assert await breaker.record(second, failed=False, duration_s=0.01) == BreakerState.CLOSED
    snap = await breaker.snapshot()
    assert (snap.state, snap.calls, snap.failures) == (BreakerState.CLOSED, 0, 0)
    assert not (await breaker.allow()).probe


async def test_one_failed_probe_is_tolerated_and_a_second_opens_it_again(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    await trip(breaker)
    await until_half_open(breaker)
    first, second = await breaker.allow(), await breaker.allow()
    assert await breaker.record(first, failed=True, duration_s=0.01) == BreakerState.HALF_OPEN
    assert await breaker.record(second, failed=True, duration_s=0.01) == BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await breaker.allow()


async def test_slow_probes_count_as_failed_ones(redis: aioredis.Redis, prefix: str) -> None:
    breaker = make(redis, prefix)
    await trip(breaker)
    await until_half_open(breaker)
    probes = [await breaker.allow() for _ in range(2)]
    for probe in probes:  # answered, but too slowly
        state = await breaker.record(probe, failed=False, duration_s=0.7)
    assert state == BreakerState.OPEN


async def test_a_single_probe_round_reopens_on_its_one_failure(
    redis: aioredis.Redis, prefix: str
) -> None:
    config = BreakerConfig(min_calls=2, open_s=0.2, half_open_probes=1, probe_successes=1)
    breaker = make(redis, prefix, config)
    await trip(breaker)
    await until_half_open(breaker)
    assert await breaker.record(await breaker.allow(), failed=True, duration_s=0) == (
        BreakerState.OPEN
    )


async def test_probes_reporting_after_the_round_is_decided_change_nothing(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    await trip(breaker)
    await until_half_open(breaker)
    probes = [await breaker.allow() for _ in range(3)]

    assert await breaker.record(probes[0], failed=True, duration_s=0.01) == BreakerState.HALF_OPEN
    assert await breaker.record(probes[1], failed=True, duration_s=0.01) == BreakerState.OPEN
    assert await breaker.record(probes[2], failed=False, duration_s=0.01) == BreakerState.OPEN


async def test_calls_let_through_before_it_opened_do_not_count_afterwards(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    straggler = await breaker.allow()  # a slow call still running when the breaker opens
    await trip(breaker)
    await until_half_open(breaker)
    probe = await breaker.allow()

    other = await breaker.allow()

    # The straggler's failure belongs to the closed period that ended: it counts nowhere.
    assert await breaker.record(straggler, failed=True, duration_s=3) == BreakerState.HALF_OPEN
    assert await breaker.record(probe, failed=True, duration_s=0.01) == BreakerState.HALF_OPEN
    assert await breaker.record(other, failed=False, duration_s=0.01) == BreakerState.HALF_OPEN


async def test_a_released_probe_frees_its_slot(redis: aioredis.Redis, prefix: str) -> None:
    config = BreakerConfig(min_calls=2, open_s=0.2, half_open_probes=1, probe_successes=1)
    breaker = make(redis, prefix, config)
    await trip(breaker)
    await until_half_open(breaker)
    probe = await breaker.allow()
    with pytest.raises(CircuitOpen):
        await breaker.allow()

    await breaker.release(probe)  # e.g. the rate limiter said no: the call was never made
    assert (await breaker.allow()).probe


async def test_an_abandoned_probe_round_starts_afresh_after_the_probe_timeout(
    redis: aioredis.Redis, prefix: str
) -> None:
    config = BreakerConfig(
        min_calls=2, open_s=0.2, half_open_probes=2, probe_successes=1, probe_timeout_s=0.3
    )
    breaker = make(redis, prefix, config)
    await trip(breaker)
    await until_half_open(breaker)
    lost = [await breaker.allow(), await breaker.allow()]  # their workers die mid-call
    with pytest.raises(CircuitOpen) as refused:
        await breaker.allow()
    assert 0 < refused.value.retry_after_s <= 0.3

    await asyncio.sleep(0.35)
    fresh = await breaker.allow()
    assert fresh.probe and fresh.generation > lost[0].generation
    assert await breaker.record(lost[0], failed=True, duration_s=0.01) == BreakerState.HALF_OPEN
    assert await breaker.record(fresh, failed=False, duration_s=0.01) == BreakerState.CLOSED


async def test_two_workers_share_one_breaker(redis: aioredis.Redis, prefix: str) -> None:
    other_process = aioredis.Redis.from_url(REDIS_URL)  # its own connection, bytes replies
    try:
        worker_a = make(redis, prefix)
        worker_b = make(other_process, prefix)
        for i in range(10):
            await call(worker_a if i % 2 else worker_b, failed=i % 2 == 0)
        for worker in (worker_a, worker_b):
            with pytest.raises(CircuitOpen):
                await worker.allow()

        await until_half_open(worker_a)
        permits = await asyncio.gather(
            *(w.allow() for w in [worker_a, worker_b] * 5), return_exceptions=True
        )
        probes = [p for p in permits if isinstance(p, Permit)]
        assert len(probes) == FAST.half_open_probes
        assert await worker_a.record(probes[0], failed=False, duration_s=0.01) == (
            BreakerState.HALF_OPEN
        )
        assert await worker_b.record(probes[1], failed=False, duration_s=0.01) == (
            BreakerState.CLOSED
        )
        assert await worker_a.state() == BreakerState.CLOSED
    finally:
        await other_process.aclose()


async def test_reset_closes_it_and_voids_earlier_permits(
    redis: aioredis.Redis, prefix: str
) -> None:
    breaker = make(redis, prefix)
    early = await breaker.allow()
    await trip(breaker)
    await breaker.reset()

    assert await breaker.state() == BreakerState.CLOSED
    await breaker.record(early, failed=True, duration_s=0.01)
    assert (await breaker.snapshot()).calls == 0


async def test_without_redis_it_fails_open_and_tracks_nothing() -> None:
    down = aioredis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        breaker = CircuitBreaker(down, name="psp", config=FAST, prefix="test:breaker:down")
        permit = await breaker.allow()
        assert not permit.tracked
        assert await breaker.record(permit, failed=True, duration_s=1) is None
    finally:
        await down.aclose()


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_rate=0)
    with pytest.raises(ValueError):
        BreakerConfig(half_open_probes=1, probe_successes=2)
    with pytest.raises(ValueError):
        BreakerConfig(buckets=0)
