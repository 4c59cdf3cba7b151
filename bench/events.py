"""The order event stream's costs: outbox overhead per order and relay throughput.

    .venv/bin/python -m bench.events --orders 20 --rounds 21 --relay-events 20000

* ``outbox_overhead``: an order's read-model writes as the order workflow makes them (one
  transaction per transition, seven transitions PENDING..DELIVERED) with the outbox on and off
  (``store.orders.record_order(outbox=False)``), chunks taking turns on one database, on
  SQLite and PostgreSQL. Figures: median ms per order and the median per-round ratio on/off.
* ``relay_throughput``: ``OutboxRelay.drain`` of N pending events (batch 200) to a Redis
  Stream and to RabbitMQ (publisher confirms, persistent messages), events/s; publish and mark
  included. Uses TRADEFLOW_BENCH_REDIS_URL [redis://127.0.0.1:6379/15] and
  TRADEFLOW_BENCH_RABBITMQ_URL [amqp://guest:guest@127.0.0.1:5672/].

One JSON line per figure on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from infra.events import OutboxRelay, RabbitPublisher, RedisStreamPublisher
from infra.settings import to_async_url
from store.db import make_engine, make_sessionmaker
from store.orders import record_order
from store.outbox import EVENTS, event_payload
from store.schema import migrate

STATUSES = [
    "PENDING",
    "RESERVED",
    "PAID",
    "DISPATCHING",
    "COURIER_ASSIGNED",
    "OUT_FOR_DELIVERY",
    "DELIVERED",
]
PG_URL = os.environ.get(
    "TRADEFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TRADEFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBIT_URL = os.environ.get("TRADEFLOW_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def view_of(order_id: str, k: int) -> dict[str, Any]:
    at = "2026-12-02T04:00:00.000+00:00"
    return {
        "order_id": order_id,
        "workflow_id": f"order-{order_id}",
        "customer_id": "c-bench",
        "location_id": "main",
        "status": STATUSES[k - 1],
        "failure_reason": None,
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 500}],
        "currency": "EUR",
        "amounts": {"total_cents": 500},
        "payment": {},
        "delivery": {},
        "refunds": [],
        "timeline": [{"status": s, "at": at} for s in STATUSES[:k]],
        "created_at": at,
        "updated_at": at,
    }


async def orders_ms(sessions: Any, n: int, outbox: bool) -> float:
    tag = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for i in range(n):
        oid = f"b{tag}-{i}"
        for k in range(1, len(STATUSES) + 1):
            async with sessions() as s, s.begin():
                await record_order(s, view=view_of(oid, k), seq=k, outbox=outbox)
    return (time.perf_counter() - started) * 1000 / n


def pg_schema() -> tuple[str, str]:
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    eng = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    eng.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    import sqlalchemy as sa

    eng = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    eng.dispose()


async def outbox_overhead(orders: int, rounds: int, tmp: Path) -> None:
    """On one database per engine, chunks of ``orders`` orders with the outbox on and off
    take turns (which goes first alternates), so load from elsewhere hits both alike; the
    figure is the median of the per-round ratios."""
    for db in ("sqlite", "postgres"):
        schema = None
        if db == "sqlite":
            url = f"sqlite:///{tmp / 'bench.db'}"
        else:
            schema, url = pg_schema()
        migrate(url)
        engine = make_engine(to_async_url(url))
        sessions = make_sessionmaker(engine)
        on: list[float] = []
        off: list[float] = []
        try:
            await orders_ms(sessions, 5, True)  # warm up connections and statement caches
            for r in range(rounds):
                pair = {}
                for flag in (r % 2 == 0, r % 2 != 0):
                    pair[flag] = await orders_ms(sessions, orders, flag)
                on.append(pair[True])
                off.append(pair[False])
                say(f"{db} round {r}: on {pair[True]:.2f} ms/order, off {pair[False]:.2f}")
        finally:
            await engine.dispose()
            if schema:
                drop_schema(schema)
        emit(
            name="outbox_overhead",
            db=db,
            on_ms_per_order=round(statistics.median(on), 3),
            off_ms_per_order=round(statistics.median(off), 3),
            ratio_on_off=round(statistics.median(a / b for a, b in zip(on, off, strict=True)), 3),
            writes_per_order=len(STATUSES),
            orders_per_round=orders,
            rounds=rounds,
        )


async def relay_throughput(n: int, tmp: Path) -> None:
    for broker in ("redis", "rabbitmq"):
        url = f"sqlite:///{tmp / f'relay-{broker}.db'}"
        migrate(url)
        engine = make_engine(to_async_url(url))
        sessions = make_sessionmaker(engine)
        name = f"bench-events-{uuid.uuid4().hex[:8]}"
        rows = []
        for i in range(n):
            oid, k = f"r{i // 7}", i % 7
            p = event_payload(view_of(oid, k + 1), k)
            rows.append(
                dict(
                    event_id=p["event_id"],
                    order_id=oid,
                    seq=k,
                    status=p["status"],
                    payload=p,
                    created_at=p["occurred_at"],
                )
            )
        from sqlalchemy import insert

        async with sessions() as s, s.begin():
            for i in range(0, n, 2000):
                await s.execute(insert(EVENTS), rows[i : i + 2000])
        publisher: Any = (
            RedisStreamPublisher(REDIS_URL, name)
            if broker == "redis"
            else RabbitPublisher(RABBIT_URL, name)
        )
        relay = OutboxRelay(sessions, publisher, batch=200)
        started = time.perf_counter()
        await relay.drain()
        took = time.perf_counter() - started
        await publisher.close()
        await cleanup_broker(broker, name)
        await engine.dispose()
        emit(
            name="relay_throughput",
            broker=broker,
            events=n,
            events_per_s=round(n / took),
            seconds=round(took, 3),
        )


async def cleanup_broker(broker: str, name: str) -> None:
    if broker == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(REDIS_URL)
        await r.delete(name)
        await r.aclose()
        return
    import aio_pika

    conn = await aio_pika.connect(RABBIT_URL)
    ch = await conn.channel()
    await ch.queue_delete(name)
    await ch.exchange_delete(name)
    await conn.close()


async def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=20, help="orders per chunk")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--relay-events", type=int, default=20000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        await outbox_overhead(args.orders, args.rounds, Path(d))
        await relay_throughput(args.relay_events, Path(d))


if __name__ == "__main__":
    asyncio.run(main())
