"""One frozen-ish dataclass in and one out for every workflow, activity, signal and update.

Fields with defaults can be added later without breaking histories already recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from domain.names import ORDER_WORKFLOW, REFUND_WORKFLOW, order_workflow_id, refund_workflow_id
from domain.status import (
    AuthorizationOutcome,
    CourierEventType,
    DeliveryStatus,
    FailureReason,
    MerchantEventType,
    NotificationStatus,
    OrderStatus,
    PaymentStatus,
    RefundStatus,
    ReservationState,
)

_FIELDS: dict[type, tuple[str, ...]] = {}


def as_plain(value: Any) -> Any:
    """``dataclasses.asdict`` without its deep copies, for the API's hot path: dataclasses
    become dicts and lists/tuples lists, recursively; every other value (str, int, float,
    bool, None, enums: immutable) is shared, not copied. Several times faster than ``asdict``
    on an ``OrderView``; the same JSON."""
    kind = type(value)
    names = _FIELDS.get(kind)
    if names is not None:
        return {name: as_plain(getattr(value, name)) for name in names}
    if kind in _LEAVES:
        return value
    if kind is list or kind is tuple:
        return [as_plain(v) for v in value]
    if kind is dict:
        return {k: as_plain(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        _FIELDS[kind] = tuple(f.name for f in fields(value))
        return as_plain(value)
    _LEAVES.add(kind)  # str, int, an enum...: shared as it is from now on
    return value


_LEAVES: set[type] = {str, int, float, bool, type(None)}


# --------------------------------------------------------------------------- order workflow

#: Margin on top of the payment timeout before a reservation that was never confirmed lapses.
RESERVATION_TTL_MARGIN_S = 120.0


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price_cents: int
    """Price snapshotted from the catalogue when the order was accepted."""
    hot: bool = False
    """Flash-sale SKU: reserved through the Redis pre-deduction before the database."""


@dataclass(frozen=True)
class DeliveryAddress:
    address: str
    lat: float
    lng: float


@dataclass(frozen=True)
class OrderTimeouts:
    payment_timeout_s: float = 900.0
    """How long an order waits in AWAITING_PAYMENT."""
    offer_timeout_s: float = 30.0
    """How long one courier has to accept an offer."""
    max_offers: int = 5
    """How many couriers are tried before the order fails with NO_COURIER."""
    reservation_ttl_s: float | None = None
    """How long stock may stay reserved without being confirmed; None means the payment
    timeout plus ``RESERVATION_TTL_MARGIN_S``. The order releases it on its own timer."""

    @property
    def effective_reservation_ttl_s(self) -> float:
        if self.reservation_ttl_s is not None:
            return self.reservation_ttl_s
        return self.payment_timeout_s + RESERVATION_TTL_MARGIN_S


@dataclass(frozen=True)
class CheckoutInput:
    order_id: str
    customer_id: str
    location_id: str
    currency: str
    lines: list[OrderLine]
    delivery: DeliveryAddress
    payment_token: str
    delivery_fee_cents: int
    created_at: str
    """RFC 3339 UTC time the API accepted the order."""
    timeouts: OrderTimeouts = field(default_factory=OrderTimeouts)
    dispatch_task_queue: str = "dispatch"
    notify_merchant: bool = False
    """Tell the merchant's webhook when the order is paid or cancelled (max effort)."""

    @property
    def total_cents(self) -> int:
        """What the customer pays: the lines at their snapshotted prices plus delivery."""
        return AmountsView.of(self.lines, self.delivery_fee_cents).total_cents


def checkout_total_cents(inp: CheckoutInput) -> int:
    """``inp.total_cents`` (kept for callers not moved to the property yet)."""
    return inp.total_cents


def checkout_summary(inp: CheckoutInput) -> str:
    """The order workflow's static summary in the Temporal UI (``order_start``)."""
    total = inp.total_cents
    return (
        f"Order {inp.order_id} for {inp.customer_id}: {len(inp.lines)} lines, "
        f"total {total // 100}.{total % 100:02d} {inp.currency}"
    )


@dataclass
class ItemView:
    sku: str
    quantity: int
    unit_price_cents: int


@dataclass
class AmountsView:
    subtotal_cents: int
    delivery_fee_cents: int
    total_cents: int
    authorized_cents: int = 0
    captured_cents: int = 0
    refunded_cents: int = 0

    @classmethod
    def of(cls, lines: Sequence[OrderLine], delivery_fee_cents: int) -> AmountsView:
        """An order's amounts before any money moved: the one place its total is summed."""
        subtotal = sum(li.unit_price_cents * li.quantity for li in lines)
        return cls(
            subtotal_cents=subtotal,
            delivery_fee_cents=delivery_fee_cents,
            total_cents=subtotal + delivery_fee_cents,
        )


@dataclass
class PaymentView:
    status: PaymentStatus = PaymentStatus.PENDING
    payment_id: str | None = None


@dataclass
class DeliveryView:
    status: DeliveryStatus = DeliveryStatus.NOT_STARTED
    offered_to: str | None = None
    courier_id: str | None = None


@dataclass
class TimelineEntry:
    status: OrderStatus
    at: str


@dataclass
class OrderView:
    """The ``Order`` resource of the REST contract, exactly as clients see it."""

    order_id: str
    workflow_id: str
    customer_id: str
    location_id: str
    status: OrderStatus
    failure_reason: FailureReason | None
    items: list[ItemView]
    currency: str
    amounts: AmountsView
    payment: PaymentView
    delivery: DeliveryView
    refunds: list[dict[str, object]]
    timeline: list[TimelineEntry]
    created_at: str
    updated_at: str

    @classmethod
    def placed(
        cls,
        *,
        order_id: str,
        customer_id: str,
        location_id: str,
        currency: str,
        lines: Sequence[OrderLine],
        delivery_fee_cents: int,
        at: str,
    ) -> OrderView:
        """The order as accepted at ``at``: PENDING, nothing authorized, nobody dispatched."""
        return cls(
            order_id=order_id,
            workflow_id=order_workflow_id(order_id),
            customer_id=customer_id,
            location_id=location_id,
            status=OrderStatus.PENDING,
            failure_reason=None,
            items=[ItemView(li.sku, li.quantity, li.unit_price_cents) for li in lines],
            currency=currency,
            amounts=AmountsView.of(lines, delivery_fee_cents),
            payment=PaymentView(),
            delivery=DeliveryView(),
            refunds=[],
            timeline=[TimelineEntry(OrderStatus.PENDING, at)],
            created_at=at,
            updated_at=at,
        )

    @property
    def dispatching(self) -> bool:
        """A courier is being looked for: the open offer lives in the delivery's query."""
        return self.delivery.status == DeliveryStatus.DISPATCHING

    def with_offer(self, dispatch: DeliveryState) -> OrderView:
        """This view with the open offer as the delivery workflow knows it. Deliveries started
        with ``quiet-dispatch`` do not tell the order of offers: while it dispatches, whoever
        reads it (the API, the tests) lays the delivery's state over."""
        if not self.dispatching or dispatch.status != DeliveryStatus.DISPATCHING:
            return self
        return replace(self, delivery=replace(self.delivery, offered_to=dispatch.offered_to))


@dataclass(frozen=True)
class RecordOrderInput:
    view: OrderView
    seq: int
    """Transition counter; the read model ignores a write older than the one it holds."""


@dataclass(frozen=True)
class CancelRequest:
    reason: str


@dataclass(frozen=True)
class CancelResult:
    accepted: bool
    status: OrderStatus


@dataclass(frozen=True)
class RepairRequest:
    """An operator resumes the compensations of an order parked in NEEDS_ATTENTION."""

    reason: str
    """Why the operator repairs it (what was fixed outside); kept in the workflow history."""
    operator: str = "operator"


@dataclass(frozen=True)
class RepairResult:
    status: OrderStatus
    """The order's status after the repair: its final outcome, or still NEEDS_ATTENTION."""
    remaining: list[str] = field(default_factory=list)
    """Compensations that still failed (empty when the repair completed)."""


@dataclass(frozen=True)
class CourierEvent:
    courier_id: str
    type: CourierEventType


@dataclass(frozen=True)
class CourierEventResult:
    accepted: bool
    status: OrderStatus | DeliveryStatus
    """The order's status (an event for the order) or the dispatch's (an answer to an offer)."""


@dataclass(frozen=True)
class DeliveryProgress:
    """Child delivery workflow -> order workflow: the dispatch state changed."""

    status: DeliveryStatus
    offered_to: str | None = None
    courier_id: str | None = None


# ------------------------------------------------------------------------- payment workflow


@dataclass(frozen=True)
class PaymentInput:
    order_id: str
    customer_id: str
    amount_cents: int
    currency: str
    token: str
    payment_timeout_s: float
    parent_workflow_id: str


@dataclass(frozen=True)
class PaymentResult:
    status: AuthorizationOutcome
    payment_id: str | None = None
    authorized_cents: int = 0
    detail: str | None = None


@dataclass(frozen=True)
class PaymentProgress:
    """Child payment workflow -> order workflow: the payment state changed."""

    status: PaymentStatus
    payment_id: str | None = None


@dataclass(frozen=True)
class PaymentOutcome:
    """Webhook -> payment workflow: the PSP's final word on an intent that required action."""

    event_id: str
    type: str
    """The PSP's event type as it sent it; the workflow acts on the ``PspEventType`` ones
    only (the API forwards no others)."""
    payment_id: str
    amount_cents: int


@dataclass(frozen=True)
class PaymentOutcomeResult:
    """The order's answer to the update ``payment_outcome``: it took the PSP's word."""

    accepted: bool
    status: OrderStatus


@dataclass(frozen=True)
class AbortPayment:
    reason: str


# ------------------------------------------------------------------------ delivery workflow


@dataclass(frozen=True)
class DeliveryInput:
    order_id: str
    location_id: str
    parent_workflow_id: str
    offer_timeout_s: float
    max_offers: int


@dataclass(frozen=True)
class DeliveryResult:
    status: DeliveryStatus
    """ASSIGNED or FAILED (no courier accepted within ``max_offers`` offers)."""
    courier_id: str | None = None
    offers_made: int = 0


@dataclass
class DeliveryState:
    status: DeliveryStatus = DeliveryStatus.DISPATCHING
    offered_to: str | None = None
    courier_id: str | None = None
    tried: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- activities


@dataclass(frozen=True)
class ReservationKey:
    """One TCC branch: (order, location, sku)."""

    order_id: str
    location_id: str
    sku: str
    quantity: int
    hot: bool = False
    """Take the flash-sale path (Redis claim first, database for the winners only)."""


@dataclass(frozen=True)
class ReservationResult:
    state: ReservationState
    """The branch's state after the call."""
    changed: bool
    """False when the call was a repeat (idempotent) or an empty rollback."""


@dataclass(frozen=True)
class AuthorizeInput:
    order_id: str
    amount_cents: int
    currency: str
    token: str
    idempotency_key: str


@dataclass(frozen=True)
class AuthorizeResult:
    status: PaymentStatus
    """AUTHORIZED, REQUIRES_ACTION or DECLINED."""
    payment_id: str
    authorized_cents: int = 0
    detail: str | None = None


@dataclass(frozen=True)
class CaptureInput:
    order_id: str
    payment_id: str
    amount_cents: int
    idempotency_key: str


@dataclass(frozen=True)
class CaptureResult:
    payment_id: str
    captured_cents: int


@dataclass(frozen=True)
class VoidInput:
    order_id: str
    payment_id: str | None
    """None when authorization never returned an id: the activity looks it up by order."""
    idempotency_key: str


@dataclass(frozen=True)
class VoidResult:
    payment_id: str | None
    voided: bool
    """False when there was nothing to void (no intent, or already captured/declined)."""


@dataclass(frozen=True)
class FindCourierInput:
    order_id: str
    location_id: str
    exclude: list[str]


@dataclass(frozen=True)
class CourierOffer:
    order_id: str
    courier_id: str


@dataclass(frozen=True)
class OfferResult:
    offered: bool
    """False when the courier was taken or went off shift between search and offer."""


@dataclass(frozen=True)
class DispatchRoute:
    """Where an order's matching happens: its store's zone and the live shard serving it."""

    zone: str | None
    """None: the store is unknown."""
    lat: float = 0.0
    lng: float = 0.0
    shard: str | None = None
    """None: no dispatch shard is live."""


@dataclass(frozen=True)
class MatchRequest:
    order_id: str
    zone: str
    lat: float
    lng: float
    exclude: list[str]
    """Couriers who declined the order or let its offer lapse."""


@dataclass(frozen=True)
class MatchResult:
    courier_id: str | None
    """The courier the zone matcher offered the order to (the offer is written), or None when
    none was found within the wait."""


@dataclass(frozen=True)
class FoundCourier:
    courier_id: str | None
    """The nearest free courier not yet tried, or None when nobody is free nearby."""


# --------------------------------------------------------------------------------- sweeper


@dataclass(frozen=True)
class SweepInput:
    ttl_s: float
    """A TRIED reservation older than this whose order no longer runs is released."""
    limit: int = 500
    """Most orders looked at in one sweep (the next sweep takes the rest)."""


@dataclass(frozen=True)
class StaleReservations:
    order_ids: list[str]
    """Orders holding TRIED reservations older than the TTL."""


@dataclass(frozen=True)
class ReleaseReport:
    released_orders: list[str]
    """Orders whose workflow is gone and whose held stock this sweep returned."""
    released_units: int
    still_running: list[str]
    """Orders still running: their own timer releases the stock, not the sweeper."""


@dataclass(frozen=True)
class SweepReport:
    examined: int
    released_orders: list[str]
    released_units: int
    still_running: int
    hot_counters_repaired: int = 0
    """Flash-sale counters that had drifted from the database and were set right."""


# ------------------------------------------------------------------- merchant notifications

#: Seconds to wait after each failed try before the next one (like Alipay's notify_url
#: schedule): 12 tries over about 25 hours, then tradeflow gives up and records it.
NOTIFY_BACKOFF_S: tuple[float, ...] = (15, 15, 30, 180, 600, 1200, 1800, 3600, 10800, 21600, 50400)


@dataclass(frozen=True)
class MerchantEvent:
    event_id: str
    """Stable per fact (``<order_id>.paid``): the merchant dedupes on it."""
    type: MerchantEventType
    order_id: str
    amount_cents: int
    currency: str
    occurred_at: str
    backoff_s: list[float] = field(default_factory=lambda: list(NOTIFY_BACKOFF_S))


@dataclass(frozen=True)
class NotifyAttempt:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    skipped: bool = False
    """No merchant URL is configured: nothing to deliver."""


@dataclass(frozen=True)
class NotificationOutcome:
    event_id: str
    order_id: str
    type: MerchantEventType
    status: NotificationStatus
    attempts: int
    last_error: str | None = None


# -------------------------------------------------------------------------- refund workflow


@dataclass(frozen=True)
class RestockLine:
    sku: str
    quantity: int


@dataclass(frozen=True)
class RefundView:
    """The ``Refund`` resource of the REST contract (plus a few additive fields)."""

    refund_id: str
    order_id: str
    amount_cents: int
    currency: str
    status: RefundStatus
    reason: str
    restock: list[RestockLine]
    created_at: str
    updated_at: str
    failure_reason: str | None = None
    """Why a refund FAILED: ``exceeds_captured_at_psp`` or ``psp_refused:<code>``."""


@dataclass(frozen=True)
class RefundInput:
    """API -> refund workflow. The money is already committed against the capture (the
    ``payments`` cap moved in the transaction that stored the refund)."""

    refund_id: str
    order_id: str
    payment_id: str
    amount_cents: int
    currency: str
    location_id: str
    """Where restocked units go back on sale: the order's location."""
    restock: list[RestockLine] = field(default_factory=list)
    notify_merchant: bool = False
    """Tell the merchant (max effort) once the refund SUCCEEDED: set when a merchant webhook
    URL is configured."""

    @classmethod
    def of(
        cls, refund: RefundView, *, payment_id: str, location_id: str, notify_merchant: bool
    ) -> RefundInput:
        """The input of a stored refund's workflow: the API's start and the reconciler's
        restart build it alike."""
        return cls(
            refund.refund_id,
            refund.order_id,
            payment_id,
            refund.amount_cents,
            refund.currency,
            location_id,
            list(refund.restock),
            notify_merchant,
        )


def refund_summary(inp: RefundInput) -> str:
    """The refund workflow's static summary in the Temporal UI."""
    summary = f"Refund of {inp.amount_cents} {inp.currency} on order {inp.order_id}"
    if inp.restock:
        summary += ", restocking " + ", ".join(f"{li.quantity} x {li.sku}" for li in inp.restock)
    return summary


@dataclass(frozen=True)
class SagaStart:
    """What starting a saga for its input takes: the workflow type, the input, the workflow id
    and the static summary in the Temporal UI. The API and the reconciler start both sagas
    from these (``order_start``, ``refund_start``), so a restarted run looks like the first."""

    workflow: str
    arg: CheckoutInput | RefundInput
    workflow_id: str
    summary: str


def order_start(inp: CheckoutInput) -> SagaStart:
    return SagaStart(ORDER_WORKFLOW, inp, order_workflow_id(inp.order_id), checkout_summary(inp))


def refund_start(inp: RefundInput) -> SagaStart:
    return SagaStart(REFUND_WORKFLOW, inp, refund_workflow_id(inp.refund_id), refund_summary(inp))


@dataclass(frozen=True)
class PspRefundRequest:
    refund_id: str
    order_id: str
    payment_id: str
    amount_cents: int
    idempotency_key: str
    """``refund:<refund_id>``: a retry after an unknown outcome gets the PSP's first answer."""


@dataclass(frozen=True)
class RefundableAtPsp:
    received_cents: int
    """What the PSP captured on the intent."""
    refunded_cents: int
    """Everything the PSP has refunded on the intent, refunds made outside tradeflow too."""
    fits: bool
    """Whether this refund still fits: refunded + amount <= received."""


@dataclass(frozen=True)
class PspRefundResult:
    psp_refund_id: str


@dataclass(frozen=True)
class SettleRefund:
    """Refund workflow -> its bookkeeping activities: the outcome to record."""

    refund_id: str
    psp_refund_id: str | None = None
    failure_reason: str | None = None


@dataclass(frozen=True)
class RestockRequest:
    refund_id: str
    order_id: str
    location_id: str
    lines: list[RestockLine]


@dataclass(frozen=True)
class RestockReport:
    returned: list[RestockLine]
    """Lines whose units this call (or an earlier attempt) put back on sale."""
    refused: list[RestockLine]
    """Lines the order no longer had sold (returned by earlier refunds or a compensation)."""


# ------------------------------------------------------------------------------ reconciler


@dataclass(frozen=True)
class ReconcileInput:
    grace_s: float = 60.0
    """Rows younger than this are left alone: the API may still be starting their workflow
    (its start gives up after about 11 s) and a finishing saga may still be releasing."""
    restart_within_s: float = 900.0
    """An orphaned order younger than this is restarted; an older one is failed (its
    customer was told 503 and has most likely gone elsewhere)."""
    limit: int = 100
    """Most rows of each kind looked at in one run (the next run takes the rest)."""


@dataclass(frozen=True)
class OrphanedOrder:
    """A PENDING order row whose workflow does not run."""

    order_id: str
    location_id: str
    age_s: float
    lines: list[OrderLine]
    """What its saga would reserve: a fail cancels each line through the fence."""
    workflow: str
    """``missing`` (never started, or its history is gone) or ``closed`` (ended, e.g.
    terminated, before the order got under way)."""
    restartable: bool
    """Its ``CheckoutInput`` is stored with the row."""


@dataclass(frozen=True)
class OrphanedOrders:
    items: list[OrphanedOrder]


@dataclass(frozen=True)
class OrphanedRefund:
    """A PENDING refund row whose ``RefundWorkflow`` does not run."""

    refund_id: str
    order_id: str
    amount_cents: int
    workflow: str
    """``missing`` or ``closed``, as for orders."""
    restartable: bool
    """The order and its captured payment's PSP id are there to rebuild the input from."""


@dataclass(frozen=True)
class OrphanedRefunds:
    items: list[OrphanedRefund]


@dataclass(frozen=True)
class RestartRequest:
    subject_id: str
    """The order id or refund id."""
    task_queue: str
    """Where its workflow runs (the orders queue, the reconciler's own)."""


@dataclass(frozen=True)
class RestartResult:
    started: bool
    """False when there was nothing to restart (the row moved on, or its workflow closed)."""
    detail: str


@dataclass(frozen=True)
class FailOrphanedOrder:
    order_id: str
    why: str


@dataclass(frozen=True)
class FailResult:
    failed: bool
    """False when the row was no longer PENDING (someone else finished it first)."""


@dataclass(frozen=True)
class UnreleasedAuthorizations:
    live: list[str]
    """Finished orders the PSP still holds an authorization (or a pending action) for."""
    clean: list[str]
    """Finished orders looked at whose PSP intents hold nothing."""


@dataclass(frozen=True)
class StrandedCouriers:
    items: list[CourierOffer]
    """Couriers still bound to an order that has finished."""


@dataclass(frozen=True)
class ReconcileEntry:
    subject_id: str
    action: str
    detail: str


@dataclass(frozen=True)
class ReconcileRecord:
    entries: list[ReconcileEntry]


@dataclass(frozen=True)
class ReconcileReport:
    orders_restarted: list[str] = field(default_factory=list)
    orders_failed: list[str] = field(default_factory=list)
    refunds_restarted: list[str] = field(default_factory=list)
    refunds_failed: list[str] = field(default_factory=list)
    authorizations_voided: list[str] = field(default_factory=list)
    """Orders whose hold at the PSP this run released."""
    authorizations_checked: int = 0
    """Finished orders looked up at the PSP (voided or found holding nothing)."""
    couriers_released: list[str] = field(default_factory=list)
    for_operator: list[str] = field(default_factory=list)
    """What it found and may not decide alone (a refund whose workflow ended PENDING)."""
    errors: list[str] = field(default_factory=list)
    """Steps that failed this run; the next run tries them again."""

    def summary(self) -> str:
        return (
            f"orders restarted {len(self.orders_restarted)}, failed {len(self.orders_failed)};"
            f" refunds restarted {len(self.refunds_restarted)},"
            f" failed {len(self.refunds_failed)};"
            f" authorizations voided {len(self.authorizations_voided)}"
            f" of {self.authorizations_checked} checked;"
            f" couriers released {len(self.couriers_released)};"
            f" for an operator {len(self.for_operator)}; errors {len(self.errors)}"
        )
