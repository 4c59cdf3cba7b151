"""Dispatch: batch matching against greedy nearest-first, and candidate search against fleet size.

    .venv/bin/python -m bench.dispatch

Four parts, every one on the same seeded orders and couriers for both sides:

* ``snapshot``: 1,000 open orders at 5 stores of one zone and 500 free couriers around them;
  greedy (orders in arrival order, each to the nearest free courier) against the batch matcher
  (``dispatch.matcher.match_batch``); mean and p95 pickup distance of the 500 matches.
* ``throughput``: wall time of one matcher run on that snapshot (median of ``--rounds``),
  as orders matched per second, for both.
* ``simulation``: a discrete-event day in one zone: orders arrive (Poisson), couriers ride to the
  store and to the customer at ``--speed-kmh`` and come back free where they delivered. Greedy
  assigns on arrival and whenever a courier frees (oldest waiting order first); batch assigns every
  ``--window-s`` over everything waiting. Mean/p95 pickup distance and time to assignment.
* ``candidate_search``: microseconds per nearest-free-courier search on the real Redis
  (``CourierGeoIndex.search``, the per-zone GEO index) and, as the baseline, on the couriers table
  (``store.couriers.nearest_free_courier``, a bounding-box scan on SQLite), with 100 and 10,000
  couriers over one city.

Prints one JSON line per figure (``name``, ``value``, ``unit``, and ``baseline`` /
``ratio_to_baseline`` where a baseline ran); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from dispatch.matcher import FreeCourier, Match, OpenOrder, match_batch, match_greedy
from store.couriers import haversine_km

DEFAULT_REDIS = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CENTRE = (31.2304, 121.4737)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, **extra}), flush=True)


def emit_vs(name: str, value: float, baseline: float, unit: str, **extra: Any) -> None:
    ratio = value / baseline if baseline else None
    emit(
        name,
        value,
        unit,
        baseline=round(baseline, 4),
        ratio_to_baseline=None if ratio is None else round(ratio, 4),
        **extra,
    )


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def around(rnd: random.Random, spread_deg: float) -> tuple[float, float]:
    return (
        CENTRE[0] + rnd.uniform(-spread_deg, spread_deg),
        CENTRE[1] + rnd.uniform(-spread_deg, spread_deg),
    )


def stores(rnd: random.Random, n: int = 5) -> list[tuple[float, float]]:
    return [around(rnd, 0.015) for _ in range(n)]


# ------------------------------------------------------------------------------- snapshot


def snapshot(
    seed: int, n_orders: int, n_couriers: int
) -> tuple[list[OpenOrder], list[FreeCourier]]:
    rnd = random.Random(seed)
    shops = stores(rnd)
    orders = [
        OpenOrder(f"o-{i}", *shops[rnd.randrange(len(shops))], waiting_s=0.0)
        for i in range(n_orders)
    ]
    couriers = [FreeCourier(f"k-{i}", *around(rnd, 0.03)) for i in range(n_couriers)]
    return orders, couriers


def run_snapshot(args: argparse.Namespace) -> None:
    orders, couriers = snapshot(args.seed, args.orders, args.couriers)
    greedy, batch = match_greedy(orders, couriers), match_batch(orders, couriers)
    for m in (greedy, batch):
        assert len({x.courier_id for x in m}) == len(m), "a courier got two orders"
    g = [m.pickup_km for m in greedy]
    b = [m.pickup_km for m in batch]
    shape = {"orders": len(orders), "couriers": len(couriers), "matched": len(batch)}
    emit_vs("snapshot_mean_pickup_km", statistics.mean(b), statistics.mean(g), "km", **shape)
    emit_vs("snapshot_p95_pickup_km", p95(b), p95(g), "km", **shape)

    def timed(fn: Any) -> float:
        runs = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            fn(orders, couriers)
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    tg, tb = timed(match_greedy), timed(match_batch)
    emit_vs("matcher_throughput", len(batch) / tb, len(greedy) / tg, "orders matched/s", **shape)
    emit_vs("matcher_run_ms", tb * 1000, tg * 1000, "ms", **shape)


# ----------------------------------------------------------------------------- simulation


@dataclass
class SimOrder:
    order_id: str
    store: tuple[float, float]
    customer: tuple[float, float]
    arrived_s: float


@dataclass
class Outcome:
    pickup_km: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    unassigned: int = 0


def simulate(args: argparse.Namespace, window_s: float) -> Outcome:
    rnd = random.Random(args.seed)
    shops = stores(rnd)
    couriers = {f"k-{i}": around(rnd, 0.03) for i in range(args.sim_couriers)}
    arrivals: list[SimOrder] = []
    t = 0.0
    for i in range(args.sim_orders):
        t += rnd.expovariate(args.rate)
        arrivals.append(SimOrder(f"o-{i}", shops[rnd.randrange(len(shops))], around(rnd, 0.03), t))
    by_id = {o.order_id: o for o in arrivals}
    events: list[tuple[float, int, str, str]] = []  # (time, seq, kind, id)
    seq = 0
    for o in arrivals:
        heapq.heappush(events, (o.arrived_s, seq, "arrive", o.order_id))
        seq += 1
    if window_s > 0:
        heapq.heappush(events, (window_s, seq, "tick", ""))
        seq += 1
    free: dict[str, tuple[float, float]] = dict(couriers)
    waiting: list[str] = []  # arrival order
    out = Outcome()
    done = 0

    def assign(now: float, matches: list[Match]) -> None:
        nonlocal seq
        for m in matches:
            order = by_id[m.order_id]
            free.pop(m.courier_id)
            waiting.remove(m.order_id)
            out.pickup_km.append(m.pickup_km)
            out.wait_s.append(now - order.arrived_s)
            ride_km = m.pickup_km + haversine_km(*order.store, *order.customer)
            back = now + ride_km / args.speed_kmh * 3600 + args.handling_s
            heapq.heappush(events, (back, seq, "free", f"{m.courier_id}|{m.order_id}"))
            seq += 1

    def greedy(now: float) -> None:
        orders = [OpenOrder(o, *by_id[o].store) for o in waiting]
        fleet = [FreeCourier(c, *at) for c, at in free.items()]
        assign(now, match_greedy(orders, fleet))

    while events:
        now, _, kind, ident = heapq.heappop(events)
        if kind == "arrive":
            waiting.append(ident)
            if window_s == 0:
                greedy(now)
        elif kind == "free":
            courier, order_id = ident.split("|")
            free[courier] = by_id[order_id].customer
            done += 1
            if window_s == 0:
                greedy(now)
        elif kind == "tick":
            orders = [OpenOrder(o, *by_id[o].store, now - by_id[o].arrived_s) for o in waiting]
            fleet = [FreeCourier(c, *at) for c, at in free.items()]
            assign(now, match_batch(orders, fleet))
            if done < len(arrivals):
                heapq.heappush(events, (now + window_s, seq, "tick", ""))
                seq += 1
    out.unassigned = len(waiting)
    return out


def run_simulation(args: argparse.Namespace) -> None:
    g, b = simulate(args, 0.0), simulate(args, args.window_s)
    assert g.unassigned == 0 and b.unassigned == 0
    shape = {
        "orders": args.sim_orders,
        "couriers": args.sim_couriers,
        "rate_per_s": args.rate,
        "window_s": args.window_s,
    }
    emit_vs(
        "sim_mean_pickup_km",
        statistics.mean(b.pickup_km),
        statistics.mean(g.pickup_km),
        "km",
        **shape,
    )
    emit_vs("sim_p95_pickup_km", p95(b.pickup_km), p95(g.pickup_km), "km", **shape)
    emit_vs(
        "sim_mean_time_to_assignment_s",
        statistics.mean(b.wait_s),
        statistics.mean(g.wait_s),
        "s",
        **shape,
    )
    emit_vs("sim_p95_time_to_assignment_s", p95(b.wait_s), p95(g.wait_s), "s", **shape)


# ------------------------------------------------------------------------ candidate search


async def run_candidate_search(args: argparse.Namespace) -> None:
    from sqlalchemy import insert

    from dispatch.geoindex import CourierGeoIndex
    from infra.redis import make_redis
    from store import couriers as fleet
    from store.db import make_engine, make_sessionmaker
    from store.models import Courier, Location
    from store.schema import migrate

    redis = make_redis(args.redis_url)
    for n in (100, 10_000):
        rnd = random.Random(args.seed + n)
        geo = CourierGeoIndex(redis, resolution=7, prefix=f"bench-{uuid.uuid4().hex[:6]}:")
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            migrate(url)
            engine = make_engine(url)
            sessions = make_sessionmaker(engine)
            people = [(f"k-{i}", *around(rnd, 0.15)) for i in range(n)]  # a ~30 x 30 km city
            async with sessions() as s, s.begin():
                await s.execute(
                    insert(Location.__table__),  # type: ignore[attr-defined]
                    [{"location_id": "store", "name": "S", "lat": CENTRE[0], "lng": CENTRE[1]}],
                )
                await s.execute(
                    insert(Courier.__table__),  # type: ignore[attr-defined]
                    [{"courier_id": c, "lat": la, "lng": ln} for c, la, ln in people],
                )
            await geo.rebuild(sessions)
            points = [around(rnd, 0.1) for _ in range(args.searches)]

            t = time.perf_counter()
            for lat, lng in points:
                await geo.search(lat=lat, lng=lng, radius_km=50.0, count=8)
            geo_us = (time.perf_counter() - t) / len(points) * 1e6

            t = time.perf_counter()
            for _ in points:
                async with sessions() as s:
                    await fleet.nearest_free_courier(s, location_id="store", exclude=[])
            table_us = (time.perf_counter() - t) / len(points) * 1e6
            emit_vs("candidate_search_us", geo_us, table_us, "us/search", couriers=n)
            keys = [k async for k in redis.scan_iter(f"{geo.prefix}*")]
            if keys:
                await redis.delete(*keys)
            await engine.dispose()
    await redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--couriers", type=int, default=500)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sim-orders", type=int, default=3000)
    p.add_argument("--sim-couriers", type=int, default=60)
    p.add_argument(
        "--rate",
        type=float,
        default=0.04,
        help="order arrivals per second (~90%% of the fleet's capacity)",
    )
    p.add_argument("--window-s", type=float, default=2.0)
    p.add_argument("--speed-kmh", type=float, default=18.0)
    p.add_argument("--handling-s", type=float, default=240.0)
    p.add_argument("--searches", type=int, default=300)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--skip-search", action="store_true", help="no Redis/DB part")
    args = p.parse_args()
    _say("snapshot + throughput")
    run_snapshot(args)
    _say("simulation")
    run_simulation(args)
    if not args.skip_search:
        _say("candidate search")
        asyncio.run(run_candidate_search(args))


if __name__ == "__main__":
    main()
