"""The inventory ledger as a TCC participant.

Every branch (order, location, sku) has one fence row in ``reservations``, written in the same
transaction as the stock change it guards, as Seata's tcc_fence_log and DTM's barrier do:

* try      inserts the fence (TRIED) and moves ``available -> reserved`` with one conditional
           UPDATE; not enough stock rolls the whole transaction back, fence row included. On
           PostgreSQL both are one autocommit call of a PL/pgSQL function (migration 0009):
           one round trip, its RAISE on out-of-stock rolling the fence row back.
* confirm  TRIED -> CONFIRMED and ``reserved -> sold``; a repeat is a no-op.
* cancel   TRIED -> CANCELLED and ``reserved -> available``; with no fence row it records an
           empty rollback (CANCELLED, quantity 0) so a try arriving later is refused.
* return   CONFIRMED -> RETURNED and ``sold -> available`` (compensation after confirm).

Each state change is a conditional UPDATE on the fence row, so two racing callers cannot both
move stock: exactly one gets its row back from RETURNING.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from domain.status import TERMINAL_STATUSES, ReservationState
from store.db import engine_of
from store.models import Order, Product, Reservation, Stock, utcnow_iso
from store.sql import dialect_insert, insert_ignore

R: Table = Reservation.__table__  # type: ignore[attr-defined]
S: Table = Stock.__table__  # type: ignore[attr-defined]
P: Table = Product.__table__  # type: ignore[attr-defined]
ORD: Table = Order.__table__  # type: ignore[attr-defined]


class OutOfStock(Exception):
    pass


class FenceRefused(Exception):
    """The fence forbids this call (try after cancel, confirm after cancel, cancel after confirm...)."""

    def __init__(self, message: str, *, state: str | None) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class BranchOutcome:
    state: str
    changed: bool


def _key(order_id: str, location_id: str, sku: str):  # type: ignore[no-untyped-def]
    return (R.c.order_id == order_id) & (R.c.location_id == location_id) & (R.c.sku == sku)


async def _fence_row(
    s: AsyncSession, order_id: str, location_id: str, sku: str
) -> tuple[str, int] | None:
    row = (
        await s.execute(select(R.c.state, R.c.quantity).where(_key(order_id, location_id, sku)))
    ).first()
    return (row[0], row[1]) if row else None


async def _fence_state(s: AsyncSession, order_id: str, location_id: str, sku: str) -> str | None:
    existing = await _fence_row(s, order_id, location_id, sku)
    return existing[0] if existing else None


@dataclass(frozen=True)
class _Step:
    """A fence transition and the stock columns its quantity moves between (the table above)."""

    frm: ReservationState
    to: ReservationState
    take: str
    put: str


_CONFIRM = _Step(ReservationState.TRIED, ReservationState.CONFIRMED, take="reserved", put="sold")
_CANCEL = _Step(
    ReservationState.TRIED, ReservationState.CANCELLED, take="reserved", put="available"
)
_RETURN = _Step(ReservationState.CONFIRMED, ReservationState.RETURNED, take="sold", put="available")


async def _move(
    s: AsyncSession, order_id: str, location_id: str, sku: str, step: _Step, now: str | None = None
) -> bool:
    """Move the fence from ``step.frm`` to ``step.to`` and, if this call moved it, its quantity
    from stock column ``step.take`` to ``step.put`` (same transaction). False: not moved."""
    res = await s.execute(
        update(R)
        .where(_key(order_id, location_id, sku) & (R.c.state == step.frm.value))
        .values(state=step.to.value, updated_at=utcnow_iso())
        .returning(R.c.quantity)
    )
    row = res.first()
    if row is None:
        return False
    qty = row[0]
    await s.execute(
        update(S)
        .where((S.c.location_id == location_id) & (S.c.sku == sku))
        .values(
            {
                step.take: S.c[step.take] - qty,
                step.put: S.c[step.put] + qty,
                "updated_at": now or utcnow_iso(),
            }
        )
    )
    return True


async def try_reserve(
    sessions: async_sessionmaker[Any],
    *,
    order_id: str,
    location_id: str,
    sku: str,
    quantity: int,
) -> BranchOutcome:
    """The try in a transaction of its own; not enough stock rolls the fence row back too.

    PostgreSQL: one autocommit call of ``tradeflow_try_reserve`` (migration 0009), one round
    trip. SQLite: the fence insert and the conditional update in one transaction.
    """
    if quantity < 1:
        raise ValueError("quantity must be >= 1")
    now = utcnow_iso()
    engine = engine_of(sessions)
    if engine.dialect.name == "postgresql":
        found = await _try_in_one_call(engine, (order_id, location_id, sku, quantity, now))
        if found is None:
            return BranchOutcome(state=ReservationState.TRIED, changed=True)
        return _repeat_outcome(found or None)
    async with sessions() as s:
        async with s.begin():
            fenced = (
                await s.execute(
                    insert_ignore(
                        s,
                        R,
                        dict(
                            order_id=order_id,
                            location_id=location_id,
                            sku=sku,
                            quantity=quantity,
                            state=ReservationState.TRIED.value,
                            created_at=now,
                            updated_at=now,
                        ),
                    )
                )
            ).first() is not None
            if not fenced:
                return _repeat_outcome(await _fence_state(s, order_id, location_id, sku))
            take = (
                update(S)
                .where(
                    (S.c.location_id == location_id)
                    & (S.c.sku == sku)
                    & (S.c.available >= quantity)
                )
                .values(
                    available=S.c.available - quantity,
                    reserved=S.c.reserved + quantity,
                    updated_at=now,
                )
                .returning(S.c.sku)
            )
            if (await s.execute(take)).first() is None:
                raise OutOfStock(f"{sku} at {location_id}: fewer than {quantity} available")
    return BranchOutcome(state=ReservationState.TRIED, changed=True)


def _repeat_outcome(state: str | None) -> BranchOutcome:
    """The try found the branch's fence row already there: a repeat, or refused."""
    if state in (ReservationState.TRIED, ReservationState.CONFIRMED):
        return BranchOutcome(state=state, changed=False)
    raise FenceRefused(f"try refused: branch already {state} (anti-hanging)", state=state)


_TRY_CALL = "SELECT tradeflow_try_reserve(%s, %s, %s, %s, %s)"
_OUT_OF_STOCK_SQLSTATE = "TF001"  # raised by the function (migration 0009)


async def _try_in_one_call(engine: AsyncEngine, args: tuple[str, str, str, int, str]) -> str | None:
    """None if this call inserted the fence and moved the stock; else the state of the fence
    row it found ('' if none). Raises OutOfStock (the function's RAISE rolled the fence back).

    The function inserts the fence (ON CONFLICT DO NOTHING) and moves stock only if it did:
    a racing repeat of the same branch waits on the fence's unique index for the first
    call's commit, then inserts nothing and moves nothing. Racing orders for the same stock
    row queue on its row lock and re-check ``available`` on the version they get. The call
    runs in autocommit (no BEGIN, no COMMIT round trip) as a driver-level statement (no
    compilation); psycopg prepares it after a few calls.
    """
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            found = (await conn.exec_driver_sql(_TRY_CALL, args)).scalar()
        except DBAPIError as e:
            if getattr(e.orig, "sqlstate", None) == _OUT_OF_STOCK_SQLSTATE:
                raise OutOfStock(f"{args[2]} at {args[1]}: fewer than {args[3]} available") from e
            raise
    return None if found is None else str(found)


async def confirm(s: AsyncSession, *, order_id: str, location_id: str, sku: str) -> BranchOutcome:
    if await _move(s, order_id, location_id, sku, _CONFIRM):
        return BranchOutcome(state=ReservationState.CONFIRMED, changed=True)
    state = await _fence_state(s, order_id, location_id, sku)
    if state == ReservationState.CONFIRMED:
        return BranchOutcome(state=state, changed=False)
    raise FenceRefused(f"confirm refused: branch is {state or 'not tried'}", state=state)


async def cancel(s: AsyncSession, *, order_id: str, location_id: str, sku: str) -> BranchOutcome:
    now = utcnow_iso()
    # Empty rollback: no try ever landed. Record the cancel so a late try is refused.
    inserted = await s.execute(
        insert_ignore(
            s,
            R,
            dict(
                order_id=order_id,
                location_id=location_id,
                sku=sku,
                quantity=0,
                state=ReservationState.CANCELLED.value,
                created_at=now,
                updated_at=now,
            ),
        )
    )
    if inserted.first() is not None:
        return BranchOutcome(state=ReservationState.CANCELLED, changed=False)
    if await _move(s, order_id, location_id, sku, _CANCEL, now):
        return BranchOutcome(state=ReservationState.CANCELLED, changed=True)
    state = await _fence_state(s, order_id, location_id, sku)
    if state in (ReservationState.CANCELLED, ReservationState.RETURNED):
        return BranchOutcome(state=state, changed=False)
    raise FenceRefused(f"cancel refused: branch is {state}", state=state)


async def return_stock(
    s: AsyncSession, *, order_id: str, location_id: str, sku: str
) -> BranchOutcome:
    """Undo a confirmed branch (sold -> available). On a branch never confirmed, acts as cancel."""
    if await _move(s, order_id, location_id, sku, _RETURN):
        return BranchOutcome(state=ReservationState.RETURNED, changed=True)
    if await _fence_state(s, order_id, location_id, sku) == ReservationState.RETURNED:
        return BranchOutcome(state=ReservationState.RETURNED, changed=False)
    return await cancel(s, order_id=order_id, location_id=location_id, sku=sku)


# ------------------------------------------------------------------------ the admin's


async def get_stock(s: AsyncSession, *, sku: str, location_id: str) -> Stock | None:
    return await s.get(Stock, (location_id, sku))


async def set_available(
    s: AsyncSession, *, sku: str, location_id: str, available: int
) -> dict[str, Any]:
    """Set the sellable quantity in one statement; reserved and sold stay as they are.

    ``stocked`` moves by the same delta as ``available``, so ``available + reserved + sold ==
    stocked`` keeps holding. The SET clause sees the row as it was before the statement.
    """
    ins = dialect_insert(s, S).values(
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
            "stocked": S.c.stocked + (ins.excluded.available - S.c.available),
            "available": ins.excluded.available,
            "updated_at": ins.excluded.updated_at,
        },
    ).returning(S)
    row = (await s.execute(stmt)).mappings().one()
    return dict(row)


# --------------------------------------------------------------------------------- reads
# Used by the flash-sale path (infra/hot_stock.py) and the stock check (cli/checks.py).
# None of them writes.


async def begin_snapshot(s: AsyncSession) -> None:
    """Make the session's transaction read one consistent snapshot. Call before its first
    statement. PostgreSQL needs REPEATABLE READ for that (READ COMMITTED takes a new snapshot
    per statement); a SQLite transaction already reads one snapshot."""
    if s.get_bind().dialect.name == "postgresql":
        await s.connection(execution_options={"isolation_level": "REPEATABLE READ"})


async def fence(
    s: AsyncSession, *, order_id: str, location_id: str, sku: str
) -> tuple[str, int] | None:
    """The branch's (state, quantity), or None when no try or cancel has been recorded."""
    return await _fence_row(s, order_id, location_id, sku)


async def stock_available(s: AsyncSession, *, location_id: str, sku: str) -> int | None:
    row = (
        await s.execute(
            select(S.c.available).where((S.c.location_id == location_id) & (S.c.sku == sku))
        )
    ).first()
    return int(row[0]) if row else None


async def hot_stock_keys(
    s: AsyncSession, *, sku: str | None = None, location_id: str | None = None
) -> list[tuple[str, str]]:
    """(location_id, sku) of every stock row whose product is on the flash-sale path."""
    stmt = (
        select(S.c.location_id, S.c.sku)
        .join(P, P.c.sku == S.c.sku)
        .where(P.c.hot.is_(True))
        .order_by(S.c.location_id, S.c.sku)
    )
    if sku is not None:
        stmt = stmt.where(S.c.sku == sku)
    if location_id is not None:
        stmt = stmt.where(S.c.location_id == location_id)
    return [(r[0], r[1]) for r in (await s.execute(stmt)).all()]


async def stock_locations(s: AsyncSession, *, sku: str) -> list[str]:
    rows = (await s.execute(select(S.c.location_id).where(S.c.sku == sku))).all()
    return [r[0] for r in rows]


_IN_CHUNK = 500


async def fence_states(
    s: AsyncSession, *, location_id: str, sku: str, order_ids: list[str]
) -> dict[str, tuple[str, int]]:
    """order_id -> (state, quantity) for those of ``order_ids`` that have a fence row."""
    out: dict[str, tuple[str, int]] = {}
    for i in range(0, len(order_ids), _IN_CHUNK):
        chunk = order_ids[i : i + _IN_CHUNK]
        rows = await s.execute(
            select(R.c.order_id, R.c.state, R.c.quantity).where(
                (R.c.location_id == location_id) & (R.c.sku == sku) & R.c.order_id.in_(chunk)
            )
        )
        out.update({r[0]: (r[1], r[2]) for r in rows.all()})
    return out


async def order_statuses(s: AsyncSession, order_ids: list[str]) -> dict[str, str]:
    """order_id -> status in the orders read model, for those that have a row."""
    out: dict[str, str] = {}
    for i in range(0, len(order_ids), _IN_CHUNK):
        chunk = order_ids[i : i + _IN_CHUNK]
        rows = await s.execute(
            select(ORD.c.order_id, ORD.c.status).where(ORD.c.order_id.in_(chunk))
        )
        out.update({r[0]: r[1] for r in rows.all()})
    return out


# ------------------------------------------------------------------- the stock check's


async def stock_levels(s: AsyncSession) -> list[tuple[str, str, int, int, int, int]]:
    """(location_id, sku, available, reserved, sold, stocked) of every stock row."""
    stmt = select(S.c.location_id, S.c.sku, S.c.available, S.c.reserved, S.c.sold, S.c.stocked)
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in (await s.execute(stmt)).all()]


async def fence_sums(s: AsyncSession) -> list[tuple[str, str, str, int, int]]:
    """(location_id, sku, state, units, rows) of the fence rows, per branch and state."""
    stmt = select(
        R.c.location_id, R.c.sku, R.c.state, func.sum(R.c.quantity), func.count()
    ).group_by(R.c.location_id, R.c.sku, R.c.state)
    rows = (await s.execute(stmt)).all()
    return [(r[0], r[1], r[2], int(r[3] or 0), int(r[4])) for r in rows]


async def tried_for_ended_orders(s: AsyncSession) -> list[tuple[str, str, str, int, str]]:
    """(order_id, location_id, sku, quantity, order status) of every TRIED reservation whose
    order the read model says has ended."""
    stmt = (
        select(R.c.order_id, R.c.location_id, R.c.sku, R.c.quantity, ORD.c.status)
        .join(ORD, ORD.c.order_id == R.c.order_id)
        .where(
            (R.c.state == ReservationState.TRIED.value)
            & ORD.c.status.in_([st.value for st in TERMINAL_STATUSES])
        )
        .order_by(R.c.location_id, R.c.sku, R.c.order_id)
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in (await s.execute(stmt)).all()]
