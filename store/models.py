"""SQLModel tables. Timestamps are RFC 3339 UTC strings (fixed width, so they sort)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Product(SQLModel, table=True):
    __tablename__ = "products"

    sku: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    price_cents: int
    currency: str = Field(max_length=3)
    hot: bool = False
    updated_at: str = Field(default_factory=utcnow_iso, max_length=32)


class Location(SQLModel, table=True):
    __tablename__ = "locations"

    location_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    lat: float
    lng: float


class Stock(SQLModel, table=True):
    """Per location and SKU: ``available + reserved + sold == stocked`` always holds."""

    __tablename__ = "stock"
    __table_args__ = (
        CheckConstraint("available >= 0", name="ck_stock_available"),
        CheckConstraint("reserved >= 0", name="ck_stock_reserved"),
        CheckConstraint("sold >= 0", name="ck_stock_sold"),
    )

    location_id: str = Field(primary_key=True, max_length=64)
    sku: str = Field(primary_key=True, max_length=64)
    available: int = 0
    reserved: int = 0
    sold: int = 0
    stocked: int = 0
    """Net units ever put on sale here (admin sets and returns add, admin reductions subtract)."""
    updated_at: str = Field(default_factory=utcnow_iso, max_length=32)


class Reservation(SQLModel, table=True):
    """The TCC fence: one row per branch, written in the same transaction as the stock change."""

    __tablename__ = "reservations"

    order_id: str = Field(primary_key=True, max_length=64)
    location_id: str = Field(primary_key=True, max_length=64)
    sku: str = Field(primary_key=True, max_length=64)
    quantity: int
    state: str = Field(max_length=16, index=True)
    created_at: str = Field(default_factory=utcnow_iso, max_length=32)
    updated_at: str = Field(default_factory=utcnow_iso, max_length=32)


class Order(SQLModel, table=True):
    """Read model of orders, written by the order workflow at every transition."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("customer_id", "idempotency_key", name="uq_orders_customer_key"),
        Index("ix_orders_customer_created", "customer_id", "created_at", "order_id"),
        Index("ix_orders_status_created", "status", "created_at", "order_id"),
        Index("ix_orders_created", "created_at", "order_id"),
    )

    order_id: str = Field(primary_key=True, max_length=64)
    customer_id: str = Field(max_length=128)
    idempotency_key: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)
    location_id: str = Field(max_length=64)
    status: str = Field(max_length=32)
    failure_reason: str | None = Field(default=None, max_length=32)
    currency: str = Field(max_length=3)
    total_cents: int
    seq: int = 0
    """Highest transition written; an older write never overwrites a newer one."""
    view: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    """The full ``Order`` resource as of ``seq``."""
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)
    checkout_input: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    """The ``CheckoutInput`` the API starts the workflow with, stored with the row: a retry
    with the same key and the reconciler start exactly that input again, without re-pricing.
    None for rows written by a workflow started without the API, and rows older than it."""


class OrderTimeline(SQLModel, table=True):
    __tablename__ = "order_timeline"

    order_id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True)
    status: str = Field(max_length=32)
    at: str = Field(max_length=32)


class Payment(SQLModel, table=True):
    """tradeflow's own record of an order's payment, written before every money-moving call."""

    __tablename__ = "payments"

    order_id: str = Field(primary_key=True, max_length=64)
    payment_id: str | None = Field(default=None, max_length=64, index=True)
    idempotency_key: str = Field(max_length=255)
    status: str = Field(max_length=32)
    currency: str = Field(max_length=3)
    amount_cents: int
    authorized_cents: int = 0
    captured_cents: int = 0
    refunded_cents: int = 0
    refund_committed_cents: int = 0
    """Refunds admitted against the capture (pending and succeeded). The API moves it with
    one conditional UPDATE (``+ amount <= captured_cents``), so racing refunds cannot
    together pass the capture; a refund that fails gives its amount back."""
    updated_at: str = Field(default_factory=utcnow_iso, max_length=32)


class Courier(SQLModel, table=True):
    """A courier and the one order it holds (offered or assigned), if any."""

    __tablename__ = "couriers"

    courier_id: str = Field(primary_key=True, max_length=64)
    lat: float
    lng: float
    available: bool = True
    """On shift and willing to take offers (set by the courier app / admin)."""
    current_order_id: str | None = Field(default=None, max_length=64, index=True)
    assignment: str | None = Field(default=None, max_length=16)
    """``OFFERED`` or ``ASSIGNED`` while ``current_order_id`` is set."""
    fencing_token: int | None = Field(default=None)
    """Fencing token of the zone lease under which a matcher made the current offer (None for
    offers made without a lease)."""
    updated_at: str = Field(default_factory=utcnow_iso, max_length=32)


class FencingCounter(SQLModel, table=True):
    """A linearizable counter per lease family: every lease grant takes the next value."""

    __tablename__ = "fencing_counters"

    name: str = Field(primary_key=True, max_length=64)
    value: int = 0


class ZoneFence(SQLModel, table=True):
    """The highest fencing token a write for this zone has carried; lower ones are refused."""

    __tablename__ = "zone_fences"

    zone: str = Field(primary_key=True, max_length=64)
    token: int
    updated_at: str = Field(default_factory=utcnow_iso, max_length=32)


class WebhookEvent(SQLModel, table=True):
    """A PSP webhook as received: the dedupe record by ``event_id`` and what became of it.

    The row is inserted (``received``) before the workflow is signalled and moved to
    ``signalled`` or ``ignored`` after; a delivery that finds a ``received`` row signals again
    (the payment workflow drops repeated event ids), so a crash between the two steps cannot
    lose the event, and only a finished row answers "duplicate" without touching the workflow.
    """

    __tablename__ = "webhook_events"

    event_id: str = Field(primary_key=True, max_length=128)
    type: str = Field(max_length=64)
    order_id: str = Field(max_length=64, index=True)
    payment_id: str = Field(max_length=64)
    amount_cents: int
    outcome: str = Field(max_length=16)
    """``received``, ``signalled`` or ``ignored``."""
    detail: str | None = Field(default=None, max_length=200)
    """Why an event was ignored (order finished, unknown order, unhandled type)."""
    received_at: str = Field(default_factory=utcnow_iso, max_length=32)
    processed_at: str | None = Field(default=None, max_length=32)


class Notification(SQLModel, table=True):
    """Outcome of a max-effort merchant notification, one row per event."""

    __tablename__ = "notifications"

    event_id: str = Field(primary_key=True, max_length=128)
    order_id: str = Field(max_length=64, index=True)
    type: str = Field(max_length=32)
    status: str = Field(max_length=16)
    """DELIVERED, GAVE_UP or SKIPPED."""
    attempts: int
    last_error: str | None = Field(default=None, max_length=500)
    updated_at: str = Field(default_factory=utcnow_iso, max_length=32)


class Refund(SQLModel, table=True):
    """One refund of an order: admitted by the API, carried out by ``RefundWorkflow``.

    The single source of truth for an order's refunds: the ``Order`` resource shows them from
    here (``refunds``, ``amounts.refunded_cents``, ``payment.status``).
    """

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("order_id", "idempotency_key", name="uq_refunds_order_key"),
        Index("ix_refunds_order_created", "order_id", "created_at"),
        CheckConstraint("amount_cents > 0", name="ck_refunds_amount"),
    )

    refund_id: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(max_length=64)
    idempotency_key: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)
    amount_cents: int
    currency: str = Field(max_length=3)
    reason: str = Field(max_length=1000)
    restock: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    """``[{"sku", "quantity"}]`` to put back on sale at the order's location."""
    status: str = Field(max_length=16)
    """``PENDING``, ``SUCCEEDED`` or ``FAILED``; moved only from PENDING, once."""
    failure_reason: str | None = Field(default=None, max_length=200)
    psp_refund_id: str | None = Field(default=None, max_length=64)
    created_at: str = Field(max_length=32)
    updated_at: str = Field(max_length=32)


class Reconciliation(SQLModel, table=True):
    """What the reconciler did to an order, refund or courier, one row per (subject, action):
    the audit trail an operator reads, and how a later run knows an order's authorizations
    were already looked at at the PSP."""

    __tablename__ = "reconciliations"

    subject_id: str = Field(primary_key=True, max_length=64)
    """An order id, a refund id or a courier id."""
    action: str = Field(primary_key=True, max_length=32)
    """``order_restarted``, ``order_failed``, ``refund_restarted``, ``refund_failed``,
    ``authorization_voided``, ``authorization_checked``, ``courier_released``."""
    detail: str = Field(max_length=500)
    at: str = Field(default_factory=utcnow_iso, max_length=32)


class CourierToken(SQLModel, table=True):
    """A courier's API credential. Only its SHA-256 is stored: the token itself is shown once,
    when an operator issues it, and a database leak reveals no usable credential."""

    __tablename__ = "courier_tokens"

    token_hash: str = Field(primary_key=True, max_length=64)
    """Hex SHA-256 of the token; looked up by equality, so no secret is ever compared."""
    courier_id: str = Field(max_length=64, index=True)
    created_at: str = Field(default_factory=utcnow_iso, max_length=32)
    revoked_at: str | None = Field(default=None, max_length=32)
    """Set by ``DELETE /v1/admin/couriers/{id}/tokens``; a revoked token is refused."""
