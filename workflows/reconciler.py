"""Periodic reconciliation (started by the ``reconciler`` Temporal Schedule): what a crash, an
outage or a race left that no workflow will finish.

Each run, oldest first and at most ``limit`` of each kind:

1. PENDING orders whose workflow does not run: restarted (same id, stored input) or failed
   (every line cancelled through the TCC fence first, so a late start can reserve nothing;
   then the row FAILED/NOT_STARTED);
2. PENDING refunds whose workflow was never started: restarted, or failed (releasing their
   hold on the refund cap) when they cannot be rebuilt; one whose workflow ended is reported;
3. finished orders (FAILED, CANCELLED) whose PSP intents still hold money: voided with the
   saga's own activity and key (``void:<order_id>``);
4. couriers still bound to a finished order: released (keyed by courier and order).

The rules are ``domain/reconcile.py``; docs/operations.md says why. A step that fails is
reported and taken up by the next run; what was done is recorded in ``reconciliations``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import workflows.options as options
    from activities.couriers import CourierActivities
    from activities.inventory import InventoryActivities
    from activities.payments import PaymentActivities
    from activities.reconciler import ReconcilerActivities
    from activities.refunds import RefundActivities
    from domain import errors, names
    from domain.messages import (
        CourierOffer,
        FailOrphanedOrder,
        OrphanedOrder,
        OrphanedRefund,
        ReconcileEntry,
        ReconcileInput,
        ReconcileRecord,
        ReconcileReport,
        ReservationKey,
        RestartRequest,
        RestartResult,
        SettleRefund,
        VoidInput,
    )
    from domain.reconcile import Decision, Done, order_decision, refund_decision

_A = TypeVar("_A")
_R = TypeVar("_R")
_O = TypeVar("_O")


class _Orphans(Protocol[_O]):
    """What a find of orphans returns (``OrphanedOrders``, ``OrphanedRefunds``)."""

    @property
    def items(self) -> list[_O]: ...


NOT_STARTABLE = "not_startable"
"""Failure reason of a refund the reconciler could not rebuild."""


@workflow.defn(name=names.RECONCILE_WORKFLOW)
class ReconcileWorkflow:
    def __init__(self) -> None:
        self._done: list[ReconcileEntry] = []
        self._errors: list[str] = []
        self._operator: list[str] = []

    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        restarted, failed = await self._orders(inp)
        refunds_restarted, refunds_failed = await self._refunds(inp)
        voided, checked = await self._authorizations(inp)
        released = await self._couriers(inp)
        if self._done:
            workflow.set_current_details(f"recording {len(self._done)} action(s)")
            await self._step(
                ReconcilerActivities.record_reconciliation, ReconcileRecord(list(self._done))
            )
        report = ReconcileReport(
            orders_restarted=restarted,
            orders_failed=failed,
            refunds_restarted=refunds_restarted,
            refunds_failed=refunds_failed,
            authorizations_voided=voided,
            authorizations_checked=checked,
            couriers_released=released,
            for_operator=list(self._operator),
            errors=list(self._errors),
        )
        workflow.set_current_details(report.summary())
        workflow.logger.info("reconcile: %s", report.summary())
        for line in report.for_operator:
            workflow.logger.warning("reconcile, for an operator: %s", line)
        return report

    # ---------------------------------------------------------------------------- orders

    async def _orders(self, inp: ReconcileInput) -> tuple[list[str], list[str]]:
        restarted: list[str] = []
        failed: list[str] = []
        for order in await self._orphans("orders", ReconcilerActivities.find_orphaned_orders, inp):
            decision, why = order_decision(order, restart_within_s=inp.restart_within_s)
            workflow.set_current_details(f"order {order.order_id}: {decision.value} ({why})")
            if decision == Decision.RESTART:
                if await self._restart(ReconcilerActivities.restart_order, order.order_id):
                    restarted.append(order.order_id)
                    self._record(order.order_id, Done.ORDER_RESTARTED, why)
            elif await self._fail_order(order, why):
                failed.append(order.order_id)
                self._record(order.order_id, Done.ORDER_FAILED, why)
        return restarted, failed

    async def _fail_order(self, order: OrphanedOrder, why: str) -> bool:
        # The fence first: a workflow that a retry still starts finds every line cancelled,
        # reserves nothing and fails before any payment; then the row says FAILED.
        cancels = await asyncio.gather(
            *(
                self._step(
                    InventoryActivities.cancel_reservation,
                    ReservationKey(order.order_id, order.location_id, li.sku, li.quantity, li.hot),
                )
                for li in order.lines
            )
        )
        if any(c is None for c in cancels):
            return False
        res = await self._step(
            ReconcilerActivities.fail_orphaned_order, FailOrphanedOrder(order.order_id, why)
        )
        return res is not None and res.failed

    # --------------------------------------------------------------------------- refunds

    async def _refunds(self, inp: ReconcileInput) -> tuple[list[str], list[str]]:
        restarted: list[str] = []
        failed: list[str] = []
        for refund in await self._orphans(
            "refunds", ReconcilerActivities.find_orphaned_refunds, inp
        ):
            decision, why = refund_decision(refund)
            workflow.set_current_details(f"refund {refund.refund_id}: {decision.value} ({why})")
            if decision == Decision.RESTART:
                if await self._restart(ReconcilerActivities.restart_refund, refund.refund_id):
                    restarted.append(refund.refund_id)
                    self._record(refund.refund_id, Done.REFUND_RESTARTED, why)
            elif decision == Decision.FAIL:
                if await self._fail_refund(refund):
                    failed.append(refund.refund_id)
                    self._record(refund.refund_id, Done.REFUND_FAILED, why)
            else:
                self._operator.append(
                    f"refund {refund.refund_id} of order {refund.order_id}"
                    f" ({refund.amount_cents}): {why}"
                )
        return restarted, failed

    async def _fail_refund(self, refund: OrphanedRefund) -> bool:
        # The refund book's own settlement: FAILED and its amount off the cap, together.
        view = await self._step(
            RefundActivities.mark_refund_failed,
            SettleRefund(refund_id=refund.refund_id, failure_reason=NOT_STARTABLE),
        )
        return view is not None and view.failure_reason == NOT_STARTABLE

    # -------------------------------------------------------------------- authorizations

    async def _authorizations(self, inp: ReconcileInput) -> tuple[list[str], int]:
        workflow.set_current_details("looking at the PSP for holds of finished orders")
        found = await self._find(ReconcilerActivities.find_unreleased_authorizations, inp)
        if found is None:
            return [], 0
        voided: list[str] = []
        checked = 0
        for order_id in found.live:
            workflow.set_current_details(f"voiding what the PSP holds for order {order_id}")
            try:
                res = await self._activity(
                    PaymentActivities.void_payment,
                    # The saga's own void, under its key: a repeat or a race with the saga
                    # cannot release anything twice.
                    VoidInput(
                        order_id=order_id, payment_id=None, idempotency_key=f"void:{order_id}"
                    ),
                )
            except ActivityError as e:
                if _error_type(e) != errors.ALREADY_CAPTURED:
                    self._errors.append(f"void of order {order_id}: {e.__cause__ or e}")
                    continue
                checked += 1
                self._operator.append(
                    f"order {order_id} ended without the sale but the PSP captured its"
                    " payment: refund it"
                )
                self._record(order_id, Done.AUTHORIZATION_CHECKED, "captured at the PSP")
                continue
            checked += 1
            if res.voided:
                voided.append(order_id)
                self._record(
                    order_id, Done.AUTHORIZATION_VOIDED, f"released {res.payment_id} at the PSP"
                )
            else:
                self._record(order_id, Done.AUTHORIZATION_CHECKED, "nothing left to void")
        for order_id in found.clean:
            checked += 1
            self._record(order_id, Done.AUTHORIZATION_CHECKED, "the PSP holds nothing")
        return voided, checked

    # -------------------------------------------------------------------------- couriers

    async def _couriers(self, inp: ReconcileInput) -> list[str]:
        workflow.set_current_details("looking for couriers bound to finished orders")
        found = await self._find(ReconcilerActivities.find_stranded_couriers, inp)
        released: list[str] = []
        for offer in found.items if found else []:
            res = await self._step(
                CourierActivities.release_courier, CourierOffer(offer.order_id, offer.courier_id)
            )
            if res is not None and res.offered:
                released.append(offer.courier_id)
                # Keyed by the order: a courier may be stranded (and released) more than once.
                self._record(
                    offer.order_id, Done.COURIER_RELEASED, f"courier {offer.courier_id} freed"
                )
        return released

    # --------------------------------------------------------------------------- helpers

    async def _find(
        self, activity: Callable[[Any, ReconcileInput], Awaitable[_R]], inp: ReconcileInput
    ) -> _R | None:
        try:
            return await workflow.execute_activity_method(
                activity,
                inp,
                start_to_close_timeout=options.RECONCILE_FIND,
                heartbeat_timeout=options.RECONCILE_FIND_HEARTBEAT,
                retry_policy=options.RECONCILE_STEP,
            )
        except ActivityError as e:
            self._errors.append(f"{activity.__name__}: {e.__cause__ or e}")
            return None

    async def _orphans(
        self,
        what: str,
        activity: Callable[[Any, ReconcileInput], Awaitable[_Orphans[_O]]],
        inp: ReconcileInput,
    ) -> list[_O]:
        """The PENDING ``what`` whose workflow does not run; none when the find failed."""
        workflow.set_current_details(f"looking for PENDING {what} whose workflow does not run")
        found = await self._find(activity, inp)
        return found.items if found else []

    async def _activity(self, activity: Callable[[Any, _A], Awaitable[_R]], arg: _A) -> _R:
        return await workflow.execute_activity_method(
            activity,
            arg,
            start_to_close_timeout=options.PSP_CALL,
            retry_policy=options.RECONCILE_STEP,
        )

    async def _step(self, activity: Callable[[Any, _A], Awaitable[_R]], arg: _A) -> _R | None:
        """One action; None (and an error in the report) when it kept failing."""
        try:
            return await self._activity(activity, arg)
        except ActivityError as e:
            self._errors.append(f"{activity.__name__} {_subject(arg)}: {e.__cause__ or e}")
            return None

    async def _restart(
        self,
        activity: Callable[[Any, RestartRequest], Awaitable[RestartResult]],
        subject_id: str,
    ) -> bool:
        """Start the orphan's workflow again (same id, on this queue); whether it started."""
        res = await self._step(activity, RestartRequest(subject_id, workflow.info().task_queue))
        return res is not None and res.started

    def _record(self, subject_id: str, action: Done, detail: str) -> None:
        self._done.append(ReconcileEntry(subject_id, action.value, detail))


def _subject(arg: Any) -> str:
    for attr in ("order_id", "refund_id", "subject_id"):
        if hasattr(arg, attr):
            return str(getattr(arg, attr))
    return ""


def _error_type(e: ActivityError) -> str | None:
    cause = e.__cause__
    return cause.type if isinstance(cause, ApplicationError) else None
