"""Inventory sweeper activities: find reservations held past their TTL and release those whose
order workflow is gone (terminated by an operator, or its history deleted).

Orders still running are left alone: their own timer releases what they hold, and releasing
behind a running saga's back would race its confirm.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client

from activities.inventory import InventoryActivities
from activities.orphans import OrphanActivities
from domain.messages import ReleaseReport, ReservationKey, StaleReservations, SweepInput
from domain.names import (
    ACT_FIND_STALE_RESERVATIONS,
    ACT_RECONCILE_HOT_STOCK,
    ACT_RELEASE_ORPHANED_RESERVATIONS,
    SWEEP_WORKFLOW,
    SWEEPER_SCHEDULE_ID,
    order_workflow_id,
)
from infra.hot_stock import reconcile_hot_counters
from infra.temporal import ensure_schedule, interval_schedule
from store import sweeper as queries


class SweeperActivities(OrphanActivities):
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: Client,
        inventory: InventoryActivities,
        redis: aioredis.Redis | None = None,
    ) -> None:
        super().__init__(sessionmaker=sessionmaker, client=client)
        self._inventory = inventory
        self._redis = redis

    @activity.defn(name=ACT_RECONCILE_HOT_STOCK)
    async def reconcile_hot_stock(self) -> int:
        """Repair drift between flash-sale counters and the database; how many were off."""
        if self._redis is None:
            return 0
        changes = await reconcile_hot_counters(self._sessions, self._redis)
        for change in changes:
            activity.logger.warning("hot counter repaired: %s", change)
        return len(changes)

    @activity.defn(name=ACT_FIND_STALE_RESERVATIONS)
    async def find_stale_reservations(self, inp: SweepInput) -> StaleReservations:
        async with self._sessions() as s:
            orders = await queries.orders_with_stale_holds(
                s, older_than_s=inp.ttl_s, limit=inp.limit
            )
        return StaleReservations(order_ids=orders)

    @activity.defn(name=ACT_RELEASE_ORPHANED_RESERVATIONS)
    async def release_orphaned_reservations(self, stale: StaleReservations) -> ReleaseReport:
        released: list[str] = []
        running: list[str] = []
        units = 0
        for i, order_id in enumerate(stale.order_ids):
            activity.heartbeat(i)
            if await self._order_is_running(order_id):
                running.append(order_id)
                continue
            async with self._sessions() as s:
                branches = await queries.tried_branches(s, order_id=order_id)
            for location_id, sku, quantity in branches:
                # The same fenced cancel the saga uses: idempotent, and a late try is refused.
                res = await self._inventory.cancel_reservation(
                    ReservationKey(order_id, location_id, sku, quantity)
                )
                if res.changed:
                    units += quantity
            if branches:
                released.append(order_id)
                activity.logger.warning(
                    "released %d branch(es) held by order %s, whose workflow no longer runs",
                    len(branches),
                    order_id,
                )
        return ReleaseReport(released_orders=released, released_units=units, still_running=running)

    async def _order_is_running(self, order_id: str) -> bool:
        return await self._workflow_state(order_workflow_id(order_id)) is None


async def ensure_sweeper_schedule(
    client: Client, *, task_queue: str, every_s: float, ttl_s: float
) -> str:
    """Create the ``inventory-sweeper`` schedule, or bring an existing one to these settings
    (a changed TTL or interval takes effect at the next worker start): ``created`` or
    ``updated``.

    Overlapping runs are skipped: a sweep that takes longer than the interval is not doubled.
    """
    wanted = interval_schedule(
        SWEEP_WORKFLOW,
        SweepInput(ttl_s=ttl_s),
        workflow_id="inventory-sweep",
        task_queue=task_queue,
        every_s=every_s,
    )
    return await ensure_schedule(client, SWEEPER_SCHEDULE_ID, wanted)
