"""The orders read model: the API's idempotent insert and reads, and the workflow's writes
(monotonic by transition counter, idempotent by (order, seq))."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from sqlmodel import select as select_model
from sqlmodel.ext.asyncio.session import AsyncSession as ModelSession
from temporalio.converter import value_to_type

from domain.messages import CheckoutInput
from store.models import Order, OrderTimeline
from store.outbox import append_status_changes
from store.sql import insert_ignore, insert_many_ignore

FINAL_SEQ = 2_000_000_000
"""``orders.seq`` of a row no workflow will write again (the reconciler's fail, the API's
sold-out answer): above any transition's ``seq``."""

ORDERS: Table = Order.__table__  # type: ignore[attr-defined]
TIMELINE: Table = OrderTimeline.__table__  # type: ignore[attr-defined]


def checkout_input_of(stored: dict[str, Any] | None) -> CheckoutInput | None:
    """``orders.checkout_input`` (``dataclasses.asdict`` of the input) as the dataclass, decoded
    as Temporal's converter decodes a workflow's input; None when the row has none."""
    if stored is None:
        return None
    inp: CheckoutInput = value_to_type(CheckoutInput, stored, [])
    return inp


# ------------------------------------------------------------------------------ the API's


async def insert_order_if_new(session: AsyncSession, *, row: dict[str, Any]) -> bool:
    """Insert the order unless (customer_id, idempotency_key) exists. True if inserted.

    One statement, so two concurrent first requests with one key cannot both insert."""
    stmt = insert_ignore(session, ORDERS, row, conflict_on=["customer_id", "idempotency_key"])
    return (await session.execute(stmt)).first() is not None


async def insert_orders_if_new(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert the rows whose order id and (customer_id, idempotency_key) are both new, in one
    multi-row statement; the order ids inserted. (The write-behind's: a redelivered row, or a
    key that SQL already holds, inserts nothing.)"""
    if not rows:
        return set()
    inserted = await insert_many_ignore(session, ORDERS, rows, returning=[ORDERS.c.order_id])
    return {r[0] for r in inserted}


async def keys_created_since(
    session: AsyncSession, cutoff: str, *, after: tuple[str, str] | None, limit: int
) -> list[tuple[str, str, str, str]]:
    """(order_id, customer_id, idempotency_key, created_at) of the orders created at or after
    ``cutoff``, oldest first, from after ``after`` = (created_at, order_id)."""
    stmt = select(
        ORDERS.c.order_id, ORDERS.c.customer_id, ORDERS.c.idempotency_key, ORDERS.c.created_at
    ).where(ORDERS.c.created_at >= cutoff)
    if after is not None:
        created_at, order_id = after
        stmt = stmt.where(
            or_(
                ORDERS.c.created_at > created_at,
                and_(ORDERS.c.created_at == created_at, ORDERS.c.order_id > order_id),
            )
        )
    stmt = stmt.order_by(ORDERS.c.created_at, ORDERS.c.order_id).limit(limit)
    return [(r[0], r[1], r[2], r[3]) for r in (await session.execute(stmt)).all()]


async def order_by_key(
    session: ModelSession, *, customer_id: str, idempotency_key: str
) -> Order | None:
    stmt = select_model(Order).where(
        Order.customer_id == customer_id, Order.idempotency_key == idempotency_key
    )
    return (await session.exec(stmt)).first()


async def list_orders(
    session: ModelSession,
    *,
    customer_id: str | None,
    status: str | None,
    before: tuple[str, str] | None,
    limit: int,
) -> list[Order]:
    """Newest first; ``before`` is the (created_at, order_id) of the last row already seen."""
    stmt = select_model(Order)
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


# ------------------------------------------------------------------------- the workflow's


async def record_order(
    s: AsyncSession, *, view: dict[str, Any], seq: int, outbox: bool = True
) -> bool:
    """Write ``view`` as of transition ``seq``; an older or repeated write changes nothing.
    Each status new to the timeline also goes to the event outbox (``store.outbox``), in this
    same transaction; ``outbox=False`` only for measuring what that costs.

    Returns True when the row now holds this ``seq``'s view.
    """
    order_id = view["order_id"]
    res = await s.execute(
        update(ORDERS)
        .where((ORDERS.c.order_id == order_id) & (ORDERS.c.seq < seq))
        .values(
            status=view["status"],
            failure_reason=view["failure_reason"],
            view=view,
            seq=seq,
            updated_at=view["updated_at"],
        )
        .returning(ORDERS.c.order_id)
    )
    written = res.first() is not None
    if not written:
        exists = (
            await s.execute(select(ORDERS.c.seq).where(ORDERS.c.order_id == order_id))
        ).first()
        if exists is None:
            # Started without the API (tests, operators replaying a workflow): create the row.
            ins = await s.execute(
                insert_ignore(
                    s,
                    ORDERS,
                    dict(
                        order_id=order_id,
                        customer_id=view["customer_id"],
                        idempotency_key=f"workflow:{order_id}",
                        request_hash="",
                        location_id=view["location_id"],
                        status=view["status"],
                        failure_reason=view["failure_reason"],
                        currency=view["currency"],
                        total_cents=view["amounts"]["total_cents"],
                        seq=seq,
                        view=view,
                        created_at=view["created_at"],
                        updated_at=view["updated_at"],
                    ),
                )
            )
            written = ins.first() is not None
    await append_timeline(s, view, outbox=outbox)
    return written


async def append_timeline(s: AsyncSession, view: dict[str, Any], *, outbox: bool = True) -> None:
    """The timeline rows of ``view`` not written yet, each new one also to the event outbox
    (``store.outbox``), in the caller's transaction."""
    await append_timelines(s, [view], outbox=outbox)


async def append_timelines(
    s: AsyncSession, views: Sequence[dict[str, Any]], *, outbox: bool = True
) -> None:
    """``append_timeline`` for many views: one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``
    for every timeline entry of them all (executemany, sent as multi-row batches; not one
    statement per entry): the rows that come back are the new ones, and their events go to
    the outbox in one more statement."""
    rows = [
        dict(order_id=view["order_id"], seq=i, status=entry["status"], at=entry["at"])
        for view in views
        for i, entry in enumerate(view["timeline"])
    ]
    if not rows:
        return
    added = await insert_many_ignore(
        s,
        TIMELINE,
        rows,
        returning=[TIMELINE.c.order_id, TIMELINE.c.seq],
        conflict_on=["order_id", "seq"],
    )
    new = sorted((r[0], r[1]) for r in added)
    if outbox and new:
        by_id = {view["order_id"]: view for view in views}
        await append_status_changes(s, [(by_id[order_id], seq) for order_id, seq in new])
