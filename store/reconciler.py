"""Queries of the reconciler: PENDING rows nobody runs, finished orders that still hold a
courier or may hold an authorization, the terminal write of an order it fails, and its own
record of what it did (``reconciliations``).

Each write is one conditional statement, so a reconciler run racing the API, a workflow or
another run changes a row at most once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, Table, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.messages import CheckoutInput, RefundView
from domain.reconcile import Done
from domain.status import TERMINAL_STATUSES, OrderStatus, PaymentStatus
from store import refunds as book
from store.models import Courier, Order, OrderTimeline, Payment, Reconciliation, Refund
from store.orders import FINAL_SEQ, append_timeline, checkout_input_of
from store.sql import insert_ignore
from store.sweeper import iso_ago

ORD: Table = Order.__table__  # type: ignore[attr-defined]
T: Table = OrderTimeline.__table__  # type: ignore[attr-defined]
RF: Table = Refund.__table__  # type: ignore[attr-defined]
PAY: Table = Payment.__table__  # type: ignore[attr-defined]
C: Table = Courier.__table__  # type: ignore[attr-defined]
REC: Table = Reconciliation.__table__  # type: ignore[attr-defined]

"""The ``seq`` a failed orphan's row is written at: above any a workflow reaches (one per
transition), so a workflow a late retry started anyway cannot overwrite the outcome."""

#: A finished order's payment in one of these has had its money taken: a refund matter.
_CAPTURED = frozenset(
    {PaymentStatus.CAPTURED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)
#: Orders that ended without the sale: whatever the PSP still holds for them must go back.
_ENDED_UNSOLD = frozenset({OrderStatus.FAILED, OrderStatus.CANCELLED})


# ------------------------------------------------------------------------------- orders


@dataclass(frozen=True)
class PendingOrder:
    order_id: str
    location_id: str
    created_at: str
    items: list[dict[str, Any]]
    """The view's ``items`` (sku, quantity, unit_price_cents)."""
    checkout_input: CheckoutInput | None


async def pending_orders(s: AsyncSession, *, older_than_s: float, limit: int) -> list[PendingOrder]:
    """PENDING orders created more than ``older_than_s`` ago, oldest first."""
    rows = await s.execute(
        select(
            ORD.c.order_id, ORD.c.location_id, ORD.c.created_at, ORD.c.view, ORD.c.checkout_input
        )
        .where(
            (ORD.c.status == OrderStatus.PENDING.value) & (ORD.c.created_at < iso_ago(older_than_s))
        )
        .order_by(ORD.c.created_at, ORD.c.order_id)
        .limit(limit)
    )
    return [
        PendingOrder(
            order_id=r[0],
            location_id=r[1],
            created_at=r[2],
            items=list(r[3].get("items", [])),
            checkout_input=checkout_input_of(r[4]),
        )
        for r in rows.all()
    ]


async def pending_order_input(s: AsyncSession, *, order_id: str) -> CheckoutInput | None:
    """The stored input of an order still PENDING; None if it moved on or has none."""
    row = (
        await s.execute(
            select(ORD.c.checkout_input).where(
                (ORD.c.order_id == order_id) & (ORD.c.status == OrderStatus.PENDING.value)
            )
        )
    ).first()
    return None if row is None else checkout_input_of(row[0])


async def fail_pending_order(
    s: AsyncSession, *, order_id: str, failure_reason: str, at: str
) -> bool:
    """PENDING -> FAILED in the read model, its timeline included; True when this call did it.

    Compare-and-set on (status, seq): a workflow write landing in between wins, and this
    call changes nothing.
    """
    row = (
        await s.execute(
            select(ORD.c.view, ORD.c.seq).where(
                (ORD.c.order_id == order_id) & (ORD.c.status == OrderStatus.PENDING.value)
            )
        )
    ).first()
    if row is None:
        return False
    view: dict[str, Any] = dict(row[0])
    timeline = [*view.get("timeline", []), {"status": OrderStatus.FAILED.value, "at": at}]
    view.update(
        status=OrderStatus.FAILED.value,
        failure_reason=failure_reason,
        timeline=timeline,
        updated_at=at,
    )
    moved = await s.execute(
        update(ORD)
        .where(
            (ORD.c.order_id == order_id)
            & (ORD.c.status == OrderStatus.PENDING.value)
            & (ORD.c.seq == row[1])
        )
        .values(
            status=OrderStatus.FAILED.value,
            failure_reason=failure_reason,
            view=view,
            seq=FINAL_SEQ,
            updated_at=at,
        )
        .returning(ORD.c.order_id)
    )
    if moved.first() is None:
        return False
    await append_timeline(s, view)
    return True


# ------------------------------------------------------------------------------ refunds


@dataclass(frozen=True)
class PendingRefund:
    refund: RefundView
    location_id: str | None
    """The order's location; None when the order row is gone."""
    payment_id: str | None
    """The captured intent the money goes back through; None when unknown."""


def _pending_refunds_query() -> Any:
    return (
        select(RF, ORD.c.location_id, PAY.c.payment_id)
        .select_from(RF)
        .join(ORD, ORD.c.order_id == RF.c.order_id, isouter=True)
        .join(PAY, PAY.c.order_id == RF.c.order_id, isouter=True)
        .where(RF.c.status == book.PENDING)
    )


def _pending_refund(r: RowMapping) -> PendingRefund:
    return PendingRefund(book.view_of(r), location_id=r["location_id"], payment_id=r["payment_id"])


async def pending_refunds(
    s: AsyncSession, *, older_than_s: float, limit: int
) -> list[PendingRefund]:
    """PENDING refunds created more than ``older_than_s`` ago, oldest first."""
    rows = await s.execute(
        _pending_refunds_query()
        .where(RF.c.created_at < iso_ago(older_than_s))
        .order_by(RF.c.created_at, RF.c.refund_id)
        .limit(limit)
    )
    return [_pending_refund(r) for r in rows.mappings().all()]


async def pending_refund(s: AsyncSession, *, refund_id: str) -> PendingRefund | None:
    query = _pending_refunds_query().where(RF.c.refund_id == refund_id)
    row = (await s.execute(query)).mappings().first()
    return None if row is None else _pending_refund(row)


# --------------------------------------------------------------- finished orders' leftovers


async def finished_orders_to_check_at_psp(
    s: AsyncSession, *, older_than_s: float, limit: int
) -> list[str]:
    """Orders that ended without the sale more than ``older_than_s`` ago, have a payment the
    PSP has not captured, and whose intents the reconciler has not looked at yet.

    A VOIDED payment is looked at too (once): an authorization that lands after the order's
    void (a late attempt) leaves the row VOIDED and the money held."""
    done = exists().where(
        (REC.c.subject_id == ORD.c.order_id)
        & REC.c.action.in_([Done.AUTHORIZATION_VOIDED.value, Done.AUTHORIZATION_CHECKED.value])
    )
    rows = await s.execute(
        select(ORD.c.order_id)
        .join(PAY, PAY.c.order_id == ORD.c.order_id)
        .where(
            ORD.c.status.in_([st.value for st in _ENDED_UNSOLD])
            & PAY.c.status.not_in([st.value for st in _CAPTURED])
            & (ORD.c.updated_at < iso_ago(older_than_s))
            & ~done
        )
        .order_by(ORD.c.updated_at, ORD.c.order_id)
        .limit(limit)
    )
    return [r[0] for r in rows.all()]


async def couriers_on_finished_orders(
    s: AsyncSession, *, older_than_s: float, limit: int
) -> list[tuple[str, str]]:
    """(order_id, courier_id) of couriers still bound to an order that reached a terminal
    status more than ``older_than_s`` ago."""
    rows = await s.execute(
        select(C.c.current_order_id, C.c.courier_id)
        .join(ORD, ORD.c.order_id == C.c.current_order_id)
        .where(
            and_(
                ORD.c.status.in_([st.value for st in TERMINAL_STATUSES]),
                ORD.c.updated_at < iso_ago(older_than_s),
            )
        )
        .order_by(C.c.updated_at, C.c.courier_id)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows.all()]


# ------------------------------------------------------------------------------- record


async def record(s: AsyncSession, entries: list[tuple[str, str, str]], *, at: str) -> int:
    """(subject_id, action, detail) rows; a repeat of a (subject, action) keeps the first.
    How many were new."""
    new = 0
    for subject_id, action, detail in entries:
        res = await s.execute(
            insert_ignore(
                s, REC, dict(subject_id=subject_id, action=action, detail=detail[:500], at=at)
            )
        )
        new += res.first() is not None
    return new
