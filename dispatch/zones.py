"""Delivery zones: H3 cells at one resolution (7 by default: hexagons of ~1.4 km edge, ~5 km²).

A store's zone decides which dispatch shard matches its orders; a courier's zone decides which
per-zone geo index lists it while it is free.
"""

from __future__ import annotations

import math

import h3

DEFAULT_RESOLUTION = 7


def zone_of(lat: float, lng: float, resolution: int = DEFAULT_RESOLUTION) -> str:
    return str(h3.latlng_to_cell(lat, lng, resolution))


def zones_around(zone: str, k: int = 1) -> list[str]:
    """The zone and every zone within ``k`` hexagon steps of it, sorted (deterministic)."""
    return sorted(h3.grid_disk(zone, k))


# Cells of one resolution differ in size over the globe (the average edge is no bound), so the
# distance math below assumes edges this much shorter than average.
_EDGE_SAFETY = 0.7


def covered_km(k: int, resolution: int) -> float:
    """Every point within this distance of a point lies in the ``k``-ring disk of its zone.

    The disk's inner radius is ``sqrt(3)/2 * edge * (2k + 1)``; the point may sit up to one edge
    from its zone's centre."""
    edge = h3.average_hexagon_edge_length(resolution, "km") * _EDGE_SAFETY
    return max(0.0, (math.sqrt(3) / 2 * (2 * k + 1) - 1) * edge)


def zone_centre(zone: str) -> tuple[float, float]:
    lat, lng = h3.cell_to_latlng(zone)
    return float(lat), float(lng)


def zone_reach_km(resolution: int) -> float:
    """Farther than this from a zone's centre no point of the zone lies (with margin)."""
    return h3.average_hexagon_edge_length(resolution, "km") * 2.0
