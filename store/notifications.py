"""Where merchant notifications ended up: delivered, given up, or skipped."""

from __future__ import annotations

from sqlalchemy import Table, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.messages import NotificationOutcome
from store.models import Notification, utcnow_iso
from store.sql import insert_ignore

N: Table = Notification.__table__  # type: ignore[attr-defined]


async def record(s: AsyncSession, outcome: NotificationOutcome) -> None:
    values = dict(
        order_id=outcome.order_id,
        type=outcome.type,
        status=outcome.status,
        attempts=outcome.attempts,
        last_error=(outcome.last_error or "")[:500] or None,
        updated_at=utcnow_iso(),
    )
    inserted = (
        await s.execute(insert_ignore(s, N, dict(event_id=outcome.event_id, **values)))
    ).first()
    if inserted is None:
        await s.execute(update(N).where(N.c.event_id == outcome.event_id).values(**values))
