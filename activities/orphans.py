"""What the sweeper's and the reconciler's activities share: they read rows from the database
and ask Temporal whether each row's workflow still runs; the rows whose workflow does not are
the orphans they act on."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus

from domain.reconcile import WORKFLOW_CLOSED, WORKFLOW_MISSING
from infra.temporal import describe_or_none


class OrphanActivities:
    def __init__(self, *, sessionmaker: async_sessionmaker[AsyncSession], client: Client) -> None:
        self._sessions = sessionmaker
        self._client = client

    async def _workflow_state(self, workflow_id: str) -> str | None:
        """``missing``, ``closed``, or None while it runs."""
        desc = await describe_or_none(self._client, workflow_id)
        if desc is None:
            return WORKFLOW_MISSING
        if desc.status == WorkflowExecutionStatus.RUNNING:
            return None
        return WORKFLOW_CLOSED
