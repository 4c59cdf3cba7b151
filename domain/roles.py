"""Who calls the API: the vocabulary of the ``role`` claim and of courier tokens."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    CUSTOMER = "customer"
    """Places orders and sees, lists and cancels only their own (``sub`` = customer id)."""
    COURIER = "courier"
    """Sends delivery events for itself and reads its own courier view (``sub`` = courier id)."""
    MERCHANT = "merchant"
    """Sees every order, refunds and cancels them."""
    OPERATOR = "operator"
    """Everything a merchant may do, plus the admin routes and the courier views."""


STAFF_ROLES = frozenset({Role.MERCHANT, Role.OPERATOR})
