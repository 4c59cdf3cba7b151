"""Stock levels per location."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import SessionDep
from api.errors import NOT_FOUND, ApiProblem
from api.openapi import problems
from api.routes.products import SkuPath
from api.schemas import StockOut
from store import inventory

router = APIRouter(prefix="/v1/inventory", tags=["catalogue"])


@router.get(
    "/{sku}",
    responses=problems({404: "No stock row for this SKU here"}),
    summary="Available, reserved and sold units of a SKU at a location",
)
async def get_inventory(
    sku: SkuPath,
    session: SessionDep,
    location_id: Annotated[str, Query(min_length=1, max_length=64)] = "main",
) -> StockOut:
    stock = await inventory.get_stock(session, sku=sku, location_id=location_id)
    await session.commit()
    if stock is None:
        raise ApiProblem(404, NOT_FOUND, f"no stock of {sku!r} at location {location_id!r}")
    return StockOut.model_validate(stock, from_attributes=True)
