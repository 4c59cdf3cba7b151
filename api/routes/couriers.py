"""Courier views (an addition to the contract): the courier app polls its offer here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.auth import CourierViewerDep, OperatorDep
from api.deps import SessionDep
from api.errors import NOT_FOUND, ApiProblem
from api.openapi import problems
from api.pagination import MAX_LIMIT
from api.routes.admin import IdPath
from api.schemas import CourierList, CourierOut
from store import couriers
from store.models import Courier

router = APIRouter(prefix="/v1/couriers", tags=["couriers"])


def courier_dict(c: Courier) -> dict[str, Any]:
    return {
        "courier_id": c.courier_id,
        "lat": c.lat,
        "lng": c.lng,
        "available": bool(c.available),
        "current_order_id": c.current_order_id,
        "assignment": c.assignment,
    }


@router.get("", response_model=CourierList, summary="All couriers (optionally only available)")
async def list_couriers(
    operator: OperatorDep,
    session: SessionDep,
    available: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = MAX_LIMIT,
    after: Annotated[
        str | None, Query(max_length=64, description="courier_id to start after")
    ] = None,
) -> dict[str, Any]:
    rows = await couriers.list_couriers(session, available=available, after=after, limit=limit)
    await session.commit()
    return {"items": [courier_dict(c) for c in rows]}


@router.get(
    "/{courier_id}",
    response_model=CourierOut,
    responses=problems({404: "No such courier"}),
    summary="One courier, with the order it is offered or assigned",
)
async def get_courier(
    courier_id: IdPath, viewer: CourierViewerDep, session: SessionDep
) -> dict[str, Any]:
    courier = await session.get(Courier, courier_id)
    await session.commit()
    if courier is None:
        raise ApiProblem(404, NOT_FOUND, f"courier {courier_id!r} does not exist")
    return courier_dict(courier)
