"""Free couriers in a Redis GEO index per zone, so a candidate search reads only nearby couriers.

Keys (``prefix`` keeps fleets apart on one Redis):

* ``<prefix>geo:<zone>``: a GEO set of the free couriers in that zone;
* ``<prefix>geo:where``: hash courier -> the zone whose set lists it;
* ``<prefix>geo:zones``: the zones whose set is not empty (for wide searches).

The couriers table stays the truth: a courier is offered an order only by the conditional UPDATE
in ``store/couriers.py``. The index is a candidate list kept in step with it on every change
(admin position updates, offers, releases) and rebuilt from the table when a worker starts and
periodically by the zone matchers. A stale entry costs one refused offer (and is then dropped);
it can never give one courier two orders.

Each change is one Lua script, so a courier is never listed in two zones at once. The scripts
name keys they compute, which is fine on one Redis; on Redis Cluster the zone keys would need a
hash tag per shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from dispatch.zones import (
    DEFAULT_RESOLUTION,
    covered_km,
    zone_centre,
    zone_of,
    zone_reach_km,
    zones_around,
)
from store.couriers import haversine_km
from store.models import Courier

# KEYS: where, zones-set. ARGV: prefix, courier, new zone ('' = not free), lng, lat.
_PUT = """
local old = redis.call('HGET', KEYS[1], ARGV[2])
if old and old ~= ARGV[3] then
    local oldkey = ARGV[1] .. 'geo:' .. old
    redis.call('ZREM', oldkey, ARGV[2])
    if redis.call('ZCARD', oldkey) == 0 then redis.call('SREM', KEYS[2], old) end
end
if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], ARGV[2])
    return 0
end
redis.call('GEOADD', ARGV[1] .. 'geo:' .. ARGV[3], ARGV[4], ARGV[5], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Candidate:
    courier_id: str
    distance_km: float
    lat: float
    lng: float


@dataclass
class CourierGeoIndex:
    redis: aioredis.Redis
    resolution: int = DEFAULT_RESOLUTION
    prefix: str = "dispatch:"

    @property
    def _where(self) -> str:
        return f"{self.prefix}geo:where"

    @property
    def _zones(self) -> str:
        return f"{self.prefix}geo:zones"

    def zone_key(self, zone: str) -> str:
        return f"{self.prefix}geo:{zone}"

    async def put(self, courier_id: str, *, lat: float, lng: float, free: bool) -> str | None:
        """List the courier in its zone if free, else unlist it; returns its zone if listed."""
        zone = zone_of(lat, lng, self.resolution) if free else ""
        await self.redis.eval(  # type: ignore[misc]
            _PUT, 2, self._where, self._zones, self.prefix, courier_id, zone, lng, lat
        )
        return zone or None

    async def remove(self, courier_id: str) -> None:
        await self.redis.eval(  # type: ignore[misc]
            _PUT, 2, self._where, self._zones, self.prefix, courier_id, "", 0, 0
        )

    async def zone_of_courier(self, courier_id: str) -> str | None:
        zone = await self.redis.hget(self._where, courier_id)  # type: ignore[misc]
        return None if zone is None else str(zone)

    async def in_zone(self, zone: str) -> list[str]:
        return sorted(str(m) for m in await self.redis.zrange(self.zone_key(zone), 0, -1))

    async def search(
        self,
        *,
        lat: float,
        lng: float,
        radius_km: float,
        count: int,
        zones: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Candidate]:
        """Up to ``count`` free couriers within ``radius_km`` of the point, nearest first.

        Looks in the point's zone and its neighbours first and widens to every non-empty zone
        the radius can reach only when that finds too few: O(couriers nearby), not O(fleet).
        """
        skip = set(exclude)
        if zones is not None:
            return await self._search_zones(list(zones), lat, lng, radius_km, count, skip)
        home = zone_of(lat, lng, self.resolution)
        near = zones_around(home, 1)
        found = await self._search_zones(near, lat, lng, radius_km, count, skip)
        # Done when the nearest ``count`` are certainly inside the searched disk: a courier of a
        # farther zone could otherwise be nearer than the last one found.
        sure = covered_km(1, self.resolution)
        if radius_km <= sure or (len(found) >= count and found[count - 1].distance_km <= sure):
            return found
        # Wider: only zones that list somebody and whose centre the radius (plus a cell's
        # reach) can touch - a handful of small reads however large the fleet is.
        reach_km = radius_km + zone_reach_km(self.resolution)
        listed = set(await self.redis.smembers(self._zones))  # type: ignore[misc]
        wide = [
            str(z)
            for z in listed
            if z not in near and haversine_km(lat, lng, *zone_centre(str(z))) <= reach_km
        ]
        more = await self._search_zones(wide, lat, lng, radius_km, count, skip)
        return sorted(found + more, key=lambda c: (c.distance_km, c.courier_id))[:count]

    async def _search_zones(
        self,
        zones: list[str],
        lat: float,
        lng: float,
        radius_km: float,
        count: int,
        skip: set[str],
    ) -> list[Candidate]:
        if not zones:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for z in zones:
            pipe.geosearch(
                self.zone_key(z),
                longitude=lng,
                latitude=lat,
                radius=radius_km,
                unit="km",
                sort="ASC",
                count=count + len(skip),
                withdist=True,
                withcoord=True,
            )
        out: list[Candidate] = []
        for rows in await pipe.execute():
            for cid, dist, (c_lng, c_lat) in rows:
                if cid not in skip:
                    out.append(Candidate(cid, float(dist), float(c_lat), float(c_lng)))
        out.sort(key=lambda c: (c.distance_km, c.courier_id))
        return out[:count]

    async def rebuild(self, sessions: async_sessionmaker[AsyncSession]) -> int:
        """Replace the whole index with the table's free couriers, atomically (MULTI/EXEC);
        returns how many are listed."""
        async with sessions() as s:
            rows = (
                await s.execute(
                    select(Courier.courier_id, Courier.lat, Courier.lng).where(  # type: ignore[call-overload]
                        Courier.available.is_(True),  # type: ignore[attr-defined]
                        Courier.current_order_id.is_(None),  # type: ignore[union-attr]
                    )
                )
            ).all()
        by_zone: dict[str, list[tuple[str, float, float]]] = {}
        for cid, lat, lng in rows:
            by_zone.setdefault(zone_of(lat, lng, self.resolution), []).append((cid, lat, lng))
        old_zones = [str(z) for z in await self.redis.smembers(self._zones)]  # type: ignore[misc]
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._where, self._zones, *(self.zone_key(z) for z in old_zones))
        for zone, members in by_zone.items():
            flat: list[object] = []
            for cid, lat, lng in members:
                flat += [lng, lat, cid]
            pipe.geoadd(self.zone_key(zone), flat)  # type: ignore[arg-type]
            pipe.hset(self._where, mapping={cid: zone for cid, _, _ in members})
            pipe.sadd(self._zones, zone)
        await pipe.execute()
        return len(rows)
