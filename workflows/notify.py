"""Max-effort merchant notification (``notify-<event_id>``).

One signed POST per try, on a growing schedule measured in hours, with durable timers between
tries; after the last try tradeflow gives up and records it. Started by the order (or refund)
workflow as an abandoned child, so a slow merchant never holds an order open.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    import workflows.options as options
    from activities.notify import NotifyActivities
    from domain import names
    from domain.messages import MerchantEvent, NotificationOutcome, NotifyAttempt
    from domain.status import NotificationStatus


async def notify_merchant(ev: MerchantEvent, *, about: str) -> None:
    """From the workflow that saw the fact: start its notification as an abandoned child, so
    it outlives that workflow, and a repeat of the fact (same event id) starts nothing.
    ``about`` names the subject in the Temporal UI (``order <id>``, ``refund <id>``)."""
    try:
        await workflow.start_child_workflow(
            names.NOTIFY_WORKFLOW,
            ev,
            id=names.notify_workflow_id(ev.event_id),
            task_queue=workflow.info().task_queue,
            parent_close_policy=ParentClosePolicy.ABANDON,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=f"Notify merchant: {ev.type} for {about}",
        )
    except WorkflowAlreadyStartedError:
        pass  # already notifying of this fact


@workflow.defn(name=names.NOTIFY_WORKFLOW)
class NotifyMerchantWorkflow:
    @workflow.run
    async def run(self, ev: MerchantEvent) -> NotificationOutcome:
        delays = [0.0, *ev.backoff_s]
        last_error: str | None = None
        for attempt, delay in enumerate(delays, start=1):
            if delay:
                workflow.set_current_details(
                    f"try {attempt}/{len(delays)} of {ev.type} in {delay:.0f}s (last: {last_error})"
                )
                await workflow.sleep(timedelta(seconds=delay), summary=f"notify try {attempt}")
            try:
                res = await workflow.execute_activity_method(
                    NotifyActivities.notify_merchant,
                    ev,
                    start_to_close_timeout=options.NOTIFY_TRY,
                    retry_policy=options.ONE_TRY,
                )
            except Exception as e:  # the activity itself failed (worker crash, timeout)
                res = NotifyAttempt(delivered=False, error=str(e))
            if res.skipped:
                return await self._record(ev, NotificationStatus.SKIPPED, attempt, None)
            if res.delivered:
                return await self._record(ev, NotificationStatus.DELIVERED, attempt, None)
            last_error = res.error or f"HTTP {res.status_code}"
        return await self._record(ev, NotificationStatus.GAVE_UP, len(delays), last_error)

    async def _record(
        self, ev: MerchantEvent, status: NotificationStatus, attempts: int, error: str | None
    ) -> NotificationOutcome:
        outcome = NotificationOutcome(ev.event_id, ev.order_id, ev.type, status, attempts, error)
        await workflow.execute_activity_method(
            NotifyActivities.record_notification,
            outcome,
            start_to_close_timeout=options.SHORT,
            retry_policy=options.RECORD,
        )
        workflow.set_current_details(
            f"{status} after {attempts} tr{'y' if attempts == 1 else 'ies'}"
        )
        return outcome
