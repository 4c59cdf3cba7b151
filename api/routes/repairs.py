"""Operator repair of orders parked in NEEDS_ATTENTION (header ``X-Admin-Token``)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AdminDep, SessionDep, StateDep
from api.openapi import ADMIN_PROBLEMS, problems
from api.orders_service import OrdersService
from api.routes.orders import OrderIdPath
from api.schemas import Id, RepairedOrder


class RepairBody(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, pattern=r"^[^\x00]*\S[^\x00]*$")
    """What the operator fixed outside tradeflow; kept in the order's workflow history."""
    operator: Id = "operator"


router = APIRouter(
    prefix="/v1/admin/orders", tags=["admin"], dependencies=[AdminDep], responses=ADMIN_PROBLEMS
)


@router.post(
    "/{order_id}/repair",
    summary="Resume the compensations of an order in NEEDS_ATTENTION",
    description=(
        "Runs again every compensation that had failed for good (voiding the authorization, "
        "returning stock, freeing the courier), once the operator has fixed what refused it. "
        "When all succeed the order ends as the saga meant it to (`CANCELLED` or `FAILED`); "
        "otherwise it stays `NEEDS_ATTENTION` and `repair.remaining` names what is left. "
        "409 `not_repairable` when the order is not parked."
    ),
    responses=problems({404: "No such order", 409: "The order is not in NEEDS_ATTENTION"}),
)
async def repair_order(
    order_id: OrderIdPath, body: RepairBody, session: SessionDep, state: StateDep
) -> RepairedOrder:
    return await OrdersService(state).repair(session, order_id, body.reason, body.operator)
