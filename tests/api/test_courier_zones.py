"""Courier position updates through the admin API move couriers between zone geo indexes."""

from __future__ import annotations

from dispatch.geoindex import CourierGeoIndex
from dispatch.zones import zone_of
from infra.redis import make_redis
from tests.api.conftest import ApiFactory
from tests.conftest import REDIS_URL


async def test_moving_a_courier_changes_its_zone_and_going_off_shift_unlists_it(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(REDIS_URL=REDIS_URL) as api:
        redis = make_redis(REDIS_URL)
        geo = CourierGeoIndex(redis, resolution=api.settings.zone_resolution)
        put = {"headers": api.admin}
        r = await api.http.put(
            "/v1/admin/couriers/kz-1", json={"lat": 31.20, "lng": 121.40, "available": True}, **put
        )
        assert r.status_code == 200
        first = zone_of(31.20, 121.40, api.settings.zone_resolution)
        assert await geo.zone_of_courier("kz-1") == first

        await api.http.put(
            "/v1/admin/couriers/kz-1", json={"lat": 31.32, "lng": 121.55, "available": True}, **put
        )
        second = zone_of(31.32, 121.55, api.settings.zone_resolution)
        assert second != first
        assert "kz-1" not in await geo.in_zone(first) and "kz-1" in await geo.in_zone(second)

        await api.http.put(
            "/v1/admin/couriers/kz-1", json={"lat": 31.32, "lng": 121.55, "available": False}, **put
        )
        assert await geo.zone_of_courier("kz-1") is None
        assert "kz-1" not in await geo.in_zone(second)
        await redis.aclose()
