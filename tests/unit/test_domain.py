"""Pure rules: order status transitions, terminal states, money."""

from __future__ import annotations

import itertools

import pytest

from domain.money import is_currency, line_total
from domain.status import (
    ALLOWED_TRANSITIONS,
    CANCELLABLE_STATUSES,
    TERMINAL_STATUSES,
    IllegalTransition,
    OrderStatus,
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
