"""tradeflow's record of each order's payment (``payments``), kept in step by the payment
activities: one row per order, written before the PSP is called and moved forward only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.status import PaymentStatus
from store.models import Order, Payment, utcnow_iso
from store.sql import insert_ignore

PAYMENTS: Table = Payment.__table__  # type: ignore[attr-defined]
ORDERS: Table = Order.__table__  # type: ignore[attr-defined]

_S = PaymentStatus
#: The row statuses each new status may overwrite. A late or repeated activity never moves a
#: payment backwards (e.g. an authorize retry cannot undo a capture or a void).
MAY_FOLLOW: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    _S.REQUIRES_ACTION: frozenset({_S.PENDING, _S.REQUIRES_ACTION}),
    _S.AUTHORIZED: frozenset({_S.PENDING, _S.REQUIRES_ACTION, _S.AUTHORIZED}),
    _S.DECLINED: frozenset({_S.PENDING, _S.REQUIRES_ACTION, _S.DECLINED}),
    _S.CAPTURED: frozenset({_S.PENDING, _S.REQUIRES_ACTION, _S.AUTHORIZED, _S.CAPTURED}),
    _S.VOIDED: frozenset({_S.PENDING, _S.REQUIRES_ACTION, _S.AUTHORIZED, _S.VOIDED}),
}


async def record_pending(
    s: AsyncSession,
    *,
    order_id: str,
    idempotency_key: str,
    currency: str,
    amount_cents: int,
) -> bool:
    """The order's row as PENDING, unless it has one already. True if inserted."""
    stmt = insert_ignore(
        s,
        PAYMENTS,
        {
            "order_id": order_id,
            "payment_id": None,
            "idempotency_key": idempotency_key,
            "status": PaymentStatus.PENDING.value,
            "currency": currency,
            "amount_cents": amount_cents,
            "authorized_cents": 0,
            "captured_cents": 0,
            "refunded_cents": 0,
            "updated_at": utcnow_iso(),
        },
    )
    return (await s.execute(stmt)).first() is not None


async def note_payment_id(s: AsyncSession, *, order_id: str, payment_id: str) -> None:
    """Record the intent id, if the row does not have it yet."""
    c = PAYMENTS.c
    await s.execute(
        update(PAYMENTS)
        .where(c.order_id == order_id, c.payment_id.is_(None))
        .values(payment_id=payment_id, updated_at=utcnow_iso())
    )


async def set_status(
    s: AsyncSession, *, order_id: str, status: PaymentStatus, **values: Any
) -> bool:
    """One conditional UPDATE: applies only where ``status`` may follow the current one
    (see :data:`MAY_FOLLOW`). False when the row is absent or further along."""
    c = PAYMENTS.c
    allowed = [st.value for st in MAY_FOLLOW[status]]
    result = await s.execute(
        update(PAYMENTS)
        .where(c.order_id == order_id, c.status.in_(allowed))
        .values(status=status.value, updated_at=utcnow_iso(), **values)
        .returning(c.order_id)
    )
    return result.first() is not None


async def note_webhook_outcome(
    s: AsyncSession, *, order_id: str, payment_id: str, succeeded: bool, amount_cents: int
) -> bool:
    """A signed PSP event settled the customer's action: the row says so at once (AUTHORIZED
    with the amount, or DECLINED) instead of REQUIRES_ACTION until the capture or void.

    Only a row still waiting moves (PENDING, when the webhook overtook the authorize call's
    answer, or REQUIRES_ACTION), and only for this intent (or a row that has none yet); a row
    the workflow already moved on (captured, voided, ...) is left as it is. True if it moved."""
    c = PAYMENTS.c
    status = _S.AUTHORIZED if succeeded else _S.DECLINED
    values: dict[str, Any] = {"authorized_cents": amount_cents} if succeeded else {}
    result = await s.execute(
        update(PAYMENTS)
        .where(
            c.order_id == order_id,
            c.status.in_([_S.PENDING.value, _S.REQUIRES_ACTION.value]),
            (c.payment_id == payment_id) | c.payment_id.is_(None),
        )
        .values(status=status.value, payment_id=payment_id, updated_at=utcnow_iso(), **values)
        .returning(c.order_id)
    )
    return result.first() is not None


PaymentAudit = tuple[str, str, int, int, int, int, int, str | None]
"""(order_id, status, amount_cents, authorized_cents, captured_cents, refunded_cents,
refund_committed_cents, the order's status or None when it has no order row)."""


async def with_order_status(s: AsyncSession, *, order_ids: list[str] | None) -> list[PaymentAudit]:
    """Every payment row (or ``order_ids``'), by order id, with its order's status."""
    p = PAYMENTS.c
    stmt = select(
        p.order_id,
        p.status,
        p.amount_cents,
        p.authorized_cents,
        p.captured_cents,
        p.refunded_cents,
        p.refund_committed_cents,
        ORDERS.c.status,
    ).join(ORDERS, ORDERS.c.order_id == p.order_id, isouter=True)
    if order_ids is not None:
        stmt = stmt.where(p.order_id.in_(order_ids))
    rows = (await s.execute(stmt.order_by(p.order_id))).all()
    return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]
