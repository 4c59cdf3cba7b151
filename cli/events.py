"""``tradeflow events``: the order event stream (outbox relay, see ``infra.events``).

    tradeflow events tail                 # follow new events (Ctrl-C stops)
    tradeflow events tail --from-start    # everything the stream still holds, then follow
    tradeflow events status               # outbox backlog and stream length
    tradeflow events relay                # run a relay on its own (the worker runs one too)

``tail`` reads the Redis Stream (``TRADEFLOW_EVENTS_STREAM`` on ``REDIS_URL``); with
``TRADEFLOW_EVENTS_BROKER=rabbitmq`` it binds a private queue to the exchange instead (new
events only: a RabbitMQ queue has no history to start from).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from cli.main import action_parsers, command_parser
from infra.settings import Settings

HELP = "follow the order event stream (tail), show the outbox backlog (status), run a relay"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = action_parsers(command_parser(subparsers, "events", help=HELP, doc=__doc__), "events")
    tail = sub.add_parser("tail", help="print order events as they are published")
    tail.add_argument(
        "--from-start", action="store_true", help="begin with the oldest event still held"
    )
    tail.add_argument("--json", action="store_true", help="one JSON payload per line")
    tail.add_argument("--count", type=int, default=0, help="stop after this many events")
    tail.add_argument(
        "--idle-exit", type=float, default=0.0, help="stop after this many seconds without one"
    )
    sub.add_parser("status", help="outbox backlog and stream length")
    sub.add_parser("relay", help="run the outbox relay in this process until SIGINT/SIGTERM")


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"error: bad configuration in the environment:\n{exc}", file=sys.stderr)
        return 2
    cmd = args.events_command
    try:
        if cmd == "tail":
            return asyncio.run(tail(settings, args))
        if cmd == "status":
            return asyncio.run(status(settings))
        return asyncio.run(relay(settings))
    except KeyboardInterrupt:
        return 0


def format_event(stream_id: str, payload: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps({"stream_id": stream_id, **payload}, sort_keys=True)
    reason = f" ({payload['failure_reason']})" if payload.get("failure_reason") else ""
    return (
        f"{stream_id}  {payload.get('occurred_at', '')}  {payload['event_id']:<40}  "
        f"{payload.get('previous_status') or '-':>16} -> {payload['status']}{reason}"
    )


async def tail(settings: Settings, args: argparse.Namespace) -> int:
    if settings.events_broker == "rabbitmq":
        return await _tail_rabbit(settings, args)
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    last = "0-0" if args.from_start else "$"
    seen = 0
    try:
        while True:
            block_ms = int(args.idle_exit * 1000) if args.idle_exit else 5000
            got: Any = await r.xread({settings.events_stream: last}, count=500, block=block_ms)
            if not got:
                if args.idle_exit:
                    return 0
                continue
            for _stream, entries in got:
                for stream_id, fields in entries:
                    last = stream_id
                    print(format_event(stream_id, json.loads(fields["payload"]), args.json))
                    seen += 1
                    if args.count and seen >= args.count:
                        return 0
            sys.stdout.flush()
    finally:
        await r.aclose()


async def _tail_rabbit(settings: Settings, args: argparse.Namespace) -> int:
    import aio_pika

    from infra.events import exchange_name

    if args.from_start:
        print("error: --from-start needs the Redis Stream broker", file=sys.stderr)
        return 2
    conn = await aio_pika.connect(settings.rabbitmq_url, timeout=5)
    try:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            exchange_name(settings.events_stream), aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        seen = 0
        async with queue.iterator() as it:
            while True:
                try:
                    msg = await asyncio.wait_for(it.__anext__(), args.idle_exit or None)
                except TimeoutError:
                    return 0
                async with msg.process():
                    print(format_event(str(msg.delivery_tag), json.loads(msg.body), args.json))
                    sys.stdout.flush()
                seen += 1
                if args.count and seen >= args.count:
                    return 0
    finally:
        await conn.close()


async def status(settings: Settings) -> int:
    from store.db import make_engine, make_sessionmaker
    from store.outbox import unpublished_count

    engine = make_engine(settings.async_database_url)
    try:
        async with make_sessionmaker(engine)() as s:
            backlog = await unpublished_count(s)
    finally:
        await engine.dispose()
    print(f"broker: {settings.events_broker}")
    print(f"outbox backlog: {backlog} unpublished")
    if settings.events_broker == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            print(f"stream {settings.events_stream}: {await r.xlen(settings.events_stream)}")
        finally:
            await r.aclose()
    return 0


async def relay(settings: Settings) -> int:
    import logging

    from infra.events import make_relay
    from store.db import make_engine

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    engine = make_engine(settings.async_database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        r = make_relay(settings, engine)
        if r is None:
            print("TRADEFLOW_EVENTS_BROKER=off: nothing to relay", file=sys.stderr)
            return 2
        await r.run(stop)
    finally:
        with contextlib.suppress(Exception):
            await engine.dispose()
    return 0
