"""Redis client factory (redis-py asyncio)."""

from __future__ import annotations

import redis.asyncio as aioredis


def make_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )
