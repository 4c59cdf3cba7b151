"""Money is integer minor units plus an ISO 4217 code. Never a float."""

from __future__ import annotations

import re

_CURRENCY = re.compile(r"^[A-Z]{3}$")

#: Flat delivery fee added to every order, in minor units of the order's currency.
DELIVERY_FEE_CENTS = 500


def is_currency(code: str) -> bool:
    return bool(_CURRENCY.match(code))


def line_total(unit_price_cents: int, quantity: int) -> int:
    if unit_price_cents < 0 or quantity < 1:
        raise ValueError("price must be >= 0 and quantity >= 1")
    return unit_price_cents * quantity
