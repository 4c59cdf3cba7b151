"""Stock conservation, proved from the ledger (``tradeflow check stock``).

For every location and SKU, from one consistent DB snapshot:

* ``available + reserved + sold == stocked``, and none of them is negative;
* ``reserved`` is the sum of the TRIED fence rows, ``sold`` the sum of the CONFIRMED ones
  (a RETURNED row moved its units from sold back to available, a CANCELLED one from
  reserved back to available; neither counts);
* every TRIED or CONFIRMED fence row has its stock row;
* no TRIED reservation belongs to an order the read model says has ended;

and, when Redis is given, that every hot counter equals what the DB says it must be
(``HotStock.sync``: DB available minus the live claims whose DB try is not in yet).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.status import TERMINAL_STATUSES, ReservationState
from store import inventory as ledger
from store.models import Order, Reservation, Stock

R: Table = Reservation.__table__  # type: ignore[attr-defined]
S: Table = Stock.__table__  # type: ignore[attr-defined]
ORD: Table = Order.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Violation:
    rule: str
    """conservation, negative, reserved, sold, orphan_fence, terminal_order, hot_counter."""
    location_id: str
    sku: str
    message: str
    order_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.location_id}/{self.sku}" + (
            f" order {self.order_id}" if self.order_id else ""
        )
        return f"[{self.rule}] {where}: {self.message}"


@dataclass
class StockReport:
    stock_rows: int = 0
    locations: int = 0
    skus: int = 0
    fence_rows: int = 0
    hot_counters: int | None = None
    """Hot counters compared with the DB; None when Redis was not checked."""
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Not violations, worth knowing (a hot counter not loaded yet...)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        text = (
            f"{self.stock_rows} stock rows ({self.locations} locations, {self.skus} SKUs),"
            f" {self.fence_rows} reservations"
        )
        if self.hot_counters is not None:
            text += f", {self.hot_counters} hot counters"
        return text


async def check_ledger(s: AsyncSession) -> StockReport:
    """The DB invariants, read in the session's transaction (begin a snapshot first)."""
    report = StockReport()
    stock = (
        await s.execute(
            select(S.c.location_id, S.c.sku, S.c.available, S.c.reserved, S.c.sold, S.c.stocked)
        )
    ).all()
    sums: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    fence_rows = 0
    for loc, sku, state, qty, n in (
        await s.execute(
            select(
                R.c.location_id, R.c.sku, R.c.state, func.sum(R.c.quantity), func.count()
            ).group_by(R.c.location_id, R.c.sku, R.c.state)
        )
    ).all():
        sums[(loc, sku)][state] = int(qty or 0)
        fence_rows += int(n)
    report.stock_rows = len(stock)
    report.locations = len({r[0] for r in stock})
    report.skus = len({r[1] for r in stock})
    report.fence_rows = fence_rows

    bad = report.violations
    seen = set()
    for loc, sku, available, reserved, sold, stocked in stock:
        seen.add((loc, sku))
        negative = [
            f"{name} {value}"
            for name, value in (
                ("available", available),
                ("reserved", reserved),
                ("sold", sold),
                ("stocked", stocked),
            )
            if value < 0
        ]
        if negative:
            bad.append(Violation("negative", loc, sku, "negative " + ", ".join(negative)))
        if available + reserved + sold != stocked:
            bad.append(
                Violation(
                    "conservation",
                    loc,
                    sku,
                    f"available {available} + reserved {reserved} + sold {sold}"
                    f" = {available + reserved + sold}, but stocked is {stocked}",
                )
            )
        tried = sums[(loc, sku)].get(ReservationState.TRIED, 0)
        confirmed = sums[(loc, sku)].get(ReservationState.CONFIRMED, 0)
        if reserved != tried:
            bad.append(
                Violation(
                    "reserved",
                    loc,
                    sku,
                    f"reserved is {reserved}, but TRIED reservations hold {tried}",
                )
            )
        if sold != confirmed:
            bad.append(
                Violation(
                    "sold", loc, sku, f"sold is {sold}, but CONFIRMED reservations hold {confirmed}"
                )
            )
    for (loc, sku), by_state in sorted(sums.items()):
        held = by_state.get(ReservationState.TRIED, 0) + by_state.get(ReservationState.CONFIRMED, 0)
        if (loc, sku) not in seen and held:
            bad.append(
                Violation(
                    "orphan_fence", loc, sku, f"reservations hold {held} units but no stock row"
                )
            )

    stranded = await s.execute(
        select(R.c.order_id, R.c.location_id, R.c.sku, R.c.quantity, ORD.c.status)
        .join(ORD, ORD.c.order_id == R.c.order_id)
        .where(
            (R.c.state == ReservationState.TRIED.value)
            & ORD.c.status.in_([st.value for st in TERMINAL_STATUSES])
        )
        .order_by(R.c.location_id, R.c.sku, R.c.order_id)
    )
    for order_id, loc, sku, qty, status in stranded.all():
        bad.append(
            Violation(
                "terminal_order",
                loc,
                sku,
                f"{qty} units still reserved (TRIED) for an order that is {status}",
                order_id=order_id,
            )
        )
    return report


async def check_stock(
    sessionmaker: async_sessionmaker[AsyncSession], *, redis: aioredis.Redis | None = None
) -> StockReport:
    """Every invariant above; Redis hot counters too when ``redis`` is given."""
    async with sessionmaker() as s:
        await ledger.begin_snapshot(s)
        report = await check_ledger(s)
    if redis is not None:
        # The Redis side lives with the flash-sale scripts; imported here so that the rest
        # of store/ never depends on activities/.
        from activities.hot_stock import verify_hot_counters

        states = await verify_hot_counters(sessionmaker, redis)
        report.hot_counters = len(states)
        for st in states:
            if st.counter is None:
                report.notes.append(
                    f"{st.describe()} (hot orders take the DB path until it is loaded)"
                )
            elif not st.matches:
                report.violations.append(
                    Violation("hot_counter", st.location_id, st.sku, st.describe())
                )
            if st.leaked:
                report.violations.append(
                    Violation(
                        "hot_counter",
                        st.location_id,
                        st.sku,
                        f"{st.leaked} live claims belong to ended orders with no reservation",
                    )
                )
    return report
