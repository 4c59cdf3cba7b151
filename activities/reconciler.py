"""Reconciler activities: find what nobody will finish, and restart or fail it.

The finds read the database and ask Temporal whether the row's workflow exists (and the PSP
whether a finished order's intents still hold money); the decisions are the workflow's
(``domain/reconcile.py``). Every action is idempotent: a restart starts the same workflow id
with the stored input (and does nothing if it exists by then), a fail is a compare-and-set on the row, and the
money and courier steps are the saga's own activities, keyed as the saga keys them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client, Schedule
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from activities.orphans import OrphanActivities
from activities.payments import PaymentActivities
from domain.messages import (
    CourierOffer,
    FailOrphanedOrder,
    FailResult,
    OrderLine,
    OrphanedOrder,
    OrphanedOrders,
    OrphanedRefund,
    OrphanedRefunds,
    ReconcileInput,
    ReconcileRecord,
    RefundInput,
    RestartRequest,
    RestartResult,
    SagaStart,
    StrandedCouriers,
    UnreleasedAuthorizations,
    order_start,
    refund_start,
)
from domain.names import (
    ACT_FAIL_ORPHANED_ORDER,
    ACT_FIND_ORPHANED_ORDERS,
    ACT_FIND_ORPHANED_REFUNDS,
    ACT_FIND_STRANDED_COURIERS,
    ACT_FIND_UNRELEASED_AUTHORIZATIONS,
    ACT_RECORD_RECONCILIATION,
    ACT_RESTART_ORDER,
    ACT_RESTART_REFUND,
    RECONCILE_WORKFLOW,
    RECONCILER_SCHEDULE_ID,
    order_workflow_id,
    refund_workflow_id,
)
from domain.status import FailureReason
from infra.temporal import ensure_schedule, interval_schedule
from store import reconciler as queries
from store.models import utcnow_iso

Row = TypeVar("Row")

#: PSP intent statuses under which money is held, or may yet be (a customer action pending).
HOLDING_INTENT_STATUSES = frozenset({"requires_capture", "requires_action"})


def _age_s(created_at: str) -> float:
    created = datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return max((datetime.now(UTC) - created).total_seconds(), 0.0)


class ReconcilerActivities(OrphanActivities):
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: Client,
        payments: PaymentActivities,
        notify_merchant: bool = False,
    ) -> None:
        super().__init__(sessionmaker=sessionmaker, client=client)
        self._payments = payments
        """Its guarded PSP client (breaker, rate limiter) reads the intents of an order."""
        self._notify_merchant = notify_merchant
        """A restarted refund tells the merchant, as the API's start would."""

    # -------------------------------------------------------------------------- orders

    @activity.defn(name=ACT_FIND_ORPHANED_ORDERS)
    async def find_orphaned_orders(self, inp: ReconcileInput) -> OrphanedOrders:
        async with self._sessions() as s:
            rows = await queries.pending_orders(s, older_than_s=inp.grace_s, limit=inp.limit)
        items: list[OrphanedOrder] = []
        for row, state in await self._not_running(rows, lambda r: order_workflow_id(r.order_id)):
            stored = row.checkout_input
            lines = (
                list(stored.lines)
                if stored is not None
                else [
                    OrderLine(str(it["sku"]), int(it["quantity"]), int(it["unit_price_cents"]))
                    for it in row.items
                ]
            )
            items.append(
                OrphanedOrder(
                    order_id=row.order_id,
                    location_id=row.location_id,
                    age_s=_age_s(row.created_at),
                    lines=lines,
                    workflow=state,
                    restartable=stored is not None,
                )
            )
        return OrphanedOrders(items=items)

    @activity.defn(name=ACT_RESTART_ORDER)
    async def restart_order(self, req: RestartRequest) -> RestartResult:
        async with self._sessions() as s:
            inp = await queries.pending_order_input(s, order_id=req.subject_id)
        saga = order_start(inp) if inp is not None else None
        return await self._restart(req, saga, "no longer PENDING, or no stored input")

    @activity.defn(name=ACT_FAIL_ORPHANED_ORDER)
    async def fail_orphaned_order(self, req: FailOrphanedOrder) -> FailResult:
        async with self._sessions() as s, s.begin():
            failed = await queries.fail_pending_order(
                s,
                order_id=req.order_id,
                failure_reason=FailureReason.NOT_STARTED.value,
                at=utcnow_iso(),
            )
        if failed:
            activity.logger.warning("failed order %s: %s", req.order_id, req.why)
        return FailResult(failed=failed)

    # ------------------------------------------------------------------------- refunds

    @activity.defn(name=ACT_FIND_ORPHANED_REFUNDS)
    async def find_orphaned_refunds(self, inp: ReconcileInput) -> OrphanedRefunds:
        async with self._sessions() as s:
            rows = await queries.pending_refunds(s, older_than_s=inp.grace_s, limit=inp.limit)
        orphans = await self._not_running(rows, lambda r: refund_workflow_id(r.refund.refund_id))
        return OrphanedRefunds(
            items=[
                OrphanedRefund(
                    refund_id=row.refund.refund_id,
                    order_id=row.refund.order_id,
                    amount_cents=row.refund.amount_cents,
                    workflow=state,
                    restartable=row.location_id is not None and row.payment_id is not None,
                )
                for row, state in orphans
            ]
        )

    @activity.defn(name=ACT_RESTART_REFUND)
    async def restart_refund(self, req: RestartRequest) -> RestartResult:
        async with self._sessions() as s:
            row = await queries.pending_refund(s, refund_id=req.subject_id)
        if row is None:
            return RestartResult(False, "no longer PENDING")
        saga = None
        if row.location_id is not None and row.payment_id is not None:
            saga = refund_start(
                RefundInput.of(
                    row.refund,
                    payment_id=row.payment_id,
                    location_id=row.location_id,
                    notify_merchant=self._notify_merchant,
                )
            )
        return await self._restart(req, saga, "its order or captured payment is gone")

    # ---------------------------------------------------------------- finished orders

    @activity.defn(name=ACT_FIND_UNRELEASED_AUTHORIZATIONS)
    async def find_unreleased_authorizations(self, inp: ReconcileInput) -> UnreleasedAuthorizations:
        async with self._sessions() as s:
            order_ids = await queries.finished_orders_to_check_at_psp(
                s, older_than_s=inp.grace_s, limit=inp.limit
            )
        live: list[str] = []
        clean: list[str] = []
        for i, order_id in enumerate(order_ids):
            activity.heartbeat(i)
            try:
                intents = await self._payments._list_intents(order_id=order_id)
            except ApplicationError as e:
                # Not answered now (PSP down, breaker open, over the rate): the next run asks.
                activity.logger.warning("PSP intents of order %s not read: %s", order_id, e)
                continue
            holding = [x for x in intents if x.get("status") in HOLDING_INTENT_STATUSES]
            (live if holding else clean).append(order_id)
        return UnreleasedAuthorizations(live=live, clean=clean)

    @activity.defn(name=ACT_FIND_STRANDED_COURIERS)
    async def find_stranded_couriers(self, inp: ReconcileInput) -> StrandedCouriers:
        async with self._sessions() as s:
            pairs = await queries.couriers_on_finished_orders(
                s, older_than_s=inp.grace_s, limit=inp.limit
            )
        return StrandedCouriers(items=[CourierOffer(o, c) for o, c in pairs])

    # -------------------------------------------------------------------------- record

    @activity.defn(name=ACT_RECORD_RECONCILIATION)
    async def record_reconciliation(self, rec: ReconcileRecord) -> int:
        async with self._sessions() as s, s.begin():
            return await queries.record(
                s, [(e.subject_id, e.action, e.detail) for e in rec.entries], at=utcnow_iso()
            )

    # ------------------------------------------------------------------------- helpers

    async def _restart(
        self, req: RestartRequest, saga: SagaStart | None, why_not: str
    ) -> RestartResult:
        """Start the workflow of a PENDING row that has none, with the input stored with it
        (an order's ``CheckoutInput``; a refund's amount and restock). With ``saga`` None
        (the row lacks what it takes to rebuild one) nothing starts, for ``why_not``."""
        if saga is None:
            return RestartResult(False, why_not)
        try:
            await self._client.start_workflow(
                saga.workflow,
                saga.arg,
                id=saga.workflow_id,
                task_queue=req.task_queue,
                # FAIL, not the API's USE_EXISTING: a run that exists by now (a client's retry,
                # or the API's own start landing late) is not reported as restarted by us. A
                # retry racing this start joins whichever run won.
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=saga.summary,
            )
        except WorkflowAlreadyStartedError:
            return RestartResult(False, "its workflow was started meanwhile (or ran and closed)")
        activity.logger.warning("restarted %s (its workflow never started)", saga.workflow_id)
        return RestartResult(True, "started with its stored input")

    async def _not_running(
        self, rows: Sequence[Row], workflow_id: Callable[[Row], str]
    ) -> list[tuple[Row, str]]:
        """The rows whose workflow does not run, each with its ``_workflow_state``; the others'
        own sagas decide. Heartbeats once a row (one Temporal call each)."""
        found: list[tuple[Row, str]] = []
        for i, row in enumerate(rows):
            activity.heartbeat(i)
            state = await self._workflow_state(workflow_id(row))
            if state is not None:
                found.append((row, state))
        return found


def reconciler_schedule(*, task_queue: str, every_s: float, inp: ReconcileInput) -> Schedule:
    """The ``reconciler`` schedule: a ``reconcile`` run every ``every_s``."""
    return interval_schedule(
        RECONCILE_WORKFLOW, inp, workflow_id="reconcile", task_queue=task_queue, every_s=every_s
    )


async def ensure_reconciler_schedule(
    client: Client, *, task_queue: str, every_s: float, inp: ReconcileInput
) -> str:
    """Create the ``reconciler`` schedule, or bring an existing one to these settings (a
    changed interval or grace takes effect at the next worker start): ``created`` or
    ``updated``."""
    wanted = reconciler_schedule(task_queue=task_queue, every_s=every_s, inp=inp)
    return await ensure_schedule(client, RECONCILER_SCHEDULE_ID, wanted)
