"""Periodic inventory sweep (started by the ``inventory-sweeper`` Temporal Schedule)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import workflows.options as options
    from activities.sweeper import SweeperActivities
    from domain import names
    from domain.messages import ReleaseReport, SweepInput, SweepReport


@workflow.defn(name=names.SWEEP_WORKFLOW)
class InventorySweepWorkflow:
    @workflow.run
    async def run(self, inp: SweepInput) -> SweepReport:
        workflow.set_current_details(f"looking for reservations held longer than {inp.ttl_s:.0f}s")
        stale = await workflow.execute_activity_method(
            SweeperActivities.find_stale_reservations,
            inp,
            start_to_close_timeout=options.SHORT,
            retry_policy=options.RECORD,
        )
        report = ReleaseReport([], 0, [])
        if stale.order_ids:
            workflow.set_current_details(f"checking {len(stale.order_ids)} order(s)")
            report = await workflow.execute_activity_method(
                SweeperActivities.release_orphaned_reservations,
                stale,
                start_to_close_timeout=options.SWEEP_RELEASE,
                heartbeat_timeout=options.SWEEP_RELEASE_HEARTBEAT,
                retry_policy=options.SWEEP_STEP,
            )
        workflow.set_current_details("reconciling flash-sale counters with the database")
        repaired = await workflow.execute_activity_method(
            SweeperActivities.reconcile_hot_stock,
            start_to_close_timeout=options.SWEEP_RECONCILE_HOT,
            retry_policy=options.SWEEP_STEP,
        )
        result = SweepReport(
            examined=len(stale.order_ids),
            released_orders=report.released_orders,
            released_units=report.released_units,
            still_running=len(report.still_running),
            hot_counters_repaired=repaired,
        )
        workflow.set_current_details(
            f"released {result.released_units} unit(s) from {len(result.released_orders)} orphaned "
            f"order(s); {result.still_running} still running; {repaired} hot counter(s) repaired"
        )
        workflow.logger.info("inventory sweep: %s", result)
        return result
