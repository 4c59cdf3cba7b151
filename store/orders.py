"""Read-model writes for orders: monotonic by transition counter, idempotent by (order, seq)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.converter import value_to_type

from domain.messages import CheckoutInput
from store.models import Order, OrderTimeline
from store.outbox import append_status_change
from store.sql import insert_ignore

ORDERS: Table = Order.__table__  # type: ignore[attr-defined]
TIMELINE: Table = OrderTimeline.__table__  # type: ignore[attr-defined]


def checkout_input_of(stored: dict[str, Any] | None) -> CheckoutInput | None:
    """``orders.checkout_input`` (``dataclasses.asdict`` of the input) as the dataclass, decoded
    as Temporal's converter decodes a workflow's input; None when the row has none."""
    if stored is None:
        return None
    inp: CheckoutInput = value_to_type(CheckoutInput, stored, [])
    return inp


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
    for i, entry in enumerate(view["timeline"]):
        new = await s.execute(
            insert_ignore(
                s, TIMELINE, dict(order_id=order_id, seq=i, status=entry["status"], at=entry["at"])
            )
        )
        if outbox and new.first() is not None:
            await append_status_change(s, view, i)
    return written
