"""The checks behind ``tradeflow check``: stock conservation, proved from the ledger
(``tradeflow check stock``), and money conservation against the PSP (``tradeflow check
money``, further down). They read the database through ``store/`` and the PSP over HTTP.

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

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.status import TERMINAL_STATUSES, OrderStatus, PaymentStatus, ReservationState
from infra.hot_stock import verify_hot_counters
from store import inventory as ledger
from store import payments as payment_book
from store import refunds as refund_book

V = TypeVar("V")


@dataclass
class CheckReport(Generic[V]):
    """What a check found: the rules it saw broken (none: the check passed) and notes that are
    not violations but worth knowing (a hot counter not loaded yet...)."""

    violations: list[V] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        """What was checked."""
        raise NotImplementedError

    def problems(self) -> str:
        return f"{len(self.violations)} problems"


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
class StockReport(CheckReport[Violation]):
    stock_rows: int = 0
    locations: int = 0
    skus: int = 0
    fence_rows: int = 0
    hot_counters: int | None = None
    """Hot counters compared with the DB; None when Redis was not checked."""

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
    stock = await ledger.stock_levels(s)
    sums: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    fence_rows = 0
    for loc, sku, state, qty, n in await ledger.fence_sums(s):
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

    for order_id, loc, sku, qty, status in await ledger.tried_for_ended_orders(s):
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


# =============================================================================== money
#
# Money conservation, proved against the PSP (``tradeflow check money``).
#
# Per order with a ``payments`` row, tradeflow's record is reconciled with the PSP's ledger
# (``GET /v1/ledger``: authorize, capture, void and refund movements):
#
# * the ledger holds at most one authorize and at most one capture per order;
# * authorized_cents == sum(authorize) once tradeflow says the money is authorized/captured,
#   captured_cents == sum(capture), refunded_cents == sum(refund) (a PSP refund that
#   tradeflow has no record of is named as a refund made outside tradeflow);
# * a hold is never released twice: authorize >= capture + void, and a voided payment has
#   released all of it (void == authorize, nothing captured);
# * refunded <= captured <= authorized on both sides, and
#   refunded_cents <= refund_committed_cents <= captured_cents;
# * no order that ended without the sale (FAILED, CANCELLED) nor a DELIVERED one still holds
#   an authorization that was neither captured nor voided ("dangling authorization").
#
# A payment whose money call is in flight (status PENDING on a running order, or refunds
# still PENDING) may show a movement at the PSP that tradeflow has not recorded yet: that is
# a note, not a violation; run the check on a quiet system for a proof.

#: Payment statuses under which tradeflow has recorded an authorization.
_HOLDS_AUTHORIZATION = frozenset(
    {
        PaymentStatus.AUTHORIZED,
        PaymentStatus.CAPTURED,
        PaymentStatus.PARTIALLY_REFUNDED,
        PaymentStatus.REFUNDED,
        PaymentStatus.VOIDED,
    }
)
#: Orders that must not hold an open authorization once they are here.
_NO_OPEN_HOLD = frozenset({OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.DELIVERED})


@dataclass(frozen=True)
class MoneyViolation:
    rule: str
    """duplicate_authorize, duplicate_capture, authorized, captured, refunded,
    refund_outside_tradeflow, over_release, voided, order, committed, dangling_authorization,
    unknown_order."""
    order_id: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] order {self.order_id}: {self.message}"


@dataclass
class LedgerSums:
    authorized: int = 0
    captured: int = 0
    voided: int = 0
    refunded: int = 0
    authorizations: int = 0
    captures: int = 0
    entries: int = 0

    def add(self, kind: str, amount: int) -> None:
        self.entries += 1
        if kind == "authorize":
            self.authorized += amount
            self.authorizations += 1
        elif kind == "capture":
            self.captured += amount
            self.captures += 1
        elif kind == "void":
            self.voided += amount
        elif kind == "refund":
            self.refunded += amount
        else:
            raise ValueError(f"unknown ledger kind {kind!r}")

    @property
    def open_hold(self) -> int:
        """Authorized and neither captured nor released."""
        return self.authorized - self.captured - self.voided


@dataclass
class MoneyReport(CheckReport[MoneyViolation]):
    orders: int = 0
    ledger_entries: int = 0
    authorized_cents: int = 0
    captured_cents: int = 0
    refunded_cents: int = 0

    def summary(self) -> str:
        return (
            f"{self.orders} orders, {self.ledger_entries} PSP ledger entries; authorized"
            f" {self.authorized_cents}, captured {self.captured_cents}, refunded"
            f" {self.refunded_cents} cents"
        )

    def offenders(self) -> list[str]:
        return sorted({v.order_id for v in self.violations})

    def problems(self) -> str:
        return f"{len(self.violations)} problems on {len(self.offenders())} orders"


async def fetch_ledger(
    psp: httpx.AsyncClient, order_ids: list[str] | None = None, *, concurrency: int = 16
) -> dict[str, LedgerSums]:
    """order_id -> its ledger sums: the whole ledger in one read, or, for ``order_ids``, one
    read per order, ``concurrency`` at a time."""
    sums: dict[str, LedgerSums] = defaultdict(LedgerSums)

    async def read(order_id: str | None) -> list[dict[str, Any]]:
        params = {} if order_id is None else {"order_id": order_id}
        r = await psp.get("/v1/ledger", params=params)
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    if order_ids is None:
        pages = [await read(None)]
    else:
        gate = asyncio.Semaphore(concurrency)

        async def one(order_id: str) -> list[dict[str, Any]]:
            async with gate:
                return await read(order_id)

        pages = await asyncio.gather(*(one(o) for o in order_ids))
    for items in pages:
        for item in items:
            sums[str(item["order_id"])].add(str(item["kind"]), int(item["amount_cents"]))
    return sums


async def check_money(
    sessionmaker: async_sessionmaker[AsyncSession],
    psp: httpx.AsyncClient,
    *,
    order_ids: list[str] | None = None,
    concurrency: int = 16,
) -> MoneyReport:
    """Every invariant above, for every order with a payment (or only ``order_ids``).

    ``psp`` is an httpx client whose base URL is the PSP. The database is read first, in one
    snapshot, and the ledger after: a money call landing in between shows up as a PSP
    movement tradeflow has not recorded (a note while the order runs)."""
    async with sessionmaker() as s:
        await ledger.begin_snapshot(s)
        payments = await payment_book.with_order_status(s, order_ids=order_ids)
        pending_refunds = await refund_book.pending_cents(s, order_ids=order_ids)
    psp_sums = await fetch_ledger(psp, order_ids, concurrency=concurrency)

    report = MoneyReport(orders=len(payments))
    report.ledger_entries = sum(x.entries for x in psp_sums.values())
    bad = report.violations
    known: set[str] = set()
    for row in payments:
        order_id, status, amount, auth, cap, ref, committed, order_status = row
        known.add(order_id)
        report.authorized_cents += auth
        report.captured_cents += cap
        report.refunded_cents += ref
        led = psp_sums.get(order_id, LedgerSums())
        running = order_status is None or OrderStatus(order_status) not in TERMINAL_STATUSES
        in_flight = status == PaymentStatus.PENDING and running

        def fail(rule: str, message: str, order_id: str = order_id) -> None:
            bad.append(MoneyViolation(rule, order_id, message))

        if order_status is None:
            report.notes.append(f"order {order_id}: a payment but no order row")
        if led.authorizations > 1:
            fail("duplicate_authorize", f"the PSP ledger holds {led.authorizations} authorizations")
        if led.captures > 1:
            fail("duplicate_capture", f"the PSP ledger holds {led.captures} captures")

        # tradeflow's record against the PSP's movements.
        if status in _HOLDS_AUTHORIZATION and auth != led.authorized:
            fail(
                "authorized",
                f"tradeflow says {auth} authorized ({status}), the PSP authorized {led.authorized}",
            )
        elif status not in _HOLDS_AUTHORIZATION and led.authorized and in_flight:
            report.notes.append(
                f"order {order_id}: authorization of {led.authorized} in flight ({status})"
            )
        if cap != led.captured:
            if in_flight or (status == PaymentStatus.AUTHORIZED and running and cap == 0):
                report.notes.append(f"order {order_id}: capture of {led.captured} in flight")
            else:
                fail("captured", f"tradeflow says {cap} captured, the PSP captured {led.captured}")
        if ref != led.refunded:
            pending = pending_refunds.get(order_id, 0)
            extra = led.refunded - ref
            if 0 < extra <= pending:
                report.notes.append(
                    f"order {order_id}: {extra} refunded at the PSP by refunds still PENDING"
                )
            elif extra > 0:
                fail(
                    "refund_outside_tradeflow",
                    f"the PSP refunded {led.refunded} but tradeflow recorded {ref}"
                    + (f" (+{pending} pending)" if pending else "")
                    + f": {extra - pending} refunded outside tradeflow",
                )
            else:
                fail(
                    "refunded",
                    f"tradeflow says {ref} refunded, the PSP refunded only {led.refunded}",
                )

        # The hold: released at most once, and fully when voided.
        if led.open_hold < 0:
            fail(
                "over_release",
                f"the PSP captured {led.captured} and voided {led.voided} of an authorization"
                f" of {led.authorized}",
            )
        if status == PaymentStatus.VOIDED and (led.captured or led.voided != led.authorized):
            fail(
                "voided",
                f"voided in tradeflow, but the PSP voided {led.voided} of {led.authorized}"
                f" authorized and captured {led.captured}",
            )

        # Orders of the amounts, on both sides.
        for side, (r_, c_, a_) in (
            ("tradeflow", (ref, cap, auth)),
            ("PSP", (led.refunded, led.captured, led.authorized)),
        ):
            if min(r_, c_, a_) < 0 or not r_ <= c_ <= a_:
                fail(
                    "order",
                    f"{side}: refunded {r_} <= captured {c_} <= authorized {a_} does not hold",
                )
        if not ref <= committed <= cap:
            fail(
                "committed",
                f"refunded {ref} <= refund_committed {committed} <= captured {cap} does not hold",
            )

        if (
            order_status is not None
            and OrderStatus(order_status) in _NO_OPEN_HOLD
            and led.open_hold > 0
        ):
            fail(
                "dangling_authorization",
                f"the order is {order_status} but {led.open_hold} of its authorization is"
                " neither captured nor voided at the PSP",
            )
        if amount < auth:
            fail("authorized", f"authorized {auth} is more than the order's amount {amount}")

    for order_id in sorted(set(psp_sums) - known):
        led = psp_sums[order_id]
        bad.append(
            MoneyViolation(
                "unknown_order",
                order_id,
                f"{led.entries} PSP ledger movements (authorized {led.authorized}, captured"
                f" {led.captured}, refunded {led.refunded}) but tradeflow has no payment",
            )
        )
    return report
