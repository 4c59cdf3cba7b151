"""Status vocabularies of the REST contract and the rules for moving between them."""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    RESERVED = "RESERVED"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    PAID = "PAID"
    DISPATCHING = "DISPATCHING"
    COURIER_ASSIGNED = "COURIER_ASSIGNED"
    OUT_FOR_DELIVERY = "OUT_FOR_DELIVERY"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OrderStatus.DELIVERED, OrderStatus.CANCELLED, OrderStatus.FAILED, OrderStatus.NEEDS_ATTENTION}
)

#: Where an order may go from each status. Cancellation and failure are reachable from every
#: status before pick-up; NEEDS_ATTENTION from any status in which a compensation can run.
_BEFORE_PICKUP = (
    OrderStatus.PENDING,
    OrderStatus.RESERVED,
    OrderStatus.AWAITING_PAYMENT,
    OrderStatus.PAID,
    OrderStatus.DISPATCHING,
    OrderStatus.COURIER_ASSIGNED,
)
ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.RESERVED}),
    OrderStatus.RESERVED: frozenset({OrderStatus.AWAITING_PAYMENT, OrderStatus.PAID}),
    OrderStatus.AWAITING_PAYMENT: frozenset({OrderStatus.PAID}),
    OrderStatus.PAID: frozenset({OrderStatus.DISPATCHING}),
    OrderStatus.DISPATCHING: frozenset({OrderStatus.COURIER_ASSIGNED}),
    OrderStatus.COURIER_ASSIGNED: frozenset({OrderStatus.OUT_FOR_DELIVERY}),
    OrderStatus.OUT_FOR_DELIVERY: frozenset({OrderStatus.DELIVERED}),
    OrderStatus.DELIVERED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.FAILED: frozenset(),
    OrderStatus.NEEDS_ATTENTION: frozenset(),
}
for _s in _BEFORE_PICKUP:
    ALLOWED_TRANSITIONS[_s] = ALLOWED_TRANSITIONS[_s] | {
        OrderStatus.CANCELLED,
        OrderStatus.FAILED,
        OrderStatus.NEEDS_ATTENTION,
    }
ALLOWED_TRANSITIONS[OrderStatus.OUT_FOR_DELIVERY] |= {OrderStatus.NEEDS_ATTENTION}
#: NEEDS_ATTENTION is where the saga stops on its own; only an operator's repair
#: (``tradeflow repair``), once the compensations it resumes have all succeeded, moves the
#: order on to the outcome it was heading for.
ALLOWED_TRANSITIONS[OrderStatus.NEEDS_ATTENTION] = frozenset(
    {OrderStatus.CANCELLED, OrderStatus.FAILED}
)

CANCELLABLE_STATUSES = frozenset(_BEFORE_PICKUP)


class IllegalTransition(ValueError):
    pass


def check_transition(current: OrderStatus, new: OrderStatus) -> None:
    """Raise IllegalTransition unless ``current -> new`` is a move the contract allows."""
    if new not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"order cannot go from {current} to {new}")


class FailureReason(StrEnum):
    OUT_OF_STOCK = "OUT_OF_STOCK"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    PAYMENT_TIMEOUT = "PAYMENT_TIMEOUT"
    NO_COURIER = "NO_COURIER"
    INVALID_ORDER = "INVALID_ORDER"
    NOT_STARTED = "NOT_STARTED"
    """Stored by the API but never got under way (its workflow could not be started, or
    ended before reserving anything) and not retried in time: failed by the reconciler."""


class PaymentStatus(StrEnum):
    PENDING = "PENDING"
    REQUIRES_ACTION = "REQUIRES_ACTION"
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    VOIDED = "VOIDED"
    DECLINED = "DECLINED"
    FAILED = "FAILED"


class DeliveryStatus(StrEnum):
    NOT_STARTED = "NOT_STARTED"
    DISPATCHING = "DISPATCHING"
    ASSIGNED = "ASSIGNED"
    PICKED_UP = "PICKED_UP"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class CourierEventType(StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"


class ReservationState(StrEnum):
    """States of one TCC branch (order, location, sku) in the reservation fence."""

    TRIED = "TRIED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    RETURNED = "RETURNED"


class AuthorizationOutcome(StrEnum):
    """How a payment child workflow ended (``PaymentResult.status``)."""

    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    TIMEOUT = "TIMEOUT"
    """No usable answer within the payment window (the PSP, or the customer's action)."""
    ABORTED = "ABORTED"
    """The order gave up on the payment (a cancel) while it waited for the customer."""


class PspEventType(StrEnum):
    """The PSP webhook events tradeflow acts on (others are acknowledged and ignored)."""

    SUCCEEDED = "payment_intent.succeeded"
    FAILED = "payment_intent.failed"


class MerchantEventType(StrEnum):
    """What the merchant's webhook is told about (max effort)."""

    ORDER_PAID = "order.paid"
    ORDER_CANCELLED = "order.cancelled"
    REFUND_SUCCEEDED = "refund.succeeded"


class NotificationStatus(StrEnum):
    """How a merchant notification ended."""

    DELIVERED = "DELIVERED"
    GAVE_UP = "GAVE_UP"
    SKIPPED = "SKIPPED"
    """No merchant URL is configured: nothing to deliver."""


class RefundStatus(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
