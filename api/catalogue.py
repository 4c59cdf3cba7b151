"""Catalogue reads through the Redis cache (``catalogue:product:<sku>``), invalidated on change."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from infra.cache import CacheAside
from store.models import Product

log = logging.getLogger(__name__)

PRODUCT_CACHE_PREFIX = "catalogue:product"
PRODUCT_TTL_S = 60.0
_MAX_PARALLEL_LOADS = 8
_RECENT_MAX = 4096


def product_dict(p: Product) -> dict[str, Any]:
    return {
        "sku": p.sku,
        "name": p.name,
        "price_cents": p.price_cents,
        "currency": p.currency,
        "hot": bool(p.hot),
    }


class Catalogue:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        cache: CacheAside,
        *,
        ttl_s: float = PRODUCT_TTL_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._cache = cache
        self._ttl_s = ttl_s
        self._recent: dict[str, tuple[str, dict[str, Any]]] = {}
        """The last value read per SKU in this process, with its cache entry as stored
        (``json.dumps`` of it): a guess that the checkout's edge script checks against the
        cache in the same round trip (``recent``), never an answer by itself."""

    async def product(self, sku: str) -> dict[str, Any] | None:
        """The product as clients see it, or None if there is no such SKU."""

        async def load() -> dict[str, Any] | None:
            # Its own short session: the caller's transaction (SQLite takes the write lock at
            # BEGIN) must not be held while this one runs.
            async with self._sessionmaker() as session:
                p = await session.get(Product, sku)
                return product_dict(p) if p is not None else None

        value = await self._cache.get_or_load(sku, load, self._ttl_s)
        if not isinstance(value, dict):
            self._recent.pop(sku, None)
            return None
        if len(self._recent) >= _RECENT_MAX:
            self._recent.clear()
        self._recent[sku] = (json.dumps(value), value)
        return value

    async def products(self, skus: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        unique = list(dict.fromkeys(skus))
        if len(unique) == 1:
            return {unique[0]: await self.product(unique[0])}
        gate = asyncio.Semaphore(_MAX_PARALLEL_LOADS)

        async def one(sku: str) -> dict[str, Any] | None:
            async with gate:
                return await self.product(sku)

        found = await asyncio.gather(*(one(s) for s in unique))
        return dict(zip(unique, found, strict=True))

    def recent(self, skus: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]] | None:
        """Per SKU, the cache entry (as stored) and the product this process read last; None
        unless every SKU has one. For a caller that checks the entries against the cache
        itself (``cache_key``) before it uses the products: they may be stale."""
        try:
            return {sku: self._recent[sku] for sku in skus}
        except KeyError:
            return None

    def forget(self, skus: Iterable[str]) -> None:
        for sku in skus:
            self._recent.pop(sku, None)

    def cache_key(self, sku: str) -> str:
        return self._cache.value_key(sku)

    async def invalidate(self, sku: str) -> None:
        """Drop the cached product. If Redis is down the entry cannot be dropped now; it expires
        within the TTL, and reads meanwhile go to the database anyway."""
        self._recent.pop(sku, None)
        try:
            await self._cache.invalidate(sku)
        except (RedisError, OSError) as exc:
            log.warning("could not invalidate product %s in the cache: %s", sku, exc)
