"""The city simulation's geometry and timing (the fleet itself runs in the handover test)."""

from __future__ import annotations

import random

import pytest

from cli.city_sim import CityConfig, Store, parse_stores, point_near, toward, travel_s
from store.couriers import haversine_km

STORE = Store("main", 31.2304, 121.4737)


def test_points_near_a_store_stay_within_the_radius_and_are_reproducible() -> None:
    a = [point_near(STORE, 3.0, random.Random(1)) for _ in range(1)]
    rng = random.Random(1)
    points = [point_near(STORE, 3.0, rng) for _ in range(500)]
    assert points[0] == a[0]
    assert max(haversine_km(STORE.lat, STORE.lng, *p) for p in points) <= 3.0 * 1.01
    assert min(haversine_km(STORE.lat, STORE.lng, *p) for p in points) < 1.0


def test_a_step_towards_a_point_gets_nearer_by_the_step_and_stops_there() -> None:
    target = (31.2500, 121.4737)  # ~2.2 km north
    lat, lng, there = toward(STORE.lat, STORE.lng, *target, 1.0)
    assert not there
    assert haversine_km(lat, lng, *target) == pytest.approx(
        haversine_km(STORE.lat, STORE.lng, *target) - 1.0, abs=0.01
    )
    assert toward(lat, lng, *target, 5.0) == (*target, True)


def test_travel_time_follows_distance_speed_and_time_scale() -> None:
    assert travel_s(25.0, CityConfig(speed_kmh=25, time_scale=1)) == pytest.approx(3600)
    assert travel_s(2.5, CityConfig(speed_kmh=25, time_scale=30)) == pytest.approx(12)


def test_stores_parse_from_the_setting() -> None:
    assert parse_stores("main:31.2:121.4, north:31.3:121.45") == [
        Store("main", 31.2, 121.4),
        Store("north", 31.3, 121.45),
    ]
    with pytest.raises(ValueError):
        parse_stores(" , ")
