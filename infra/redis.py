"""Redis client factory (redis-py asyncio)."""

from __future__ import annotations

import redis.asyncio as aioredis

NOW_US_LUA = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
"""Lua that sets ``now`` to the Redis server's clock in microseconds: every client's script
reads the one clock, so hosts whose clocks disagree still agree on time."""


def lua_with_now(script: str) -> str:
    """``script`` with ``now`` (``NOW_US_LUA``) set before its first line."""
    return NOW_US_LUA + script


def make_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )
