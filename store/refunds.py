"""Refunds in the database: admission against the capture, settlement, restock.

Every function here runs inside the caller's ``async with session.begin()``; raising rolls the
whole transaction back. Money and stock move only through conditional statements whose
``RETURNING`` row says whether they applied (never ``rowcount``: psycopg reports -1 for
``INSERT ... ON CONFLICT DO NOTHING``), so a retry, a repeat or a racing caller cannot move
anything twice:

* ``admit``        inserts the refund (PENDING, keyed by order and Idempotency-Key) and moves
                   ``payments.refund_committed_cents`` up by its amount with one UPDATE that
                   applies only while the total stays within ``captured_cents``. Two refunds
                   racing for the last cents serialise on the payments row; the loser's UPDATE
                   matches nothing and its refund row goes with the rollback.
* ``mark_failed``  PENDING -> FAILED and the committed amount given back, together.
* ``mark_succeeded`` PENDING -> SUCCEEDED and ``payments.refunded_cents`` up, together.
* ``restock``      one fence row per (refund, sku) in ``reservations`` (order id
                   ``refund:<refund_id>``, state RETURNED) and, only when it was inserted,
                   the units moved ``sold -> available`` and taken off the order's CONFIRMED
                   fence row, so the stock check's "sold == CONFIRMED units" keeps holding
                   and an order can never give back more than it still has sold.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from domain.messages import RefundView, RestockLine
from domain.status import ReservationState
from store.models import Payment, Refund, Reservation, Stock, utcnow_iso
from store.sql import insert_ignore

RF: Table = Refund.__table__  # type: ignore[attr-defined]
PAY: Table = Payment.__table__  # type: ignore[attr-defined]
R: Table = Reservation.__table__  # type: ignore[attr-defined]
S: Table = Stock.__table__  # type: ignore[attr-defined]

PENDING = "PENDING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"


def restock_fence_id(refund_id: str) -> str:
    """The ``reservations.order_id`` under which a refund's restock is fenced."""
    return f"refund:{refund_id}"


# ------------------------------------------------------------------------------ errors


class NotRefundable(Exception):
    """Nothing has been captured on the order (yet): there is nothing to refund."""


class RefundExceedsCaptured(Exception):
    def __init__(self, *, amount_cents: int, refundable_cents: int) -> None:
        super().__init__(
            f"cannot refund {amount_cents}: only {refundable_cents} of the capture is left"
        )
        self.amount_cents = amount_cents
        self.refundable_cents = refundable_cents


class IdempotencyKeyReused(Exception):
    def __init__(self, refund_id: str) -> None:
        super().__init__(f"this Idempotency-Key made refund {refund_id} with another body")
        self.refund_id = refund_id


class RestockExceedsOrdered(Exception):
    def __init__(self, *, sku: str, asked: int, left: int) -> None:
        super().__init__(
            f"cannot restock {asked} of {sku}: {left} ordered units are not already being"
            " restocked by other refunds"
        )
        self.sku = sku
        self.asked = asked
        self.left = left


class LedgerInconsistent(Exception):
    """A refund's status moved but the payments row refused the matching money change: the
    cap or the capture was changed behind tradeflow's back. Never papered over."""


# ------------------------------------------------------------------------------- views


def view_of(row: Any) -> RefundView:
    """A ``refunds`` row (mapping) as the ``Refund`` resource."""
    return RefundView(
        refund_id=row["refund_id"],
        order_id=row["order_id"],
        amount_cents=int(row["amount_cents"]),
        currency=row["currency"],
        status=row["status"],
        reason=row["reason"],
        restock=[RestockLine(str(i["sku"]), int(i["quantity"])) for i in row["restock"] or []],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        failure_reason=row["failure_reason"],
    )


async def get(s: AsyncSession, *, refund_id: str) -> RefundView | None:
    row = (await s.execute(select(RF).where(RF.c.refund_id == refund_id))).mappings().first()
    return None if row is None else view_of(row)


async def of_orders(s: AsyncSession, order_ids: list[str]) -> dict[str, list[RefundView]]:
    """order_id -> its refunds, oldest first (orders without refunds are left out)."""
    out: dict[str, list[RefundView]] = defaultdict(list)
    if not order_ids:
        return out
    rows = await s.execute(
        select(RF)
        .where(RF.c.order_id.in_(order_ids))
        .order_by(RF.c.order_id, RF.c.created_at, RF.c.refund_id)
    )
    for row in rows.mappings().all():
        out[row["order_id"]].append(view_of(row))
    return out


# --------------------------------------------------------------------------- admission


@dataclass(frozen=True)
class Admitted:
    created: bool
    """False when the request repeated an earlier one (same order, key and body)."""
    refund: RefundView
    payment_id: str | None
    """The PSP intent the money goes back through."""


async def admit(
    s: AsyncSession,
    *,
    refund_id: str,
    order_id: str,
    idempotency_key: str,
    request_hash: str,
    amount_cents: int,
    currency: str,
    reason: str,
    restock: list[RestockLine],
    ordered: dict[str, int],
) -> Admitted:
    """Store the refund and commit its amount against the capture, or refuse; atomically.

    ``ordered`` is sku -> quantity of the order's lines: restocks of one order's refunds
    (those not FAILED) together never ask for more than was ordered.
    """
    if amount_cents <= 0:
        raise ValueError("amount_cents must be > 0")
    now = utcnow_iso()
    inserted = await s.execute(
        insert_ignore(
            s,
            RF,
            {
                "refund_id": refund_id,
                "order_id": order_id,
                "idempotency_key": idempotency_key,
                "request_hash": request_hash,
                "amount_cents": amount_cents,
                "currency": currency,
                "reason": reason,
                "restock": [{"sku": li.sku, "quantity": li.quantity} for li in restock],
                "status": PENDING,
                "failure_reason": None,
                "psp_refund_id": None,
                "created_at": now,
                "updated_at": now,
            },
        )
    )
    if inserted.first() is None:
        return await _repeat(s, order_id, idempotency_key, request_hash)

    c = PAY.c
    moved = await s.execute(
        update(PAY)
        .where(
            (c.order_id == order_id)
            & (c.captured_cents > 0)
            # Compared as what is left, never as a sum: committed + amount can exceed INT4
            # (PostgreSQL would raise "integer out of range" instead of refusing).
            & (c.captured_cents - c.refund_committed_cents >= amount_cents)
        )
        .values(refund_committed_cents=c.refund_committed_cents + amount_cents, updated_at=now)
        .returning(c.payment_id)
    )
    row = moved.first()
    if row is None:
        payment = (
            await s.execute(
                select(c.captured_cents, c.refund_committed_cents).where(c.order_id == order_id)
            )
        ).first()
        if payment is None or payment[0] <= 0:
            raise NotRefundable(f"nothing has been captured on order {order_id}")
        raise RefundExceedsCaptured(
            amount_cents=amount_cents, refundable_cents=int(payment[0]) - int(payment[1])
        )
    if restock:
        # After the UPDATE above: on PostgreSQL it holds the payments row lock, so refunds of
        # this order are admitted one at a time and this read sees every one admitted before.
        await _check_restock(s, order_id, refund_id, restock, ordered)
    refund = await get(s, refund_id=refund_id)
    assert refund is not None
    return Admitted(created=True, refund=refund, payment_id=row[0])


async def repeat_of(
    s: AsyncSession, *, order_id: str, idempotency_key: str, request_hash: str
) -> Admitted | None:
    """The refund an earlier request with this key stored, or None; raises
    ``IdempotencyKeyReused`` when that request had another body."""
    row = (
        (
            await s.execute(
                select(RF.c.refund_id).where(
                    (RF.c.order_id == order_id) & (RF.c.idempotency_key == idempotency_key)
                )
            )
        )
        .scalars()
        .first()
    )
    if row is None:
        return None
    return await _repeat(s, order_id, idempotency_key, request_hash)


async def _repeat(s: AsyncSession, order_id: str, key: str, request_hash: str) -> Admitted:
    row = (
        (
            await s.execute(
                select(RF).where((RF.c.order_id == order_id) & (RF.c.idempotency_key == key))
            )
        )
        .mappings()
        .first()
    )
    if row is None:  # pragma: no cover - the conflicting row cannot vanish in the transaction
        raise LedgerInconsistent(f"refund with key {key!r} of order {order_id} disappeared")
    if row["request_hash"] != request_hash:
        raise IdempotencyKeyReused(row["refund_id"])
    payment_id = (
        await s.execute(select(PAY.c.payment_id).where(PAY.c.order_id == order_id))
    ).scalar()
    return Admitted(created=False, refund=view_of(row), payment_id=payment_id)


async def _check_restock(
    s: AsyncSession,
    order_id: str,
    refund_id: str,
    restock: list[RestockLine],
    ordered: dict[str, int],
) -> None:
    others = await s.execute(
        select(RF.c.restock).where(
            (RF.c.order_id == order_id) & (RF.c.refund_id != refund_id) & (RF.c.status != FAILED)
        )
    )
    taken: dict[str, int] = defaultdict(int)
    for (items,) in others.all():
        for item in items or []:
            taken[str(item["sku"])] += int(item["quantity"])
    for li in restock:
        left = ordered.get(li.sku, 0) - taken[li.sku]
        if li.quantity > left:
            raise RestockExceedsOrdered(sku=li.sku, asked=li.quantity, left=max(left, 0))


# -------------------------------------------------------------------------- settlement


async def _move_status(
    s: AsyncSession, refund_id: str, to: str, **values: Any
) -> tuple[str, int] | None:
    """PENDING -> ``to``; (order_id, amount) when this call moved it, else None."""
    row = (
        await s.execute(
            update(RF)
            .where((RF.c.refund_id == refund_id) & (RF.c.status == PENDING))
            .values(status=to, updated_at=utcnow_iso(), **values)
            .returning(RF.c.order_id, RF.c.amount_cents)
        )
    ).first()
    return None if row is None else (str(row[0]), int(row[1]))


async def mark_failed(s: AsyncSession, *, refund_id: str, failure_reason: str) -> RefundView:
    """PENDING -> FAILED and its amount released from the cap, once; a repeat is a no-op."""
    moved = await _move_status(s, refund_id, FAILED, failure_reason=failure_reason[:200])
    if moved is not None:
        order_id, amount = moved
        c = PAY.c
        released = await s.execute(
            update(PAY)
            .where((c.order_id == order_id) & (c.refund_committed_cents >= amount))
            .values(
                refund_committed_cents=c.refund_committed_cents - amount, updated_at=utcnow_iso()
            )
            .returning(c.order_id)
        )
        if released.first() is None:
            raise LedgerInconsistent(
                f"refund {refund_id}: payments of {order_id} hold less than {amount} committed"
            )
    return await _required(s, refund_id)


async def mark_succeeded(s: AsyncSession, *, refund_id: str, psp_refund_id: str) -> RefundView:
    """PENDING -> SUCCEEDED and ``payments.refunded_cents`` up, once; a repeat is a no-op."""
    moved = await _move_status(s, refund_id, SUCCEEDED, psp_refund_id=psp_refund_id)
    if moved is not None:
        order_id, amount = moved
        c = PAY.c
        booked = await s.execute(
            update(PAY)
            .where(
                (c.order_id == order_id)
                & (c.refunded_cents + amount <= c.refund_committed_cents)
                & (c.refunded_cents + amount <= c.captured_cents)
            )
            .values(refunded_cents=c.refunded_cents + amount, updated_at=utcnow_iso())
            .returning(c.order_id)
        )
        if booked.first() is None:
            raise LedgerInconsistent(
                f"refund {refund_id}: refunding {amount} more would pass what order {order_id}"
                " committed or captured"
            )
    return await _required(s, refund_id)


async def _required(s: AsyncSession, refund_id: str) -> RefundView:
    refund = await get(s, refund_id=refund_id)
    if refund is None:
        raise LookupError(f"no refund {refund_id}")
    return refund


# ----------------------------------------------------------------------------- restock


class Restocked(StrEnum):
    RETURNED = "RETURNED"
    """This call put the units back on sale."""
    ALREADY = "ALREADY"
    """An earlier call for this (refund, sku) did; nothing moved."""


class RestockRefused(Exception):
    """The order has fewer units of the SKU still sold than the refund gives back (earlier
    refunds or a compensation returned them). Raised before the transaction commits, so the
    fence row goes with the rollback and nothing is recorded."""

    def __init__(self, *, sku: str, quantity: int) -> None:
        super().__init__(f"order has fewer than {quantity} units of {sku} still sold")
        self.sku = sku
        self.quantity = quantity


async def restock(
    s: AsyncSession,
    *,
    refund_id: str,
    order_id: str,
    location_id: str,
    sku: str,
    quantity: int,
) -> Restocked:
    """Put ``quantity`` units of a refunded line back on sale, exactly once per (refund, sku).

    Raises ``RestockRefused`` when the order has fewer units still sold: run it in its own
    transaction so the refusal rolls the fence row back.
    """
    if quantity < 1:
        raise ValueError("quantity must be >= 1")
    now = utcnow_iso()
    fenced = await s.execute(
        insert_ignore(
            s,
            R,
            {
                "order_id": restock_fence_id(refund_id),
                "location_id": location_id,
                "sku": sku,
                "quantity": quantity,
                "state": ReservationState.RETURNED.value,
                "created_at": now,
                "updated_at": now,
            },
        )
    )
    if fenced.first() is None:
        return Restocked.ALREADY
    # The order's own branch gives the units up: it is what stock checks count as sold.
    taken = await s.execute(
        update(R)
        .where(
            (R.c.order_id == order_id)
            & (R.c.location_id == location_id)
            & (R.c.sku == sku)
            & (R.c.state == ReservationState.CONFIRMED.value)
            & (R.c.quantity >= quantity)
        )
        .values(quantity=R.c.quantity - quantity, updated_at=now)
        .returning(R.c.sku)
    )
    if taken.first() is None:
        raise RestockRefused(sku=sku, quantity=quantity)
    moved = await s.execute(
        update(S)
        .where((S.c.location_id == location_id) & (S.c.sku == sku) & (S.c.sold >= quantity))
        .values(available=S.c.available + quantity, sold=S.c.sold - quantity, updated_at=now)
        .returning(S.c.sku)
    )
    if moved.first() is None:
        raise RestockRefused(sku=sku, quantity=quantity)
    return Restocked.RETURNED


async def pending_cents(s: AsyncSession, *, order_ids: list[str] | None) -> dict[str, int]:
    """order_id -> the cents of its refunds still PENDING (every order, or ``order_ids``)."""
    stmt = select(RF.c.order_id, func.sum(RF.c.amount_cents)).where(RF.c.status == PENDING)
    if order_ids is not None:
        stmt = stmt.where(RF.c.order_id.in_(order_ids))
    rows = (await s.execute(stmt.group_by(RF.c.order_id))).all()
    return {o: int(n or 0) for o, n in rows}
