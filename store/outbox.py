"""Transactional outbox of order events: one row per status change, written in the same
database transaction as the read-model write that made the change (``store.orders``).

An event is identified by ``(order_id, seq)``, ``seq`` being the status's index in the
order's timeline, so its ``event_id`` (``<order_id>:<seq>``) is stable: a retried read-model
write inserts nothing new, and a relay that publishes a row twice publishes the same id twice.

Ordering. ``id`` grows with insertion. For one order, event ``seq`` is inserted by the same
transaction as ``seq - 1`` or by a later one (a view carries its whole timeline, and the
insert of an existing ``(order_id, seq)`` waits on PostgreSQL for the transaction that holds it,
while SQLite serialises writers), so ``seq`` is never visible without ``seq - 1`` and has the
larger ``id``. A relay that takes the oldest unpublished rows by ``id`` and marks them only
after the broker confirmed them therefore publishes each order's events in order, at least once,
whatever crashes between publish and mark (see ``infra.events``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, Table, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import JSON, Field, SQLModel

from store.sql import insert_many_ignore

EVENT_TYPE = "order.status_changed"
_APPENDED = "tradeflow.outbox.appended"


class OrderEvent(SQLModel, table=True):
    __tablename__ = "order_events"
    __table_args__ = (
        Index(
            "ix_order_events_unpublished",
            "id",
            sqlite_where=text("published_at IS NULL"),
            postgresql_where=text("published_at IS NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    event_id: str = Field(max_length=100, unique=True)
    order_id: str = Field(max_length=64)
    seq: int
    status: str = Field(max_length=32)
    payload: dict[str, Any] = Field(sa_type=JSON)
    created_at: str = Field(max_length=32)
    published_at: str | None = Field(default=None, max_length=32)


EVENTS: Table = OrderEvent.__table__  # type: ignore[attr-defined]


def event_id_of(order_id: str, seq: int) -> str:
    return f"{order_id}:{seq}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def event_payload(view: dict[str, Any], seq: int) -> dict[str, Any]:
    """What consumers get: the change, and enough of the order to act without asking."""
    timeline = view["timeline"]
    entry = timeline[seq]
    return {
        "event_id": event_id_of(view["order_id"], seq),
        "type": EVENT_TYPE,
        "order_id": view["order_id"],
        "seq": seq,
        "status": entry["status"],
        "previous_status": timeline[seq - 1]["status"] if seq > 0 else None,
        "occurred_at": entry["at"],
        "failure_reason": view.get("failure_reason") if seq == len(timeline) - 1 else None,
        "customer_id": view["customer_id"],
        "location_id": view["location_id"],
        "currency": view["currency"],
        "total_cents": view["amounts"]["total_cents"],
    }


async def append_status_change(s: AsyncSession, view: dict[str, Any], seq: int) -> bool:
    """Add the event for timeline entry ``seq`` of ``view`` (call inside the read-model
    transaction); False when it was there already."""
    return bool(await append_status_changes(s, [(view, seq)]))


async def append_status_changes(
    s: AsyncSession, changes: Sequence[tuple[dict[str, Any], int]]
) -> list[dict[str, Any]]:
    """``append_status_change`` for many (view, seq) at once, one ``INSERT ... ON CONFLICT DO
    NOTHING`` (executemany, sent as multi-row batches); the payloads added (those not there
    already)."""
    if not changes:
        return []
    payloads = {}
    rows = []
    created_at = _now()
    for view, seq in changes:
        payload = event_payload(view, seq)
        payloads[payload["event_id"]] = payload
        rows.append(
            dict(
                event_id=payload["event_id"],
                order_id=view["order_id"],
                seq=seq,
                status=payload["status"],
                payload=payload,
                created_at=created_at,
            )
        )
    inserted = await insert_many_ignore(s, EVENTS, rows, returning=[EVENTS.c.event_id])
    added = [payloads[r[0]] for r in inserted]
    s.info.setdefault(_APPENDED, []).extend(added)
    return added


def appended_events(s: AsyncSession) -> list[dict[str, Any]]:
    """The payloads ``append_status_change`` added through this session (read them after the
    commit, to count each status change once)."""
    return list(s.info.get(_APPENDED, []))


@dataclass(frozen=True)
class PendingEvent:
    id: int
    event_id: str
    order_id: str
    seq: int
    status: str
    payload: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":"), sort_keys=True).encode()


async def next_batch(s: AsyncSession, limit: int) -> list[PendingEvent]:
    """The oldest unpublished events, by ``id``."""
    rows = await s.execute(
        select(
            EVENTS.c.id,
            EVENTS.c.event_id,
            EVENTS.c.order_id,
            EVENTS.c.seq,
            EVENTS.c.status,
            EVENTS.c.payload,
        )
        .where(EVENTS.c.published_at.is_(None))
        .order_by(EVENTS.c.id)
        .limit(limit)
    )
    return [PendingEvent(*r) for r in rows.all()]


async def mark_published(s: AsyncSession, ids: Sequence[int]) -> None:
    if ids:
        await s.execute(
            update(EVENTS)
            .where(EVENTS.c.id.in_(list(ids)) & EVENTS.c.published_at.is_(None))
            .values(published_at=_now())
        )


async def unpublished_count(s: AsyncSession) -> int:
    n = await s.execute(
        select(func.count()).select_from(EVENTS).where(EVENTS.c.published_at.is_(None))
    )
    return int(n.scalar_one())


async def prune_published(s: AsyncSession, older_than: timedelta) -> int:
    """Delete events published longer ago than ``older_than``; how many went."""
    cutoff = (datetime.now(UTC) - older_than).isoformat(timespec="milliseconds")
    res = await s.execute(
        delete(EVENTS)
        .where(EVENTS.c.published_at.is_not(None) & (EVENTS.c.published_at < cutoff))
        .returning(EVENTS.c.id)
    )
    return len(res.all())
