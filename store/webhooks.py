"""PSP webhook events (``webhook_events``), keyed by the PSP's event id: the first layer of
the webhook dedupe (see ``api/routes/payments.py`` for the second)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import WebhookEvent, utcnow_iso
from store.sql import insert_ignore

EVENTS: Table = WebhookEvent.__table__  # type: ignore[attr-defined]

# What became of an event.
RECEIVED = "received"
"""Stored; the hand-over to the payment workflow has not been confirmed yet."""
SIGNALLED = "signalled"
IGNORED = "ignored"


async def claim(
    s: AsyncSession,
    *,
    event_id: str,
    type: str,
    order_id: str,
    payment_id: str,
    amount_cents: int,
    outcome: str,
    detail: str | None,
) -> str | None:
    """Insert the event's row. None when this delivery is the first; else the stored outcome.

    One ``INSERT ... ON CONFLICT DO NOTHING``, so of racing deliveries exactly one is first."""
    now = utcnow_iso()
    values: dict[str, Any] = {
        "event_id": event_id,
        "type": type,
        "order_id": order_id,
        "payment_id": payment_id,
        "amount_cents": amount_cents,
        "outcome": outcome,
        "detail": detail,
        "received_at": now,
        "processed_at": None if outcome == RECEIVED else now,
    }
    if (await s.execute(insert_ignore(s, EVENTS, values))).first() is not None:
        return None
    row = (await s.execute(select(EVENTS.c.outcome).where(EVENTS.c.event_id == event_id))).first()
    return str(row[0]) if row is not None else RECEIVED


async def finish(s: AsyncSession, *, event_id: str, outcome: str, detail: str | None) -> None:
    """Record what became of the event.

    Racing deliveries of one event finish in any order; one that found the workflow already
    gone says "ignored" even though an earlier signal took effect, so "signalled" may
    overwrite "ignored" but never the other way round."""
    c = EVENTS.c
    settled_from = (RECEIVED, IGNORED) if outcome == SIGNALLED else (RECEIVED,)
    await s.execute(
        update(EVENTS)
        .where(c.event_id == event_id, c.outcome.in_(settled_from))
        .values(outcome=outcome, detail=detail, processed_at=utcnow_iso())
    )
