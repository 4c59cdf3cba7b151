"""Admin writes: catalogue, stock levels, locations, couriers (header ``X-Admin-Token``).

These are the only writes the API makes itself; orders, payments and couriers' orders belong
to workflows.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path
from redis.exceptions import RedisError

from activities.couriers import sync_courier
from api.auth import new_courier_token
from api.catalogue import product_dict
from api.deps import AdminDep, SessionDep, StateDep
from api.errors import NOT_FOUND, ApiProblem
from api.openapi import ADMIN_PROBLEMS, problems
from api.routes.products import SkuPath
from api.schemas import (
    CourierIn,
    CourierOut,
    CourierTokenOut,
    CourierTokensRevoked,
    LocationIn,
    LocationOut,
    ProductIn,
    ProductOut,
    StockIn,
    StockOut,
)
from api.state import AppState
from dispatch.geoindex import CourierGeoIndex
from infra.hot_stock import drop_hot_counters, reconcile_hot_counters
from store import catalogue, courier_tokens, couriers, inventory
from store.models import Courier, Location, Product

log = logging.getLogger(__name__)

IdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep], responses=ADMIN_PROBLEMS
)


@router.put("/products/{sku}", response_model=ProductOut, summary="Create or replace a product")
async def put_product(
    sku: SkuPath, body: ProductIn, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    row = await catalogue.upsert_product(
        session,
        sku=sku,
        name=body.name,
        price_cents=body.price_cents,
        currency=body.currency,
        hot=body.hot,
    )
    await session.commit()
    # After the commit: a reader that loads between commit and invalidation is dropped by
    # the cache's lease check, so the next GET sees the new price.
    await state.catalogue.invalidate(sku)
    if body.hot is not None:
        await _follow_hot_flag(state, sku, hot=body.hot)
    return product_dict(Product(**row))


@router.put(
    "/inventory/{sku}",
    responses=problems({404: "Unknown product or location"}),
    summary="Set the sellable quantity (reserved and sold are untouched)",
)
async def put_inventory(
    sku: SkuPath, body: StockIn, session: SessionDep, state: StateDep
) -> StockOut:
    product = await session.get(Product, sku)
    if product is None:
        await session.rollback()
        raise ApiProblem(404, NOT_FOUND, f"product {sku!r} does not exist")
    if await session.get(Location, body.location_id) is None:
        await session.rollback()
        raise ApiProblem(404, NOT_FOUND, f"location {body.location_id!r} does not exist")
    row = await inventory.set_available(
        session, sku=sku, location_id=body.location_id, available=body.available
    )
    hot = product.hot
    await session.commit()
    if hot:
        await _follow_hot_flag(state, sku, hot=True, location_id=body.location_id)
    return StockOut.model_validate(row)


async def _follow_hot_flag(
    state: AppState, sku: str, *, hot: bool, location_id: str | None = None
) -> None:
    """After the commit, the flash-sale counters follow the DB: set from ``available`` minus
    claims in flight when the SKU is hot (restock, flag turned on), deleted when it is not.
    Redis being down does not undo the DB change: the counter is rebuilt on first use or by
    reconciliation."""
    try:
        if hot:
            await reconcile_hot_counters(
                state.sessionmaker, state.redis, sku=sku, location_id=location_id
            )
        else:
            await drop_hot_counters(state.sessionmaker, state.redis, sku=sku)
    except (RedisError, OSError) as exc:
        log.warning("hot counter for %s not updated (redis unavailable): %s", sku, exc)


@router.put(
    "/locations/{location_id}",
    response_model=LocationOut,
    summary="Create or replace a store / warehouse",
)
async def put_location(
    location_id: IdPath, body: LocationIn, session: SessionDep
) -> dict[str, Any]:
    row = await catalogue.upsert_location(
        session, location_id=location_id, name=body.name, lat=body.lat, lng=body.lng
    )
    await session.commit()
    return row


@router.put(
    "/couriers/{courier_id}",
    response_model=CourierOut,
    summary="Create a courier or set its position and availability",
    description="Never changes the courier's current offer or assignment (dispatch owns those).",
)
async def put_courier(
    courier_id: IdPath, body: CourierIn, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    row = await couriers.upsert_courier(
        session, courier_id=courier_id, lat=body.lat, lng=body.lng, available=body.available
    )
    await session.commit()
    # The geo index follows the table: the courier moves zone, or leaves it when off shift.
    geo = CourierGeoIndex(
        state.redis,
        resolution=state.settings.zone_resolution,
        prefix=state.settings.dispatch_key_prefix,
    )
    await sync_courier(state.sessionmaker, geo, courier_id)
    return row


@router.post(
    "/couriers/{courier_id}/tokens",
    status_code=201,
    response_model=CourierTokenOut,
    responses=problems({404: "No such courier"}),
    summary="Issue a courier token (shown once; only its hash is stored)",
    description=(
        "The courier app sends it as `Authorization: Bearer <token>`: it may post delivery "
        "events naming this courier and read `GET /v1/couriers/{courier_id}`. A courier may "
        "hold several live tokens (one per device); `DELETE` revokes them all."
    ),
)
async def issue_courier_token(courier_id: IdPath, session: SessionDep) -> dict[str, Any]:
    if await session.get(Courier, courier_id) is None:
        await session.rollback()
        raise ApiProblem(404, NOT_FOUND, f"courier {courier_id!r} does not exist")
    token = new_courier_token()
    created_at = await courier_tokens.issue(session, courier_id=courier_id, token=token)
    await session.commit()
    log.info("courier token issued for %s", courier_id)
    return {"token": token, "courier_id": courier_id, "created_at": created_at}


@router.delete(
    "/couriers/{courier_id}/tokens",
    response_model=CourierTokensRevoked,
    summary="Revoke every token of a courier (effective on the next request)",
)
async def revoke_courier_tokens(courier_id: IdPath, session: SessionDep) -> dict[str, Any]:
    revoked = await courier_tokens.revoke_all(session, courier_id=courier_id)
    await session.commit()
    log.info("revoked %d courier token(s) of %s", revoked, courier_id)
    return {"courier_id": courier_id, "revoked": revoked}
