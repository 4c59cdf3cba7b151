"""Courier app events: accept / decline an offer, picked up, delivered."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import CallerDep
from api.deps import SessionDep, StateDep
from api.openapi import problems
from api.orders_service import OrdersService
from api.routes.orders import OrderIdPath
from api.schemas import CourierEventAccepted, CourierEventIn

router = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])


@router.post(
    "/{order_id}/events",
    status_code=202,
    response_model_exclude_unset=True,
    summary="A courier's event for an order",
    description=(
        "`accepted`/`declined` answer the open offer (409 `not_dispatching` when there is "
        "none, 409 `courier_mismatch` from another courier); `picked_up`/`delivered` move the "
        "order (409 `out_of_order`, 409 `courier_mismatch`)."
    ),
    responses=problems({404: "No such order", 409: "Event refused"}),
)
async def post_delivery_event(
    order_id: OrderIdPath,
    caller: CallerDep,
    body: CourierEventIn,
    session: SessionDep,
    state: StateDep,
) -> CourierEventAccepted:
    caller.must_be_courier(body.courier_id)
    return await OrdersService(state).courier_event(session, order_id, body)
