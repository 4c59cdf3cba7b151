"""The write-behind of the sold-out edge: losers answered from Redis (infra/sold_out_edge.py)
reach the SQL read model here, in batches, a moment after their answer.

Each API process runs one reader of the stream ``edge:drain`` in the consumer group
``write-behind`` (its own consumer name), started in the API's lifespan:

* ``XREADGROUP`` up to ``TRADEFLOW_WRITE_BEHIND_BATCH`` entries (waiting up to
  ``TRADEFLOW_WRITE_BEHIND_LINGER_S`` for a batch to fill once the first came), then one
  transaction: the rows (``INSERT ... ON CONFLICT DO NOTHING``: a redelivered entry, or a key
  SQL already holds, inserts nothing), their timelines and order events, as the API wrote
  them itself before the edge; ``XACK`` and ``XDEL`` only after the commit. A failed write
  leaves the entries pending; this reader takes them again from its own pending list.
* Entries another consumer has held for longer than ``TRADEFLOW_WRITE_BEHIND_RECLAIM_S``
  (an API that died between read and commit) are taken over with ``XAUTOCLAIM``.
* ``NOGROUP`` (Redis restarted empty, the stream deleted): the group is made again
  (``XGROUP CREATE ... 0 MKSTREAM``) and reading goes on.
* Every few seconds it makes sure the edge's idempotency index is complete
  (``complete_index``), which is what lets the edge trust a key it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from infra import metrics as business_metrics
from infra.settings import Settings
from infra.sold_out_edge import DRAIN_GROUP, DRAIN_STREAM, complete_index
from store import orders
from store.outbox import appended_events

log = logging.getLogger(__name__)

_READ_BLOCK_MS = 1000
"""How long one read waits for a first entry (below the Redis client's socket timeout)."""
_INDEX_CHECK_S = 5.0
_STOP_WAIT_S = 5.0

Entry = tuple[str, dict[str, str]]


class WriteBehind:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: aioredis.Redis,
        settings: Settings,
        *,
        consumer: str | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._redis = redis
        self._batch = settings.write_behind_batch
        self._linger_s = settings.write_behind_linger_s
        self._reclaim_ms = max(1, int(settings.write_behind_reclaim_s * 1000))
        self._ttl_s = settings.edge_idempotency_ttl_s
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._own_pending = True
        """Read this consumer's pending entries before new ones (at start, after a failure)."""
        self._next_reclaim = 0.0
        self._next_index_check = 0.0
        self._waiting = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        """Rows this reader inserted (tests, logs)."""

    # --------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"write-behind-{self.consumer}")

    async def stop(self) -> None:
        """Stop reading: a batch being written is finished first (up to a few seconds); what
        is left in the stream is taken by another API, or by this one's next start."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        if self._waiting:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, _STOP_WAIT_S)
        # What came in up to now, written before the process goes (another API, or this one's
        # next start, takes whatever is left if this fails).
        try:
            async with asyncio.timeout(_STOP_WAIT_S):
                while await self.drain_once():
                    pass
        except (TimeoutError, RedisError, OSError, SQLAlchemyError) as exc:
            log.warning("write-behind: stopped with entries left in the stream: %s", exc)

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._keep_index_complete()
                await self.drain_once(block_ms=_READ_BLOCK_MS)
                delay = 0.1
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("write-behind: Redis refused a command")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                log.warning("write-behind: %s; making the consumer group again", exc)
                await self.create_group()
            except (RedisError, OSError, SQLAlchemyError) as exc:
                # Redis or the database is away: the entries wait in the stream (pending ones
                # are read again), nothing is acknowledged that was not written.
                log.warning("write-behind paused %.1f s: %s", delay, exc)
                self._own_pending = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def create_group(self) -> None:
        try:
            await self._redis.xgroup_create(DRAIN_STREAM, DRAIN_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _keep_index_complete(self) -> None:
        now = time.monotonic()
        if now < self._next_index_check:
            return
        self._next_index_check = now + _INDEX_CHECK_S
        await complete_index(self._sessionmaker, self._redis, ttl_s=self._ttl_s)

    # ------------------------------------------------------------------------------- drain

    async def drain_once(self, *, block_ms: int | None = None) -> int:
        """Take one batch (own pending entries, else entries idle past the reclaim time, else
        new ones, waiting up to ``block_ms`` for the first), write it, acknowledge it. The
        number of entries handled."""
        entries = await self._take(block_ms)
        if not entries:
            return 0
        await self._write(entries)
        ids = [entry_id for entry_id, _ in entries]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xack(DRAIN_STREAM, DRAIN_GROUP, *ids)
            pipe.xdel(DRAIN_STREAM, *ids)
            await pipe.execute()
        return len(entries)

    async def _take(self, block_ms: int | None) -> list[Entry]:
        if self._own_pending:
            entries = await self._read("0", self._batch, None)
            if entries:
                return entries
            self._own_pending = False
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + min(self._reclaim_ms / 1000, 5.0)
            _, claimed, *_ = await self._redis.xautoclaim(
                DRAIN_STREAM, DRAIN_GROUP, self.consumer, self._reclaim_ms, "0-0", self._batch
            )
            if claimed:
                log.info("write-behind: took over %d entries of another API", len(claimed))
                return [(i, f) for i, f in claimed if f is not None]
        self._waiting = True
        try:
            entries = await self._read(">", self._batch, block_ms)
        finally:
            self._waiting = False
        if entries and len(entries) < self._batch and self._linger_s > 0:
            await asyncio.sleep(self._linger_s)
            entries += await self._read(">", self._batch - len(entries), None)
        return entries

    async def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        got: Any = await self._redis.xreadgroup(
            DRAIN_GROUP, self.consumer, {DRAIN_STREAM: start}, count=count, block=block_ms
        )
        return [(i, f) for _, items in got or [] for i, f in items if f]

    async def _write(self, entries: Sequence[Entry]) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for entry_id, fields in entries:
            try:
                row = json.loads(fields["row"])
                rows[row["order_id"]] = row
            except (KeyError, TypeError, ValueError) as exc:
                log.error("write-behind: entry %s is not a row, dropped: %s", entry_id, exc)
        async with self._sessionmaker() as session:
            inserted = await orders.insert_orders_if_new(session, list(rows.values()))
            views = [rows[order_id]["view"] for order_id in inserted]
            await orders.append_timelines(session, views)
            await session.commit()
            events = appended_events(session)
        self.written += len(inserted)
        by_order: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_order.setdefault(event["order_id"], []).append(event)
        for view in views:
            business_metrics.observe_status_changes(view, by_order.get(view["order_id"], []))
        skipped = len(rows) - len(inserted)
        if skipped:
            log.info("write-behind: %d of %d rows were in SQL already", skipped, len(rows))
