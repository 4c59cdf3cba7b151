"""Read-model writes for orders: monotonic by transition counter, idempotent by (order, seq)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Order, OrderTimeline
from store.sql import insert_ignore

O = Order.__table__
T = OrderTimeline.__table__


async def record_order(s: AsyncSession, *, view: dict[str, Any], seq: int) -> bool:
    """Write ``view`` as of transition ``seq``; an older or repeated write changes nothing.

    Returns True when the row now holds this ``seq``'s view.
    """
    order_id = view["order_id"]
    res = await s.execute(
        update(O)
        .where((O.c.order_id == order_id) & (O.c.seq < seq))
        .values(
            status=view["status"],
            failure_reason=view["failure_reason"],
            view=view,
            seq=seq,
            updated_at=view["updated_at"],
        )
    )
    written = res.rowcount == 1
    if not written:
        exists = (await s.execute(select(O.c.seq).where(O.c.order_id == order_id))).first()
        if exists is None:
            # Started without the API (tests, operators replaying a workflow): create the row.
            ins = await s.execute(
                insert_ignore(
                    s,
                    O,
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
            written = ins.rowcount == 1
    for i, entry in enumerate(view["timeline"]):
        await s.execute(
            insert_ignore(s, T, dict(order_id=order_id, seq=i, status=entry["status"], at=entry["at"]))
        )
    return written
