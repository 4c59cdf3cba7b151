"""Cache-aside in Redis with single-flight loading and lease-checked writes.

On a miss, one caller per key takes a short *lease* (``SET lease NX PX``) and runs the loader;
the others poll briefly for the value and, if it does not show up, read the source themselves
without writing the cache. The lease doubles as a write ticket: the loader stores its value only
if it still holds the lease, and ``invalidate`` deletes value and lease together. So a loader that
read the source before a change and finishes after the change's invalidation cannot put the old
value back (the race that makes naive cache-aside serve a stale price until the TTL ends).

Redis is an optimisation here, never a dependency: on any Redis error the loader's answer is
returned as if there were no cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# KEYS[1] = value key, KEYS[2] = lease key; ARGV[1] = lease token, ARGV[2] = value, ARGV[3] = ttl ms
_STORE_IF_LEASED = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# KEYS[1] = lease key; ARGV[1] = lease token
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

Loader = Callable[[], Awaitable[Any]]

# Errors that mean "Redis is not there right now": fall back to the loader.
_REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)


class CacheAside:
    """JSON values under ``<prefix>:<key>``; a loader's lease under ``<prefix>.lease:<key>``.

    (The lease lives outside the value namespace, so no key can collide with a lease.)
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        lease_ms: int = 3_000,
        wait_s: float = 1.0,
        poll_s: float = 0.02,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease_ms = lease_ms
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._store = redis.register_script(_STORE_IF_LEASED)
        self._release = redis.register_script(_RELEASE_LEASE)

    def value_key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def lease_key(self, key: str) -> str:
        return f"{self._prefix}.lease:{key}"

    async def get_or_load(
        self, key: str, loader: Loader, ttl_s: float, *, cache_none: bool = False
    ) -> Any:
        """The cached value of ``key``, or ``loader()``'s (stored for ``ttl_s`` by one caller).

        ``None`` from the loader is not cached unless ``cache_none``, so an item created behind
        the cache's back (not through a path that invalidates) is seen at once.
        """
        vkey, lkey = self.value_key(key), self.lease_key(key)
        try:
            raw = await self._redis.get(vkey)
            if raw is not None:
                return json.loads(raw)
            token = uuid.uuid4().hex
            leased = await self._redis.set(lkey, token, nx=True, px=self._lease_ms)
        except _REDIS_DOWN as exc:
            log.warning("cache unavailable, reading the source: %s", exc)
            return await loader()

        if leased:
            return await self._load_and_store(vkey, lkey, token, loader, ttl_s, cache_none)
        return await self._wait_for_leaseholder(vkey, lkey, loader)

    async def _load_and_store(
        self,
        vkey: str,
        lkey: str,
        token: str,
        loader: Loader,
        ttl_s: float,
        cache_none: bool,
    ) -> Any:
        try:
            value = await loader()
        except BaseException:
            await self._release_quietly(lkey, token)
            raise
        try:
            if value is None and not cache_none:
                await self._release(keys=[lkey], args=[token])
            else:
                ttl_ms = max(1, int(ttl_s * 1000))
                await self._store(keys=[vkey, lkey], args=[token, json.dumps(value), ttl_ms])
        except _REDIS_DOWN as exc:
            log.warning("cache unavailable, value not stored: %s", exc)
        return value

    async def _wait_for_leaseholder(self, vkey: str, lkey: str, loader: Loader) -> Any:
        deadline = time.monotonic() + self._wait_s
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(self._poll_s)
                # One round trip, one snapshot: a value, or whether someone is still loading.
                raw, lease = await self._redis.mget([vkey, lkey])
                if raw is not None:
                    return json.loads(raw)
                if lease is None:
                    break  # the leaseholder gave up, stored nothing, or was invalidated
        except _REDIS_DOWN as exc:
            log.warning("cache unavailable while waiting, reading the source: %s", exc)
        return await loader()

    async def _release_quietly(self, lkey: str, token: str) -> None:
        try:
            await self._release(keys=[lkey], args=[token])
        except _REDIS_DOWN:
            pass  # the lease expires on its own

    async def invalidate(self, key: str) -> None:
        """Drop the value and any in-flight lease, so the next read loads the source again.

        Raises the Redis error if Redis is down: the caller decides whether that matters.
        """
        await self._redis.delete(self.value_key(key), self.lease_key(key))
