"""The orders read model, written by the order workflow at every transition."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.messages import RecordOrderInput
from domain.names import ACT_RECORD_ORDER
from infra import metrics
from store import orders as read_model
from store.outbox import appended_events


class OrderActivities:
    def __init__(self, *, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessionmaker

    @activity.defn(name=ACT_RECORD_ORDER)
    async def record_order(self, inp: RecordOrderInput) -> bool:
        view = asdict(inp.view)
        async with self._sessions() as s:
            async with s.begin():
                written = await read_model.record_order(s, view=view, seq=inp.seq)
            # Committed: count each status change once (a retried write appends none).
            metrics.observe_status_changes(view, appended_events(s))
        return written
