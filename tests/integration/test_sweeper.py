"""The inventory sweeper on the real dev server: it releases holds whose order workflow is gone
and leaves running orders to their own timer."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from temporalio.client import ScheduleActionStartWorkflow
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.inventory import InventoryActivities
from activities.sweeper import SweeperActivities, ensure_sweeper_schedule
from domain.messages import CancelRequest, CancelResult, ReservationKey, SweepInput, SweepReport
from domain.names import SWEEPER_SCHEDULE_ID, UPDATE_CANCEL
from store.db import make_sessionmaker
from tests.support import Stack, order_stack, wait_for_view
from workflows.sweeper import InventorySweepWorkflow


async def _sweep(stack: Stack, queue: str) -> SweepReport:
    return await stack.client.execute_workflow(
        InventorySweepWorkflow.run,
        SweepInput(ttl_s=60),
        id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )


async def test_sweeper_releases_orphaned_holds_and_leaves_running_orders(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    async with order_stack(dev_env.client, sqlite_url, tmp_path / "psp.db") as stack:
        sessions = make_sessionmaker(stack.engine)
        inventory = InventoryActivities(sessionmaker=sessions)
        sweeper = SweeperActivities(
            sessionmaker=sessions, client=dev_env.client, inventory=inventory
        )
        queue = f"sweep-{uuid.uuid4().hex[:8]}"
        await stack.seed_product("SKU-S", 100, 10)

        # A: a hold with no workflow at all (e.g. its history was deleted).
        orphan = f"o_orphan_{uuid.uuid4().hex[:6]}"
        await inventory.try_reserve(ReservationKey(orphan, "main", "SKU-S", 2))
        # B: an order terminated by an operator mid-payment: no compensation ran.
        b = stack.checkout([("SKU-S", 3, 100)], token="tok_action_never")
        hb = await stack.start(b)
        await wait_for_view(hb, lambda v: v.status == "AWAITING_PAYMENT")
        await hb.terminate("operator")
        # C: an order still waiting for its customer.
        c = stack.checkout([("SKU-S", 1, 100)], token="tok_action_never")
        hc = await stack.start(c)
        await wait_for_view(hc, lambda v: v.status == "AWAITING_PAYMENT")
        assert await stack.stock("SKU-S") == (4, 6, 0)

        async with stack.engine.begin() as conn:  # all three holds are now past their TTL
            await conn.execute(
                text("UPDATE reservations SET created_at = '2000-01-01T00:00:00.000000Z'")
            )

        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[InventorySweepWorkflow],
            activities=[
                sweeper.find_stale_reservations,
                sweeper.release_orphaned_reservations,
                sweeper.reconcile_hot_stock,
            ],
        ):
            report = await _sweep(stack, queue)
            assert report.examined == 3
            assert sorted(report.released_orders) == sorted([orphan, b.order_id])
            assert report.released_units == 5
            assert report.still_running == 1
            assert report.hot_counters_repaired == 0  # no Redis given: nothing to reconcile
            assert await stack.stock("SKU-S") == (9, 1, 0)

            again = await _sweep(stack, queue)  # nothing left to release; C still running
            assert (again.examined, again.released_orders, again.still_running) == (1, [], 1)

        # The released branches are fenced: a try arriving now is refused.
        with pytest.raises(ApplicationError):
            await inventory.try_reserve(ReservationKey(orphan, "main", "SKU-S", 2))

        await hc.execute_update(UPDATE_CANCEL, CancelRequest("done"), result_type=CancelResult)
        assert (await hc.result()).status == "CANCELLED"
        assert await stack.stock("SKU-S") == (10, 0, 0)


async def test_sweeper_schedule_is_created_once_and_follows_changed_settings(
    dev_env: WorkflowEnvironment,
) -> None:
    created = await ensure_sweeper_schedule(
        dev_env.client, task_queue="unused-q", every_s=3600, ttl_s=60
    )
    handle = dev_env.client.get_schedule_handle(SWEEPER_SCHEDULE_ID)
    try:
        # A worker restarted with another TTL and interval updates the one schedule.
        again = await ensure_sweeper_schedule(
            dev_env.client, task_queue="unused-q", every_s=600, ttl_s=1020
        )
        assert (created, again) == ("created", "updated")
        desc = await handle.describe()
        assert desc.schedule.spec.intervals[0].every.total_seconds() == 600
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        (arg,) = await dev_env.client.data_converter.decode(action.args, [SweepInput])
        assert arg.ttl_s == 1020
    finally:
        await handle.delete()
