"""Who gets which offer: batch assignment by minimum total pickup distance, and greedy.

The batch matcher takes every order waiting in a zone's window and every free candidate courier
and solves the rectangular assignment problem (``scipy.optimize.linear_sum_assignment``, the
Jonker-Volgenant shortest augmenting path, O(n^3) worst case) on the pickup distances: each
courier gets at most one order and each order at most one courier, by construction. Pairs
farther than ``max_km`` are never proposed. An order that waited longer gets a small bonus
(``age_km_per_s``), so a far order is not starved by a stream of near ones.

Greedy is what dispatch did before: orders one by one in arrival order, each to the nearest free
courier. It is kept as the ``window = 0`` mode and as the benchmark's baseline.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

EARTH_RADIUS_KM = 6371.0
_INFEASIBLE = 1e9


@dataclass(frozen=True)
class OpenOrder:
    order_id: str
    lat: float
    """Pickup point (the store)."""
    lng: float
    waiting_s: float = 0.0
    """How long the order has waited for a courier."""


@dataclass(frozen=True)
class FreeCourier:
    courier_id: str
    lat: float
    lng: float


@dataclass(frozen=True)
class Match:
    order_id: str
    courier_id: str
    pickup_km: float


def distance_matrix(orders: Sequence[OpenOrder], couriers: Sequence[FreeCourier]) -> np.ndarray:
    """Haversine km, orders x couriers, vectorised."""
    olat = np.radians(np.array([o.lat for o in orders]))[:, None]
    olng = np.radians(np.array([o.lng for o in orders]))[:, None]
    clat = np.radians(np.array([c.lat for c in couriers]))[None, :]
    clng = np.radians(np.array([c.lng for c in couriers]))[None, :]
    a = (
        np.sin((clat - olat) / 2) ** 2
        + np.cos(olat) * np.cos(clat) * np.sin((clng - olng) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def match_batch(
    orders: Sequence[OpenOrder],
    couriers: Sequence[FreeCourier],
    *,
    max_km: float = 50.0,
    age_km_per_s: float = 0.02,
    forbidden: Collection[tuple[str, str]] = (),
) -> list[Match]:
    """Assign orders to couriers minimising total pickup distance (ties by input order).
    ``forbidden``: (order, courier) pairs never proposed (a courier who declined the order or
    let its offer lapse)."""
    if not orders or not couriers:
        return []
    km = distance_matrix(orders, couriers)
    if forbidden:
        row = {o.order_id: i for i, o in enumerate(orders)}
        col = {c.courier_id: j for j, c in enumerate(couriers)}
        for oid, cid in forbidden:
            if oid in row and cid in col:
                km[row[oid], col[cid]] = np.inf
    waiting = np.array([o.waiting_s for o in orders])[:, None]
    cost = np.where(km <= max_km, km - age_km_per_s * waiting, _INFEASIBLE)
    rows, cols = linear_sum_assignment(cost)
    return [
        Match(orders[r].order_id, couriers[c].courier_id, float(km[r, c]))
        for r, c in zip(rows, cols, strict=True)
        if km[r, c] <= max_km
    ]


def match_greedy(
    orders: Sequence[OpenOrder], couriers: Sequence[FreeCourier], *, max_km: float = 50.0
) -> list[Match]:
    """Each order in turn takes the nearest courier still free."""
    if not orders or not couriers:
        return []
    km = distance_matrix(orders, couriers)
    taken = np.zeros(len(couriers), dtype=bool)
    out: list[Match] = []
    for r, order in enumerate(orders):
        row = np.where(taken | (km[r] > max_km), np.inf, km[r])
        c = int(np.argmin(row))
        if np.isfinite(row[c]):
            taken[c] = True
            out.append(Match(order.order_id, couriers[c].courier_id, float(km[r, c])))
    return out
