"""One dispatch shard as its own process, for handover tests (``python -m
tests.integration.shard_process DB_URL REDIS_URL PREFIX SHARD ZONES``). SIGTERM stops it
gracefully (leaves the ring, releases its leases); SIGKILL leaves both to expire. Prints
``serving <zones>`` whenever what it serves changes."""

from __future__ import annotations

import asyncio
import signal
import sys

from dispatch.geoindex import CourierGeoIndex
from dispatch.service import ShardRegistry, ShardService, ZoneMatcher
from infra.locks import Redlock, RedlockConfig
from infra.redis import make_redis
from store.db import make_engine, make_sessionmaker
from store.fencing import token_source

LEASE_TTL_MS = 1500
WINDOW_S = 0.2
BEAT_S = 0.3


def build(sessions, redis_url: str, prefix: str, shard: str, zones: list[str]) -> ShardService:  # type: ignore[no-untyped-def]
    redis = make_redis(redis_url)
    lock = Redlock(
        [make_redis(redis_url)],
        RedlockConfig(
            ttl_ms=LEASE_TTL_MS,
            retry_count=5,
            retry_delay_ms=50,
            node_timeout_ms=300,
            prefix=prefix,
        ),
        fencing=token_source(sessions),
    )
    geo = CourierGeoIndex(redis, resolution=7, prefix=prefix)
    matcher = ZoneMatcher(redis, geo, sessions, lock, window_s=WINDOW_S, prefix=prefix)
    registry = ShardRegistry(redis, prefix=prefix, ttl_s=LEASE_TTL_MS / 1000)
    return ShardService(shard, registry, matcher, zones, beat_s=BEAT_S)


async def main(db_url: str, redis_url: str, prefix: str, shard: str, zones: list[str]) -> None:
    engine = make_engine(db_url)
    service = build(make_sessionmaker(engine), redis_url, prefix, shard, zones)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    runner = asyncio.create_task(service.run())
    last: list[str] = []
    while not stopped.is_set():
        if service.serving != last:
            last = service.serving
            print("serving " + ",".join(last), flush=True)
        await asyncio.sleep(0.05)
    await service.stop()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await engine.dispose()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5], sys.argv[5].split(",")))
