"""Catalogue reads through the Redis cache (``catalogue:product:<sku>``), invalidated on change."""

from __future__ import annotations

import asyncio
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

    async def product(self, sku: str) -> dict[str, Any] | None:
        """The product as clients see it, or None if there is no such SKU."""

        async def load() -> dict[str, Any] | None:
            # Its own short session: the caller's transaction (SQLite takes the write lock at
            # BEGIN) must not be held while this one runs.
            async with self._sessionmaker() as session:
                p = await session.get(Product, sku)
                return product_dict(p) if p is not None else None

        value = await self._cache.get_or_load(sku, load, self._ttl_s)
        return value if isinstance(value, dict) else None

    async def products(self, skus: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        unique = list(dict.fromkeys(skus))
        gate = asyncio.Semaphore(_MAX_PARALLEL_LOADS)

        async def one(sku: str) -> dict[str, Any] | None:
            async with gate:
                return await self.product(sku)

        found = await asyncio.gather(*(one(s) for s in unique))
        return dict(zip(unique, found, strict=True))

    async def invalidate(self, sku: str) -> None:
        """Drop the cached product. If Redis is down the entry cannot be dropped now; it expires
        within the TTL, and reads meanwhile go to the database anyway."""
        try:
            await self._cache.invalidate(sku)
        except (RedisError, OSError) as exc:
            log.warning("could not invalidate product %s in the cache: %s", sku, exc)
