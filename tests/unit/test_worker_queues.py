"""Each role's worker registers the activities its workflows call, and no activity is left out."""

from __future__ import annotations

import inspect

from temporalio import activity

from activities.couriers import CourierActivities
from activities.inventory import InventoryActivities
from activities.notify import NotifyActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.reconciler import ReconcilerActivities
from activities.refunds import RefundActivities
from activities.sweeper import SweeperActivities
from domain.names import DISPATCH_TASK_QUEUE, ORDERS_TASK_QUEUE
from worker import ACTIVITIES_BY_QUEUE, SHARD_ACTIVITIES, WORKFLOWS_BY_QUEUE

CLASSES = [
    CourierActivities,
    InventoryActivities,
    NotifyActivities,
    OrderActivities,
    PaymentActivities,
    ReconcilerActivities,
    RefundActivities,
    SweeperActivities,
]


def _name(fn: object) -> str:
    return activity._Definition.must_from_callable(fn).name


def test_every_activity_is_registered_on_a_queue() -> None:
    defined = {
        _name(fn)
        for cls in CLASSES
        for _, fn in inspect.getmembers(cls, inspect.isfunction)
        if activity._Definition.from_callable(fn) is not None
    }
    served = {_name(fn) for fns in [*ACTIVITIES_BY_QUEUE.values(), SHARD_ACTIVITIES] for fn in fns}
    assert sorted(defined - served) == []
    assert sorted(served - defined) == []


def test_the_queues_are_the_workers_queues() -> None:
    assert (
        set(ACTIVITIES_BY_QUEUE)
        == set(WORKFLOWS_BY_QUEUE)
        == {
            ORDERS_TASK_QUEUE,
            DISPATCH_TASK_QUEUE,
        }
    )


def test_dispatch_serves_the_courier_activities_and_orders_can_release_one() -> None:
    """The delivery workflow routes (or, on old histories, finds and offers), assigns,
    releases and withdraws; it waits for its zone matcher on the shard's own queue; the order
    (its courier compensation, its delivered close) and the reconciler release on the orders
    queue."""
    assert {_name(fn) for fn in ACTIVITIES_BY_QUEUE[DISPATCH_TASK_QUEUE]} == {
        "find_nearest_courier",
        "offer_to_courier",
        "assign_courier",
        "release_courier",
        "route_dispatch",
        "withdraw_match",
    }
    assert [_name(fn) for fn in SHARD_ACTIVITIES] == ["request_match"]
    assert CourierActivities.release_courier in ACTIVITIES_BY_QUEUE[ORDERS_TASK_QUEUE]
