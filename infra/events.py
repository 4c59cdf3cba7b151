"""The outbox relay: order events from the outbox table (``store.outbox``) to a broker.

At least once, in order per order, each event under its stable ``event_id``:

1. take the oldest unpublished rows by id (a batch);
2. publish them in that order and wait until the broker has them (a Redis pipeline's replies;
   RabbitMQ publisher confirms of persistent messages on a durable exchange and queue);
3. only then mark them published.

A crash or a broker failure between 2 and 3 publishes some events again, each under the
same ``event_id``: consumers keep the ids they saw (or each order's highest ``seq``) and
skip repeats. Why the order per order holds is in ``store.outbox``. Many relays may run (one
per worker process): a Redis lease lets one publish while the others stand by; a relay that
loses its lease mid-batch only repeats events, so even two at once keep the guarantees.

Brokers:

- ``redis``: ``XADD <stream> MAXLEN ~ N`` with fields ``event_id``, ``order_id``, ``seq``,
  ``status``, ``type`` and ``payload`` (JSON). ``tradeflow events tail`` follows it. For the
  stream to survive a Redis restart, that Redis needs AOF persistence (``appendonly yes``).
- ``rabbitmq``: a durable topic exchange, routing key ``order.<status>`` (lower case), and a
  durable queue bound to it with ``#`` so nothing is dropped while no consumer is connected;
  ``message_id`` is the ``event_id``, headers carry ``order_id``/``seq``/``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from infra import metrics
from infra.locks import LeaseLost, QuorumNotAchieved, Redlock, RedlockConfig
from infra.settings import Settings
from store.outbox import PendingEvent, mark_published, next_batch, prune_published

log = logging.getLogger("tradeflow.relay")

LEASE_RESOURCE = "outbox-relay"
PRUNE_EVERY_S = 600.0


def exchange_name(stream: str) -> str:
    return stream.replace(":", ".")


class Publisher(Protocol):
    name: str

    async def connect(self) -> None: ...

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        """Return once the broker holds every event, in order; raise otherwise."""
        ...

    async def close(self) -> None: ...


def stream_fields(e: PendingEvent) -> dict[str, str]:
    return {
        "event_id": e.event_id,
        "order_id": e.order_id,
        "seq": str(e.seq),
        "status": e.status,
        "type": str(e.payload.get("type", "")),
        "payload": e.body().decode(),
    }


class RedisStreamPublisher:
    name = "redis"

    def __init__(self, url: str, stream: str, *, maxlen: int = 1_000_000, chunk: int = 50):
        self.url, self.stream, self.maxlen, self.chunk = url, stream, maxlen, chunk
        self._redis: aioredis.Redis | None = None

    async def connect(self) -> None:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
            )
        await self._redis.ping()

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        assert self._redis is not None, "connect first"
        # One connection, pipelined: the server applies the XADDs in the order sent.
        for i in range(0, len(events), self.chunk):
            pipe = self._redis.pipeline(transaction=False)
            for e in events[i : i + self.chunk]:
                pipe.xadd(
                    self.stream,
                    stream_fields(e),  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
            await pipe.execute()

    async def close(self) -> None:
        if self._redis is not None:
            r, self._redis = self._redis, None
            with contextlib.suppress(Exception):
                await r.aclose()


class RabbitPublisher:
    name = "rabbitmq"

    def __init__(self, url: str, exchange: str, *, queue: str | None = None) -> None:
        self.url, self.exchange_name = url, exchange
        self.queue_name = exchange if queue is None else queue
        self._conn: Any = None
        self._exchange: Any = None

    async def connect(self) -> None:
        import aio_pika

        if self._conn is not None and not self._conn.is_closed:
            return
        self._conn = await aio_pika.connect(
            self.url, timeout=5, client_properties={"connection_name": "tradeflow-relay"}
        )
        channel = await self._conn.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        if self.queue_name:
            queue = await channel.declare_queue(self.queue_name, durable=True)
            await queue.bind(self._exchange, routing_key="#")

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        import aio_pika

        assert self._exchange is not None, "connect first"
        exchange = self._exchange

        async def one(e: PendingEvent) -> None:
            await exchange.publish(
                aio_pika.Message(
                    e.body(),
                    message_id=e.event_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type=str(e.payload.get("type", "")),
                    headers={"order_id": e.order_id, "seq": e.seq, "status": e.status},
                ),
                routing_key=f"order.{e.status.lower()}",
                timeout=10,
            )

        # Waves: an order's k-th event of the batch goes in wave k. A wave's publishes run
        # at once (different orders may interleave) and the next wave starts only once the
        # broker confirmed all of them, so each order's events reach the queue in order.
        for wave in waves_by_order(events):
            await asyncio.gather(*(one(e) for e in wave))

    async def close(self) -> None:
        if self._conn is not None:
            c, self._conn, self._exchange = self._conn, None, None
            with contextlib.suppress(Exception):
                await c.close()


def waves_by_order(events: Sequence[PendingEvent]) -> list[list[PendingEvent]]:
    """Split ``events`` (outbox order) so that wave k holds each order's k-th event."""
    waves: list[list[PendingEvent]] = []
    seen: dict[str, int] = {}
    for e in events:
        k = seen.get(e.order_id, 0)
        seen[e.order_id] = k + 1
        if k == len(waves):
            waves.append([])
        waves[k].append(e)
    return waves


def make_publisher(settings: Settings) -> Publisher | None:
    if settings.events_broker == "redis":
        return RedisStreamPublisher(
            settings.redis_url, settings.events_stream, maxlen=settings.events_maxlen
        )
    if settings.events_broker == "rabbitmq":
        return RabbitPublisher(settings.rabbitmq_url, exchange_name(settings.events_stream))
    return None


@dataclass(eq=False)
class OutboxRelay:
    sessions: async_sessionmaker[AsyncSession]
    publisher: Publisher
    _: KW_ONLY
    batch: int = 200
    poll_s: float = 0.2
    lease: Redlock | None = None
    lease_resource: str = LEASE_RESOURCE
    retention: timedelta | None = None
    owns_lease_nodes: bool = field(default=False, init=False)
    """Close the lease's Redis clients when the relay stops (``make_relay`` made them)."""
    published: int = field(default=0, init=False)
    _connected: bool = field(default=False, init=False)
    _last_prune: float = field(default=0.0, init=False)

    def _standby_s(self) -> float:
        return 1.0 if self.lease is None else self.lease.config.ttl_ms / 3000

    async def run_once(self) -> int:
        """Publish one batch; how many events it held (0: nothing to do)."""
        async with self.sessions() as s:
            events = await next_batch(s, self.batch)
        if not events:
            return 0
        if not self._connected:
            await self.publisher.connect()
            self._connected = True
        started = time.perf_counter()
        await self.publisher.publish(events)
        async with self.sessions() as s, s.begin():
            await mark_published(s, [e.id for e in events])
        self.published += len(events)
        metrics.relay_published.labels(self.publisher.name).inc(len(events))
        metrics.relay_batch_seconds.labels(self.publisher.name).observe(
            time.perf_counter() - started
        )
        return len(events)

    async def drain(self, stop: asyncio.Event | None = None) -> None:
        """Publish until the outbox is empty (or ``stop``); failures propagate."""
        while not (stop is not None and stop.is_set()):
            if await self.run_once() == 0:
                return

    async def _prune(self) -> None:
        if self.retention is None or time.monotonic() - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = time.monotonic()
        async with self.sessions() as s, s.begin():
            gone = await prune_published(s, self.retention)
        if gone:
            log.info("outbox: pruned %d events published over %s ago", gone, self.retention)

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                n = await self.run_once()
                backoff = 0.2
                if n < self.batch:
                    await self._prune()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_s)
            except (asyncio.CancelledError, LeaseLost):
                raise
            except Exception as e:
                metrics.relay_errors.labels(self.publisher.name).inc()
                log.warning("relay (%s): %r; retrying in %.1fs", self.publisher.name, e, backoff)
                self._connected = False
                await self.publisher.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; holds the lease (if any) while it publishes."""
        log.info("outbox relay to %s started", self.publisher.name)
        try:
            while not stop.is_set():
                if self.lease is None:
                    await self._publish_loop(stop)
                    continue
                try:
                    async with self.lease.hold(self.lease_resource):
                        log.info("outbox relay holds the lease; publishing")
                        await self._publish_loop(stop)
                except QuorumNotAchieved:
                    pass  # another relay publishes; stand by
                except LeaseLost as e:
                    log.warning("outbox relay lost its lease (%s); standing by", e)
                except Exception as e:  # the lease's Redis is down, for instance
                    log.warning("outbox relay lease: %r", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(1.0, self._standby_s()))
        finally:
            await self.publisher.close()
            if self.owns_lease_nodes and self.lease is not None:
                for node in self.lease.nodes:
                    with contextlib.suppress(Exception):
                        await node.aclose()
            log.info("outbox relay stopped (%d events published)", self.published)


def make_relay(settings: Settings, engine: AsyncEngine) -> OutboxRelay | None:
    """The relay ``settings`` ask for, or None with ``TRADEFLOW_EVENTS_BROKER=off``."""
    from store.db import make_sessionmaker

    publisher = make_publisher(settings)
    if publisher is None:
        return None
    nodes = [
        aioredis.Redis.from_url(u, socket_connect_timeout=1) for u in settings.lock_redis_url_list
    ]
    ttl_ms = max(100, round(settings.relay_lease_s * 1000))
    lease = Redlock(nodes, RedlockConfig(ttl_ms=ttl_ms, retry_count=0, prefix="lock:"))
    relay = OutboxRelay(
        make_sessionmaker(engine),
        publisher,
        batch=settings.relay_batch,
        poll_s=settings.relay_poll_s,
        lease=lease,
        lease_resource=f"{LEASE_RESOURCE}:{settings.events_stream}",
        retention=timedelta(hours=settings.outbox_retention_h),
    )
    relay.owns_lease_nodes = True
    return relay


async def run_relay(settings: Settings, engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Run the configured relay until ``stop`` (nothing with the broker off)."""
    relay = make_relay(settings, engine)
    if relay is not None:
        await relay.run(stop)
