"""Request and response bodies of the REST contract (docs/api.md), as pydantic models.

Identifiers and free text refuse control characters (PostgreSQL cannot store NUL, and no
client has a reason to send one); integers that end up in 32-bit columns are bounded, so that a
malformed request is a 422 and never reaches the database as a failing statement.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StringConstraints,
)

from domain.messages import OrderView
from domain.status import CourierEventType

INT32_MAX = 2_147_483_647
"""Money and stock columns are 32-bit integers in the schema."""

MAX_PRICE_CENTS = 1_000_000_000
MAX_QUANTITY = 10_000
MAX_STOCK = 1_000_000_000
MAX_ORDER_LINES = 100

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"

Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL)]
"""SKU, location, courier and order ids (64 characters, like their columns)."""
CustomerId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_CONTROL)]
Text = Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00]*$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Lat = Annotated[float, Strict(), Field(ge=-90, le=90, allow_inf_nan=False)]
Lng = Annotated[float, Strict(), Field(ge=-180, le=180, allow_inf_nan=False)]
"""JSON numbers only: ``false`` or ``"31.2"`` is a 422, not a coordinate."""


def _integral(value: object) -> object:
    """JSON Schema's ``integer`` includes ``1.0`` (a number with a zero fraction), so that is
    accepted as 1; ``1.5``, ``true`` and ``"1"`` stay refused by the strict check after this."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_AS_INTEGER = BeforeValidator(_integral)
# Integers as JSON Schema means them (``3`` or ``3.0``; never a bool, a string or ``3.5``),
# within bounds. The bounds sit on the strict integer, inside the coercion, so the OpenAPI
# document states them as ``minimum``/``maximum``.
PriceCents = Annotated[StrictInt, Field(ge=0, le=MAX_PRICE_CENTS), _AS_INTEGER]
StockUnits = Annotated[StrictInt, Field(ge=0, le=MAX_STOCK), _AS_INTEGER]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY), _AS_INTEGER]
AmountCents = Annotated[StrictInt, Field(gt=0, le=INT32_MAX), _AS_INTEGER]
"""A refund's amount: positive, within the 32-bit money columns."""
EventAmountCents = Annotated[StrictInt, Field(ge=0, le=INT32_MAX), _AS_INTEGER]
"""An amount the PSP reports (0 allowed)."""


# --------------------------------------------------------------------------------- problems


class Problem(BaseModel):
    """``application/problem+json`` (RFC 9457) with a stable machine ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str


# ------------------------------------------------------------------------ catalogue, stock


class ProductOut(BaseModel):
    sku: str
    name: str
    price_cents: int
    currency: str
    hot: bool


class ProductPage(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None


class ProductIn(BaseModel):
    name: Name
    price_cents: PriceCents
    currency: Currency
    hot: StrictBool | None = None
    """Omitted on an update: the product keeps its current flag (False for a new product)."""


class StockOut(BaseModel):
    sku: str
    location_id: str
    available: int
    reserved: int
    sold: int


class StockIn(BaseModel):
    location_id: Id = "main"
    available: StockUnits


class LocationIn(BaseModel):
    name: Name
    lat: Lat
    lng: Lng


class LocationOut(BaseModel):
    location_id: str
    name: str
    lat: float
    lng: float


class CourierIn(BaseModel):
    lat: Lat
    lng: Lng
    available: StrictBool


class CourierOut(BaseModel):
    courier_id: str
    lat: float
    lng: float
    available: bool
    current_order_id: str | None
    """The order the courier holds an offer for or is assigned to."""
    assignment: str | None
    """``OFFERED`` or ``ASSIGNED`` while ``current_order_id`` is set."""


class CourierList(BaseModel):
    items: list[CourierOut]


# ----------------------------------------------------------------------------------- orders


class OrderItemIn(BaseModel):
    sku: Id
    quantity: Quantity


class DeliveryIn(BaseModel):
    address: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00]+$")]
    lat: Lat
    lng: Lng


class PaymentIn(BaseModel):
    token: Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NO_CONTROL)]


class CheckoutBody(BaseModel):
    """``POST /v1/orders``. Lines with the same SKU are merged (quantities added)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "customer_id": "c-1",
                "location_id": "main",
                "items": [{"sku": "SKU-1", "quantity": 2}],
                "delivery": {"address": "1 Main St", "lat": 31.23, "lng": 121.47},
                "payment": {"token": "tok_ok"},
            }
        }
    )

    customer_id: CustomerId
    location_id: Id = "main"
    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=MAX_ORDER_LINES)]
    delivery: DeliveryIn
    payment: PaymentIn


class CancelBody(BaseModel):
    reason: Text


class CourierEventIn(BaseModel):
    courier_id: Id
    type: CourierEventType


class CourierEventAccepted(BaseModel):
    order_id: str
    courier_id: str
    type: str
    status: str
    """The order's (``picked_up``/``delivered``) or the dispatch's (``accepted``/``declined``)
    status after the event."""
    accepted: bool
    duplicate: bool | None = None
    """Present (true) only when the same courier sent this event before: no second effect."""


# The Order resource is ``domain.messages.OrderView`` itself (the workflow's query result and
# the read model's ``view``), declared as ``response_model`` so every answer is validated
# against it; the Refund resource is ``domain.messages.RefundView``.


class OrderPage(BaseModel):
    items: list[OrderView]
    next_cursor: str | None


@dataclass
class RepairReport:
    status: str
    """The order's status after the repair: its final outcome, or still NEEDS_ATTENTION."""
    remaining: list[str]
    """Compensations that still failed (empty when the repair completed)."""


@dataclass
class RepairedOrder(OrderView):
    """``POST /v1/admin/orders/{order_id}/repair``: the order, and how the repair went."""

    repair: RepairReport

    @classmethod
    def of(cls, view: OrderView, repair: RepairReport) -> RepairedOrder:
        return cls(**{f.name: getattr(view, f.name) for f in fields(OrderView)}, repair=repair)


class CourierTokenOut(BaseModel):
    """``POST /v1/admin/couriers/{courier_id}/tokens``: shown once, stored only as a hash."""

    token: str
    """``Authorization: Bearer <token>`` for this courier's delivery events and courier view."""
    courier_id: str
    created_at: str


class CourierTokensRevoked(BaseModel):
    courier_id: str
    revoked: int
    """How many live tokens were revoked (0 when there were none)."""
