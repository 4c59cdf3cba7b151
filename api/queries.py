"""The SQL the API runs: reads, the idempotent order insert, and the admin upserts.

Each write is one statement (``INSERT ... ON CONFLICT``), so concurrent requests cannot
interleave a read and a write. The dialect-specific ``insert`` is picked from the session's
bind (SQLite embedded, PostgreSQL in production; both support ``ON CONFLICT`` and
``RETURNING``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import Courier, Location, Order, Product, Stock, utcnow_iso

ORDERS: Table = Order.__table__  # type: ignore[attr-defined]
PRODUCTS: Table = Product.__table__  # type: ignore[attr-defined]
STOCK: Table = Stock.__table__  # type: ignore[attr-defined]
LOCATIONS: Table = Location.__table__  # type: ignore[attr-defined]
COURIERS: Table = Courier.__table__  # type: ignore[attr-defined]


def _insert(session: AsyncSession, table: Table) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# ----------------------------------------------------------------------------------- orders


async def insert_order_if_new(session: AsyncSession, *, row: dict[str, Any]) -> bool:
    """Insert the order unless (customer_id, idempotency_key) exists. True if inserted."""
    stmt = (
        _insert(session, ORDERS)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["customer_id", "idempotency_key"])
        .returning(ORDERS.c.order_id)
    )
    # RETURNING rather than rowcount: drivers disagree on rowcount for DO NOTHING.
    return (await session.exec(stmt)).first() is not None


async def order_by_key(
    session: AsyncSession, *, customer_id: str, idempotency_key: str
) -> Order | None:
    stmt = select(Order).where(
        Order.customer_id == customer_id, Order.idempotency_key == idempotency_key
    )
    return (await session.exec(stmt)).first()


async def list_orders(
    session: AsyncSession,
    *,
    customer_id: str | None,
    status: str | None,
    before: tuple[str, str] | None,
    limit: int,
) -> list[Order]:
    """Newest first; ``before`` is the (created_at, order_id) of the last row already seen."""
    stmt = select(Order)
    if customer_id is not None:
        stmt = stmt.where(Order.customer_id == customer_id)
    if status is not None:
        stmt = stmt.where(Order.status == status)
    if before is not None:
        created_at, order_id = before
        stmt = stmt.where(
            or_(
                col(Order.created_at) < created_at,
                and_(col(Order.created_at) == created_at, col(Order.order_id) < order_id),
            )
        )
    stmt = stmt.order_by(col(Order.created_at).desc(), col(Order.order_id).desc()).limit(limit)
    return list((await session.exec(stmt)).all())


# -------------------------------------------------------------------------------- catalogue


async def list_products(session: AsyncSession, *, after: str | None, limit: int) -> list[Product]:
    stmt = select(Product)
    if after is not None:
        stmt = stmt.where(col(Product.sku) > after)
    stmt = stmt.order_by(col(Product.sku)).limit(limit)
    return list((await session.exec(stmt)).all())


async def upsert_product(
    session: AsyncSession,
    *,
    sku: str,
    name: str,
    price_cents: int,
    currency: str,
    hot: bool | None,
) -> dict[str, Any]:
    """Create or replace a product; ``hot=None`` keeps the current flag (False when new)."""
    ins = _insert(session, PRODUCTS).values(
        sku=sku,
        name=name,
        price_cents=price_cents,
        currency=currency,
        hot=bool(hot),
        updated_at=utcnow_iso(),
    )
    changes = ["name", "price_cents", "currency", "updated_at"] + (
        ["hot"] if hot is not None else []
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["sku"], set_={c: ins.excluded[c] for c in changes}
    ).returning(PRODUCTS)
    row = (await session.exec(stmt)).mappings().one()
    return dict(row)


# ------------------------------------------------------------------------------------ stock


async def get_stock(session: AsyncSession, *, sku: str, location_id: str) -> Stock | None:
    return await session.get(Stock, (location_id, sku))


async def set_available(
    session: AsyncSession, *, sku: str, location_id: str, available: int
) -> dict[str, Any]:
    """Set the sellable quantity in one statement; reserved and sold stay as they are.

    ``stocked`` moves by the same delta as ``available``, so ``available + reserved + sold ==
    stocked`` keeps holding. The SET clause sees the row as it was before the statement.
    """
    ins = _insert(session, STOCK).values(
        location_id=location_id,
        sku=sku,
        available=available,
        reserved=0,
        sold=0,
        stocked=available,
        updated_at=utcnow_iso(),
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["location_id", "sku"],
        set_={
            "stocked": STOCK.c.stocked + (ins.excluded.available - STOCK.c.available),
            "available": ins.excluded.available,
            "updated_at": ins.excluded.updated_at,
        },
    ).returning(STOCK)
    row = (await session.exec(stmt)).mappings().one()
    return dict(row)


# -------------------------------------------------------------------------------- locations


async def upsert_location(
    session: AsyncSession, *, location_id: str, name: str, lat: float, lng: float
) -> dict[str, Any]:
    ins = _insert(session, LOCATIONS).values(location_id=location_id, name=name, lat=lat, lng=lng)
    stmt = ins.on_conflict_do_update(
        index_elements=["location_id"],
        set_={c: ins.excluded[c] for c in ("name", "lat", "lng")},
    ).returning(LOCATIONS)
    row = (await session.exec(stmt)).mappings().one()
    return dict(row)


# --------------------------------------------------------------------------------- couriers


async def upsert_courier(
    session: AsyncSession, *, courier_id: str, lat: float, lng: float, available: bool
) -> dict[str, Any]:
    """Position and shift only: the courier's offer/assignment belongs to dispatch."""
    ins = _insert(session, COURIERS).values(
        courier_id=courier_id,
        lat=lat,
        lng=lng,
        available=available,
        current_order_id=None,
        assignment=None,
        updated_at=utcnow_iso(),
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["courier_id"],
        set_={c: ins.excluded[c] for c in ("lat", "lng", "available", "updated_at")},
    ).returning(COURIERS)
    row = (await session.exec(stmt)).mappings().one()
    return dict(row)


async def list_couriers(
    session: AsyncSession, *, available: bool | None, after: str | None, limit: int
) -> list[Courier]:
    stmt = select(Courier)
    if available is not None:
        stmt = stmt.where(Courier.available == available)
    if after is not None:
        stmt = stmt.where(col(Courier.courier_id) > after)
    stmt = stmt.order_by(col(Courier.courier_id)).limit(limit)
    return list((await session.exec(stmt)).all())
