"""Pure rules: order status transitions, terminal states, money; the vocabularies on the wire."""

from __future__ import annotations

import dataclasses
import enum
import itertools

import pytest
from temporalio.converter import DataConverter

from domain.messages import (
    AmountsView,
    AuthorizeResult,
    CancelResult,
    CourierEvent,
    CourierEventResult,
    DeliveryProgress,
    DeliveryResult,
    DeliveryState,
    DeliveryView,
    ItemView,
    MerchantEvent,
    NotificationOutcome,
    OrderView,
    PaymentProgress,
    PaymentResult,
    PaymentView,
    RefundView,
    RepairResult,
    ReservationResult,
    TimelineEntry,
)
from domain.money import is_currency, line_total
from domain.status import (
    ALLOWED_TRANSITIONS,
    CANCELLABLE_STATUSES,
    TERMINAL_STATUSES,
    AuthorizationOutcome,
    CourierEventType,
    DeliveryStatus,
    FailureReason,
    IllegalTransition,
    MerchantEventType,
    NotificationStatus,
    OrderStatus,
    PaymentStatus,
    RefundStatus,
    ReservationState,
    check_transition,
)

HAPPY_PATH = [
    OrderStatus.PENDING,
    OrderStatus.RESERVED,
    OrderStatus.AWAITING_PAYMENT,
    OrderStatus.PAID,
    OrderStatus.DISPATCHING,
    OrderStatus.COURIER_ASSIGNED,
    OrderStatus.OUT_FOR_DELIVERY,
    OrderStatus.DELIVERED,
]


def test_the_happy_path_is_allowed_step_by_step() -> None:
    for current, new in itertools.pairwise(HAPPY_PATH):
        check_transition(current, new)
    check_transition(OrderStatus.RESERVED, OrderStatus.PAID)  # no customer action needed


def test_terminal_states_are_final() -> None:
    assert {s.value for s in TERMINAL_STATUSES} == {
        "DELIVERED",
        "CANCELLED",
        "FAILED",
        "NEEDS_ATTENTION",
    }
    for terminal in TERMINAL_STATUSES - {OrderStatus.NEEDS_ATTENTION}:
        assert terminal.is_terminal
        for new in OrderStatus:
            with pytest.raises(IllegalTransition):
                check_transition(terminal, new)


def test_needs_attention_moves_on_only_to_the_outcome_an_operator_repair_completes() -> None:
    assert OrderStatus.NEEDS_ATTENTION.is_terminal  # the saga stops there on its own
    for new in OrderStatus:
        if new in (OrderStatus.CANCELLED, OrderStatus.FAILED):
            check_transition(OrderStatus.NEEDS_ATTENTION, new)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(OrderStatus.NEEDS_ATTENTION, new)


def test_cancel_is_possible_until_pickup_and_not_after() -> None:
    for s in HAPPY_PATH[:6]:
        assert s in CANCELLABLE_STATUSES
        check_transition(s, OrderStatus.CANCELLED)
    assert OrderStatus.OUT_FOR_DELIVERY not in CANCELLABLE_STATUSES
    with pytest.raises(IllegalTransition):
        check_transition(OrderStatus.OUT_FOR_DELIVERY, OrderStatus.CANCELLED)


def test_no_status_moves_backwards_or_skips_payment() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(OrderStatus.PAID, OrderStatus.RESERVED)
    with pytest.raises(IllegalTransition):
        check_transition(OrderStatus.RESERVED, OrderStatus.DISPATCHING)
    with pytest.raises(IllegalTransition):
        check_transition(OrderStatus.PENDING, OrderStatus.PAID)
    assert set(ALLOWED_TRANSITIONS) == set(OrderStatus)


def test_money_is_integer_minor_units() -> None:
    assert line_total(1299, 2) == 2598
    with pytest.raises(ValueError):
        line_total(1299, 0)
    with pytest.raises(ValueError):
        line_total(-1, 1)
    assert is_currency("USD") and not is_currency("usd") and not is_currency("US")


# ------------------------------------------------ vocabularies on the wire (Temporal payloads)


def _as_plain_strings(value: object) -> object:
    """The same message as it was built before its vocabularies were types: plain ``str``."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list):
        return [_as_plain_strings(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(
            **{f.name: _as_plain_strings(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    return value


_VIEW = OrderView(
    order_id="o_1",
    workflow_id="order-o_1",
    customer_id="c_1",
    location_id="l_1",
    status=OrderStatus.FAILED,
    failure_reason=FailureReason.NO_COURIER,
    items=[ItemView("sku", 2, 150)],
    currency="USD",
    amounts=AmountsView(300, 500, 800),
    payment=PaymentView(PaymentStatus.VOIDED, "pi_1"),
    delivery=DeliveryView(DeliveryStatus.FAILED),
    refunds=[],
    timeline=[TimelineEntry(OrderStatus.PENDING, "t0"), TimelineEntry(OrderStatus.FAILED, "t1")],
    created_at="t0",
    updated_at="t1",
)

_MESSAGES: list[object] = [
    _VIEW,
    CancelResult(True, OrderStatus.CANCELLED),
    RepairResult(OrderStatus.NEEDS_ATTENTION, ["payment"]),
    CourierEvent("k_1", CourierEventType.PICKED_UP),
    CourierEventResult(True, OrderStatus.OUT_FOR_DELIVERY),
    CourierEventResult(True, DeliveryStatus.ASSIGNED),
    DeliveryProgress(DeliveryStatus.DISPATCHING, "k_1"),
    PaymentResult(AuthorizationOutcome.TIMEOUT, "pi_1", detail="late"),
    PaymentProgress(PaymentStatus.REQUIRES_ACTION, "pi_1"),
    DeliveryResult(DeliveryStatus.ASSIGNED, "k_1", 1),
    DeliveryState(DeliveryStatus.ASSIGNED, None, "k_1", ["k_1"]),
    ReservationResult(ReservationState.CONFIRMED, True),
    AuthorizeResult(PaymentStatus.AUTHORIZED, "pi_1", 800),
    MerchantEvent("o_1.paid", MerchantEventType.ORDER_PAID, "o_1", 800, "USD", "t1"),
    NotificationOutcome(
        "o_1.paid", "o_1", MerchantEventType.ORDER_PAID, NotificationStatus.GAVE_UP, 12
    ),
    RefundView("r_1", "o_1", 100, "USD", RefundStatus.SUCCEEDED, "", [], "t0", "t1"),
]


@pytest.mark.parametrize("message", _MESSAGES, ids=lambda m: type(m).__name__)
def test_typed_vocabularies_travel_as_the_strings_they_replaced(message: object) -> None:
    """Histories recorded when these fields were ``str`` decode to the enums, and today's
    payloads are the same bytes as then (so readers of either side see no difference)."""
    converter = DataConverter.default.payload_converter
    [typed] = converter.to_payloads([message])
    [plain] = converter.to_payloads([_as_plain_strings(message)])
    assert typed.data == plain.data
    assert typed.metadata == plain.metadata
    [decoded] = converter.from_payloads([plain], [type(message)])
    assert decoded == message
    assert _enum_types(decoded) == _enum_types(message)


def _enum_types(value: object) -> list[type]:
    if isinstance(value, enum.Enum):
        return [type(value)]
    if isinstance(value, list):
        return [t for v in value for t in _enum_types(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _enum_types(getattr(value, f.name))]
    return []


def test_a_dispatching_view_shows_the_offer_the_delivery_holds_and_no_other() -> None:
    dispatching = dataclasses.replace(
        _VIEW,
        status=OrderStatus.DISPATCHING,
        failure_reason=None,
        delivery=DeliveryView(DeliveryStatus.DISPATCHING),
    )
    offered = dispatching.with_offer(DeliveryState(DeliveryStatus.DISPATCHING, "k_7"))
    assert offered.delivery == DeliveryView(DeliveryStatus.DISPATCHING, "k_7", None)
    assert dispatching.delivery.offered_to is None  # a new view; the one given is untouched
    # The offer closed again (declined, timed out): none shown, even if the order heard of it.
    told = dataclasses.replace(
        dispatching, delivery=DeliveryView(DeliveryStatus.DISPATCHING, "k_7")
    )
    assert (
        told.with_offer(DeliveryState(DeliveryStatus.DISPATCHING, None)).delivery.offered_to is None
    )
    # A delivery that has ended (assigned, failed) or an order past dispatching: as it is.
    assert (
        dispatching.with_offer(DeliveryState(DeliveryStatus.ASSIGNED, None, "k_7")) == dispatching
    )
    assert _VIEW.with_offer(DeliveryState(DeliveryStatus.DISPATCHING, "k_7")) == _VIEW
