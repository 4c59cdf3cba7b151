"""Catalogue: products, read through the Redis cache."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from api.catalogue import product_dict
from api.deps import SessionDep, StateDep
from api.errors import NOT_FOUND, ApiProblem
from api.openapi import problems
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from api.schemas import ProductOut, ProductPage
from store import catalogue

router = APIRouter(prefix="/v1/products", tags=["catalogue"])

SkuPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.get("", response_model=ProductPage, summary="List products by SKU")
async def list_products(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> dict[str, Any]:
    after = decode_cursor(cursor, 1)[0] if cursor is not None else None
    rows = await catalogue.list_products(session, after=after, limit=limit + 1)
    await session.commit()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].sku) if len(rows) > limit else None
    return {"items": [product_dict(p) for p in page], "next_cursor": next_cursor}


@router.get(
    "/{sku}",
    response_model=ProductOut,
    responses=problems({404: "No such SKU"}),
    summary="One product (cached; a price change shows at once)",
)
async def get_product(sku: SkuPath, state: StateDep) -> dict[str, Any]:
    product = await state.catalogue.product(sku)
    if product is None:
        raise ApiProblem(404, NOT_FOUND, f"product {sku!r} does not exist")
    return product
