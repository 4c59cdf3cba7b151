"""POST /v1/deliveries/{order_id}/events: routing to the delivery or order workflow, 409s."""

from __future__ import annotations

from typing import Any

from domain.messages import DeliveryInput
from domain.names import delivery_workflow_id, order_workflow_id
from tests.api.fakes import SetState
from tests.api.helpers import Api, assert_problem, order_body, unique


async def new_order(api: Api) -> str:
    sku = unique("SKU")
    await api.put_product(sku)
    r = await api.http.post(
        "/v1/orders", json=order_body(unique("c"), [(sku, 1)]), headers={"Idempotency-Key": "k"}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["order_id"])


async def event(api: Api, order_id: str, courier_id: str, type_: str) -> Any:
    return await api.http.post(
        f"/v1/deliveries/{order_id}/events", json={"courier_id": courier_id, "type": type_}
    )


async def assign(api: Api, order_id: str, courier_id: str) -> None:
    assert api.temporal is not None
    await api.temporal.get_workflow_handle(order_workflow_id(order_id)).execute_update(
        "test_set_state", SetState("COURIER_ASSIGNED", courier_id)
    )


async def test_pickup_and_delivery_by_the_assigned_courier_move_the_order(api: Api) -> None:
    order_id = await new_order(api)
    await assign(api, order_id, "k-7")

    r = await event(api, order_id, "k-7", "picked_up")
    assert r.status_code == 202, r.text
    assert r.json() == {
        "order_id": order_id,
        "courier_id": "k-7",
        "type": "picked_up",
        "status": "OUT_FOR_DELIVERY",
        "accepted": True,
    }
    r = await event(api, order_id, "k-7", "delivered")
    assert r.status_code == 202
    assert r.json()["status"] == "DELIVERED"
    assert (await api.http.get(f"/v1/orders/{order_id}")).json()["status"] == "DELIVERED"


async def test_delivered_before_picked_up_is_409_out_of_order(api: Api) -> None:
    order_id = await new_order(api)
    await assign(api, order_id, "k-7")
    assert_problem(await event(api, order_id, "k-7", "delivered"), 409, "out_of_order")


async def test_events_from_another_courier_are_409_courier_mismatch(api: Api) -> None:
    order_id = await new_order(api)
    await assign(api, order_id, "k-7")
    assert_problem(await event(api, order_id, "k-8", "picked_up"), 409, "courier_mismatch")


async def test_offer_answers_go_to_the_delivery_workflow(api: Api) -> None:
    order_id = await new_order(api)
    assert api.temporal is not None
    delivery = await api.temporal.start_workflow(
        "DeliveryWorkflow",
        DeliveryInput(order_id, "main", order_workflow_id(order_id), 30.0, 3),
        id=delivery_workflow_id(order_id),
        task_queue=api.app.state.tradeflow.dispatch_task_queue,
    )
    await delivery.execute_update("test_offer", "k-1")

    assert_problem(await event(api, order_id, "k-2", "accepted"), 409, "courier_mismatch")
    r = await event(api, order_id, "k-1", "declined")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "DISPATCHING"
    await delivery.execute_update("test_offer", "k-2")
    r = await event(api, order_id, "k-2", "accepted")
    assert r.status_code == 202
    assert r.json()["status"] == "ASSIGNED"

    assert await delivery.result() == "ASSIGNED"
    # Dispatch is over: a late answer finds nothing to answer.
    assert_problem(await event(api, order_id, "k-1", "accepted"), 409, "not_dispatching")


async def test_offer_answer_without_dispatch_is_409_not_dispatching(api: Api) -> None:
    order_id = await new_order(api)
    assert_problem(await event(api, order_id, "k-1", "accepted"), 409, "not_dispatching")


async def test_events_for_unknown_orders_are_404(api: Api) -> None:
    assert_problem(await event(api, "o_nope", "k-1", "picked_up"), 404, "not_found")


async def test_unknown_event_type_is_422(api: Api) -> None:
    order_id = await new_order(api)
    assert_problem(await event(api, order_id, "k-1", "lost"), 422, "validation_error")
