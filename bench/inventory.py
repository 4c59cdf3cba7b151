"""Reservations per second on the flash-sale (Redis) path and on the DB path, each against the
limit of its store measured in the same run.

    .venv/bin/python -m bench.inventory --seconds 0.5 --rounds 21 --concurrency 1,32

Five loops, each C tasks in one event loop for ``--seconds``, taking turns within every
round so a noisy neighbour hurts both sides of a ratio alike. Rates are medians over
``--rounds``; a ratio is the median of the per-round ratios:

* ``redis_raw_decr``: redis-py ``EVALSHA`` of ``return redis.call('DECR', KEYS[1])`` - the
  cheapest scripted decrement there is; the limit for the hot path.
* ``hot_claim``: ``HotStock.claim``, the call ``InventoryActivities.try_reserve`` makes for a
  hot line (check, deduct, record the order's claim; one Lua script), each with a new order.
* ``hot_sold_out_activity``: ``InventoryActivities.try_reserve`` itself (minus Temporal) for a
  sold-out hot SKU: the whole path a flash sale's loser takes, to the ``OutOfStock`` error.
* ``pg_raw_update``: one autocommit conditional ``UPDATE stock ... WHERE available >= 1`` per
  reservation on a raw psycopg connection per task - the limit for the DB path.
* ``db_try_reserve``: ``store.inventory.try_reserve`` through the SQLAlchemy engine's pool,
  as the activity calls it (fence insert + conditional update; on PostgreSQL one autocommit
  call of the ``tradeflow_try_reserve`` function).

All DB loops hit one stock row, as a flash sale does. PostgreSQL gets a throwaway schema.
Prints one JSON line per figure: ``{"name", "value", "unit", "concurrency"}``, plus
``"baseline"`` and ``"ratio_to_baseline"`` for the paths measured against a limit; progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_PG = os.environ.get(
    "TRADEFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DEFAULT_REDIS = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RAW_DECR = "return redis.call('DECR', KEYS[1])"

Op = Callable[[int], Awaitable[Any]]
"""One reservation; the argument is a sequence number unique in the run."""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _loop(op: Op, *, concurrency: int, seconds: float, seq: itertools.count[int]) -> float:
    """Operations per second of ``concurrency`` tasks calling ``op`` back to back."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await op(next(seq))
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


class Redis:
    def __init__(self, url: str, concurrency: int) -> None:
        import redis.asyncio as aioredis

        from activities.inventory import InventoryActivities
        from domain.messages import ReservationKey
        from infra.hot_stock import HotStock, claims_key, counter_key

        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max(concurrency, 1), timeout=30, decode_responses=True
        )
        self.client = aioredis.Redis.from_pool(pool)
        tag = uuid.uuid4().hex[:8]
        self.sku = f"BENCH-{tag}"
        self.sold_out_sku = f"BENCH-SOLD-{tag}"
        self.keys = [
            counter_key("main", self.sku),
            claims_key("main", self.sku),
            counter_key("main", self.sold_out_sku),
            claims_key("main", self.sold_out_sku),
            f"bench:{{{tag}}}:raw",
        ]
        self.raw_key = self.keys[-1]
        self.hot = HotStock(self.client)
        self.raw = self.client.register_script(RAW_DECR)
        # The sold-out path never reaches the DB: a sessionmaker is not needed.
        self.acts = InventoryActivities(sessionmaker=None, redis=self.client)  # type: ignore[arg-type]
        self._key = ReservationKey
        self._error: type[BaseException] | None = None

    async def setup(self) -> None:
        from temporalio.exceptions import ApplicationError

        self._error = ApplicationError
        await self.client.set(self.keys[0], 10**12)
        await self.client.set(self.keys[2], 0)
        await self.client.set(self.raw_key, 10**12)

    async def raw_decr(self, _: int) -> None:
        await self.raw(keys=[self.raw_key])

    async def hot_claim(self, n: int) -> None:
        await self.hot.claim("main", self.sku, f"o-{n}", 1)

    async def sold_out(self, n: int) -> None:
        assert self._error is not None
        try:
            await self.acts.try_reserve(self._key(f"o-{n}", "main", self.sold_out_sku, 1, True))
        except self._error:
            return
        raise AssertionError("a sold-out try went through")

    async def close(self) -> None:
        await self.client.delete(*self.keys)
        await self.client.aclose()


class Postgres:
    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.concurrency = concurrency
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        self.sku = "BENCH-SKU"
        self.conns: list[Any] = []
        self._free: asyncio.Queue[Any] = asyncio.Queue()

    async def setup(self) -> None:
        import psycopg
        from sqlalchemy import create_engine

        from store.db import make_engine, make_sessionmaker
        from store.schema import migrate

        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE SCHEMA "{self.schema}"')
        admin.dispose()
        sep = "&" if "?" in self.url else "?"
        url = f"{self.url}{sep}options=-csearch_path%3D{self.schema}"
        await asyncio.to_thread(migrate, url)
        self.engine = make_engine(url, pool_size=self.concurrency)
        self.sessions = make_sessionmaker(self.engine)
        async with self.engine.begin() as c:
            await c.exec_driver_sql(
                "INSERT INTO products (sku, name, price_cents, currency, hot, updated_at)"
                f" VALUES ('{self.sku}', 'Bench', 100, 'USD', false, 'x')"
            )
            await c.exec_driver_sql(
                "INSERT INTO stock (location_id, sku, available, reserved, sold, stocked,"
                f" updated_at) VALUES ('main', '{self.sku}', 1000000000, 0, 0, 1000000000, 'x')"
            )
        dsn = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
        for _ in range(self.concurrency):
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, options=f"-csearch_path={self.schema}"
            )
            self.conns.append(conn)
            self._free.put_nowait(conn)

    async def raw_update(self, _: int) -> None:
        conn = await self._free.get()
        try:
            cur = await conn.execute(
                "UPDATE stock SET available = available - 1, reserved = reserved + 1"
                " WHERE location_id = 'main' AND sku = %s AND available >= 1 RETURNING sku",
                (self.sku,),
            )
            assert await cur.fetchone() is not None
        finally:
            self._free.put_nowait(conn)

    async def try_reserve(self, n: int) -> None:
        from store import inventory as ledger

        await ledger.try_reserve(
            self.sessions, order_id=f"o-{n}", location_id="main", sku=self.sku, quantity=1
        )

    async def close(self) -> None:
        from sqlalchemy import create_engine

        for conn in self.conns:
            await conn.close()
        await self.engine.dispose()
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        admin.dispose()


async def _measure(
    ops: dict[str, Op], *, concurrency: int, seconds: float, rounds: int, seq: itertools.count[int]
) -> dict[str, list[float]]:
    """Each op's rate per round. Within a round the ops run back to back, in forward order
    on even rounds and reverse order on odd ones, so a load that comes and goes on the
    machine falls on both sides of a ratio."""
    rates: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            rate = await _loop(ops[name], concurrency=concurrency, seconds=seconds, seq=seq)
            rates[name].append(rate)
            _say(f"round {r + 1} c={concurrency} {name}: {rate:,.0f}/s")
    return rates


def _line(name: str, value: float, concurrency: int) -> dict[str, Any]:
    return {
        "name": name,
        "value": round(value, 1),
        "unit": "reservations/s",
        "concurrency": concurrency,
    }


def _print(rates: dict[str, list[float]], concurrency: int, baseline: str) -> None:
    """Median rates; a ratio is the median of the per-round ratios (same round, same load)."""
    base = rates[baseline]
    for name, values in rates.items():
        line = _line(name, statistics.median(values), concurrency)
        if name != baseline:
            line["baseline"] = baseline
            line["ratio_to_baseline"] = round(
                statistics.median(v / b for v, b in zip(values, base, strict=True)), 3
            )
        print(json.dumps(line), flush=True)


async def main_async(args: argparse.Namespace) -> None:
    seq = itertools.count()
    for c in args.concurrency:
        redis = Redis(args.redis_url, c)
        await redis.setup()
        try:
            rates = await _measure(
                {
                    "redis_raw_decr": redis.raw_decr,
                    "hot_claim": redis.hot_claim,
                    "hot_sold_out_activity": redis.sold_out,
                },
                concurrency=c,
                seconds=args.seconds,
                rounds=args.rounds,
                seq=seq,
            )
        finally:
            await redis.close()
        _print(rates, c, "redis_raw_decr")
        if args.no_db:
            continue
        pg = Postgres(args.pg_url, c)
        await pg.setup()
        try:
            rates = await _measure(
                {"pg_raw_update": pg.raw_update, "db_try_reserve": pg.try_reserve},
                concurrency=c,
                seconds=args.seconds,
                rounds=args.rounds,
                seq=seq,
            )
        finally:
            await pg.close()
        _print(rates, c, "pg_raw_update")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL (a schema is made)")
    parser.add_argument("--seconds", type=float, default=0.5, help="per loop and round")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 32],
        help="comma-separated task counts (default: 1,32)",
    )
    parser.add_argument("--no-db", action="store_true", help="Redis figures only")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
