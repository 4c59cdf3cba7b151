"""Orders through the API: accept idempotently, read your writes, cancel, courier events.

The API never moves stock, money or couriers itself. Accepting an order is: price the cart
from the catalogue (the price snapshot), insert the read-model row keyed by
``(customer_id, Idempotency-Key)``, start ``OrderWorkflow``. Everything after that is the
workflow's; the API asks it with queries and updates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import TypeAdapter
from redis.exceptions import RedisError
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
)

from api.errors import NOT_FOUND, VALIDATION_ERROR, ApiProblem
from api.pagination import decode_cursor, encode_cursor
from api.schemas import (
    INT32_MAX,
    MAX_QUANTITY,
    CheckoutBody,
    CourierEventAccepted,
    CourierEventIn,
    OrderPage,
    RepairedOrder,
    RepairReport,
)
from api.state import AppState
from api.temporal_calls import TemporalCalls, UpdateRefused, WorkflowNotRunning
from domain import errors
from domain.messages import (
    CancelRequest,
    CancelResult,
    CheckoutInput,
    CourierEvent,
    CourierEventResult,
    DeliveryAddress,
    DeliveryState,
    OrderLine,
    OrderTimeouts,
    OrderView,
    RefundView,
    RepairRequest,
    RepairResult,
    TimelineEntry,
    as_plain,
    checkout_total_cents,
    order_start,
)
from domain.money import DELIVERY_FEE_CENTS, line_total
from domain.names import (
    CUSTOMER_ID_KEY,
    FAILURE_REASON_KEY,
    ORDER_STATUS_KEY,
    ORDER_TOTAL_CENTS_KEY,
    QUERY_DELIVERY,
    QUERY_ORDER,
    UPDATE_CANCEL,
    UPDATE_COURIER_EVENT,
    UPDATE_COURIER_RESPONSE,
    UPDATE_REPAIR,
    delivery_workflow_id,
    order_workflow_id,
)
from domain.status import (
    TERMINAL_STATUSES,
    CourierEventType,
    FailureReason,
    OrderStatus,
    PaymentStatus,
)
from infra import metrics as business_metrics
from infra.hot_stock import read_counters
from infra.ratelimit import RateDecision
from infra.sold_out_edge import Verdict, order_copy
from infra.telemetry import metrics
from store import couriers, orders
from store import refunds as refund_book
from store.models import Location, Order, utcnow_iso
from store.orders import checkout_input_of
from store.outbox import appended_events

log = logging.getLogger(__name__)

# Business problem codes of the orders resource.
UNKNOWN_SKU = "unknown_sku"
UNKNOWN_LOCATION = "unknown_location"
CURRENCY_MISMATCH = "currency_mismatch"
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
RATE_LIMITED = "rate_limited"
NOT_CANCELLABLE = "not_cancellable"
COURIER_MISMATCH = "courier_mismatch"
OUT_OF_ORDER = "out_of_order"
NOT_DISPATCHING = "not_dispatching"

NOT_REPAIRABLE = "not_repairable"

# ApplicationError types of the workflows' update validators with a code of their own.
_EVENT_REJECTION_CODES = {
    errors.COURIER_MISMATCH: COURIER_MISMATCH,
    errors.OUT_OF_ORDER: OUT_OF_ORDER,
}

REPAIR_TIMEOUT = timedelta(seconds=60)
"""A repair waits for the compensations it resumes (each retried while it fails)."""


_STORED_NOT_STARTED = (
    "the workflow service is not answering; the order is stored and a retry with the "
    "same Idempotency-Key starts it"
)


_UNANSWERED = (
    ApiProblem,  # the workflow service is unavailable
    WorkflowNotRunning,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
"""A query that got no answer: the caller serves what it has."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class Placed:
    created: bool
    """False when the request repeated an earlier one (same customer, key and body)."""
    order: OrderView
    body: bytes | None = None
    """``order`` as JSON when it was made already (a loser answered at the edge)."""


def request_hash(body: CheckoutBody) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def merge_lines(body: CheckoutBody) -> list[tuple[str, int]]:
    """Quantities of repeated SKUs added up, in order of first appearance."""
    merged: dict[str, int] = {}
    for item in body.items:
        merged[item.sku] = merged.get(item.sku, 0) + item.quantity
    return list(merged.items())


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


_ORDER_VIEW = TypeAdapter(OrderView)


def order_resource(view: dict[str, Any]) -> OrderView:
    """The ``Order`` resource, validated, from a view as stored or queried (plain JSON)."""
    return _ORDER_VIEW.validate_python(view)


def _conflict(view: OrderView, code: str, detail: str) -> ApiProblem:
    """409 ``code``: the workflow refused, or is no longer running; says the order's status."""
    return ApiProblem(409, code, detail, extra={"order_status": view.status})


def with_refunds(view: dict[str, Any], refunds: list[RefundView]) -> dict[str, Any]:
    """The order's refunds laid over its view. The refunds table is their only source, so
    no refund write ever races the order workflow's read-model writes; the order's
    ``status`` is left alone (a DELIVERED order stays DELIVERED)."""
    if not refunds:
        return view
    view = {**view, "amounts": dict(view["amounts"]), "payment": dict(view["payment"])}
    view["refunds"] = [asdict(r) for r in refunds]
    refunded = sum(r.amount_cents for r in refunds if r.status == refund_book.SUCCEEDED)
    captured = int(view["amounts"].get("captured_cents") or 0)
    view["amounts"]["refunded_cents"] = refunded
    if captured > 0 and refunded == captured:
        view["payment"]["status"] = PaymentStatus.REFUNDED.value
    elif 0 < refunded < captured:
        view["payment"]["status"] = PaymentStatus.PARTIALLY_REFUNDED.value
    return view


def price_lines(
    products: dict[str, dict[str, Any] | None], lines: list[tuple[str, int]]
) -> tuple[str, list[OrderLine]]:
    """The cart priced from the catalogue's products (the price snapshot): its currency and
    lines; 422 for an unknown SKU, mixed currencies, a quantity or total out of bounds."""
    unknown = [sku for sku, p in products.items() if p is None]
    if unknown:
        metrics.checkout_rejected.labels(code=UNKNOWN_SKU).inc()
        raise ApiProblem(
            422,
            UNKNOWN_SKU,
            f"unknown SKU(s): {', '.join(unknown[:10])}",
            extra={"skus": unknown},
        )
    currencies = sorted({str(p["currency"]) for p in products.values() if p is not None})
    if len(currencies) != 1:
        raise ApiProblem(
            422,
            CURRENCY_MISMATCH,
            f"all items must be sold in one currency, got {', '.join(currencies)}",
        )
    priced = []
    for sku, quantity in lines:
        if quantity > MAX_QUANTITY:
            raise ApiProblem(
                422, VALIDATION_ERROR, f"quantity of {sku} exceeds {MAX_QUANTITY} in total"
            )
        product = products[sku]
        assert product is not None
        priced.append(
            OrderLine(
                sku=sku,
                quantity=quantity,
                unit_price_cents=int(product["price_cents"]),
                hot=bool(product.get("hot", False)),
            )
        )
    total = sum(line_total(li.unit_price_cents, li.quantity) for li in priced)
    if total + DELIVERY_FEE_CENTS > INT32_MAX:
        raise ApiProblem(422, VALIDATION_ERROR, "order total is too large")
    return currencies[0], priced


def _out_of_stock(view: OrderView) -> OrderView:
    """The order as a flash sale's loser: ``FAILED`` / ``OUT_OF_STOCK`` the moment it was
    placed, the answer its reservation would have got (the edge's and the normal path's)."""
    return replace(
        view,
        status=OrderStatus.FAILED,
        failure_reason=FailureReason.OUT_OF_STOCK,
        timeline=[*view.timeline, TimelineEntry(OrderStatus.FAILED, view.created_at)],
    )


def _rate_limited(decision: RateDecision) -> ApiProblem:
    metrics.checkout_rejected.labels(code=RATE_LIMITED).inc()
    return ApiProblem(
        429,
        RATE_LIMITED,
        f"too many orders for this customer; retry in {decision.retry_after_header} s",
        headers={"Retry-After": decision.retry_after_header},
    )


def _key_reused(order_id: str) -> ApiProblem:
    return ApiProblem(
        422,
        IDEMPOTENCY_KEY_REUSED,
        "this Idempotency-Key was used with a different request body",
        extra={"order_id": order_id},
    )


@dataclass(frozen=True)
class EdgeOutcome:
    """What the edge did for a checkout that goes on to the normal path."""

    priced: tuple[str, list[OrderLine]] | None = None
    view: OrderView | None = None
    """The order as accepted (its id is the one the edge registered the key with)."""
    rate_taken: bool = False


@dataclass(frozen=True)
class _Cart:
    view: OrderView
    normal: EdgeOutcome
    hot: list[tuple[str, int]]
    """(sku, quantity) of the hot lines."""
    loser: _Loser | None
    """The answer if a hot line is short (None without hot lines)."""


@dataclass(frozen=True)
class _Loser:
    view: OrderView
    body: bytes
    """The 202 body (the view's JSON)."""
    row: str
    """The row as the write-behind inserts it (JSON)."""


class OrdersService:
    def __init__(self, state: AppState) -> None:
        self._state = state
        self._temporal = TemporalCalls(state)

    # ------------------------------------------------------------------------------ place

    async def edge(self, body: CheckoutBody, key: str) -> Placed | EdgeOutcome:
        """The checkout asked at the sold-out edge: answered there (no session opened at
        all), or what the edge did for the normal path (``place(..., edge=)``)."""
        started = time.perf_counter()
        edge = await self._at_the_edge(body, key, request_hash(body), merge_lines(body))
        if isinstance(edge, Placed):
            metrics.checkout_latency.observe(time.perf_counter() - started)
        return edge

    async def place(
        self, body: CheckoutBody, key: str, *, edge: Placed | EdgeOutcome | None = None
    ) -> Placed:
        """Accept a checkout: at the edge, or on the normal path with a session of its own.
        ``edge``: what ``edge()`` answered for this request already (it is not asked again)."""
        started = time.perf_counter()
        if edge is None:
            edge = await self.edge(body, key)
        if isinstance(edge, Placed):
            return edge
        async with self._state.sessionmaker() as session:
            return await self._place(
                session, body, key, request_hash(body), merge_lines(body), edge, started
            )

    async def _place(
        self,
        session: AsyncSession,
        body: CheckoutBody,
        key: str,
        digest: str,
        merged: list[tuple[str, int]],
        edge: EdgeOutcome,
        started: float,
    ) -> Placed:
        # The normal path. A repeat is answered from what was stored, before anything that
        # may have changed since it was first accepted (the customer's rate, the catalogue):
        # one indexed read. (The edge's index cannot stand in for it: it may be incomplete.)
        existing = await orders.order_by_key(
            session, customer_id=body.customer_id, idempotency_key=key
        )
        # End the read before anything else: SQLite holds its lock until then.
        await session.commit()
        if existing is not None:
            return await self._repeat(existing, body, digest)

        if not edge.rate_taken:
            await self._check_rate(body.customer_id)
        currency, lines = edge.priced or await self._price(merged)
        view = edge.view or self._initial_view(body, currency, lines, utcnow_iso())
        view_dict = as_plain(view)
        inp = self._checkout_input(view_dict, body, {li.sku for li in lines if li.hot})

        location = await session.get(Location, body.location_id)
        if location is None:
            await session.rollback()
            raise ApiProblem(422, UNKNOWN_LOCATION, f"location {body.location_id!r} does not exist")
        if await self._sold_out_by_now(body.location_id, lines):
            # A crowd at the sale's opening: the edge saw units left, the winners' workflows
            # have claimed them since. The answer the order's first step would get, given
            # here (its row, timeline and events in one transaction), with no workflow.
            view = _out_of_stock(view)
            view_dict = as_plain(view)
        sold_out = view.status == OrderStatus.FAILED
        inserted = await orders.insert_order_if_new(
            session,
            row={
                **self._row(body, key, digest, view_dict),
                # A final row: no workflow write can follow one that never started.
                "seq": orders.FINAL_SEQ if sold_out else 0,
                # The exact input, so a retry and the reconciler start this and nothing else.
                "checkout_input": as_plain(inp),
            },
        )
        if inserted and sold_out:
            await orders.append_timeline(session, view_dict)
            events = appended_events(session)
            await session.commit()
            business_metrics.observe_status_changes(view_dict, events)
            metrics.orders_created.inc()
            metrics.checkout_latency.observe(time.perf_counter() - started)
            return Placed(created=True, order=view)
        if inserted:
            await session.commit()
            metrics.orders_created.inc()
            # Committed first: if Temporal is down the order waits here for a retry with the
            # same key (or the reconciler), which starts it (USE_EXISTING: safe to repeat).
            await self._start(inp)
            metrics.checkout_latency.observe(time.perf_counter() - started)
            return Placed(created=True, order=view)

        # A concurrent first request with this key inserted it in between.
        existing = await orders.order_by_key(
            session, customer_id=body.customer_id, idempotency_key=key
        )
        await session.commit()
        if existing is None:  # pragma: no cover - the conflicting row cannot vanish
            raise RuntimeError(f"order with key {key!r} conflicted on insert but cannot be read")
        return await self._repeat(existing, body, digest)

    async def _sold_out_by_now(self, location_id: str, lines: list[OrderLine]) -> bool:
        """True when a hot line's Redis counter now has fewer units than the line wants (read
        late on the normal path: at a sale's opening the edge, asked first, saw units the
        winners have claimed since). Unknown (no counter, Redis unreachable): False, the
        workflow decides."""
        hot = [li for li in lines if li.hot]
        if not hot:
            return False
        try:
            left = await read_counters(self._state.redis, location_id, [li.sku for li in hot])
        except (RedisError, OSError) as exc:
            log.info("flash-sale counters unreadable, the workflow decides: %s", exc)
            return False
        short = [li for li, n in zip(hot, left, strict=True) if n is not None and n < li.quantity]
        business_metrics.flash_sale_claims.labels("sold_out").inc(len(short))
        return bool(short)

    @staticmethod
    def _row(body: CheckoutBody, key: str, digest: str, view: dict[str, Any]) -> dict[str, Any]:
        """The read-model row of a new order (``view`` as plain data), without ``seq`` and
        ``checkout_input``."""
        return {
            "order_id": view["order_id"],
            "customer_id": body.customer_id,
            "idempotency_key": key,
            "request_hash": digest,
            "location_id": body.location_id,
            "status": view["status"],
            "failure_reason": view["failure_reason"],
            "currency": view["currency"],
            "total_cents": view["amounts"]["total_cents"],
            "view": view,
            "created_at": view["created_at"],
            "updated_at": view["updated_at"],
        }

    async def _at_the_edge(
        self,
        body: CheckoutBody,
        key: str,
        digest: str,
        merged: list[tuple[str, int]],
    ) -> Placed | EdgeOutcome:
        """The sold-out edge (infra/sold_out_edge.py, docs/inventory.md): one Redis round trip
        that answers a repeat of a loser, takes the rate-limit token, and answers a flash
        sale's loser with no SQL and no workflow. Anything else goes on to the normal path,
        told what was done here (priced, the key registered, the token taken)."""
        catalogue = self._state.catalogue
        skus = [sku for sku, _ in merged]
        recent = catalogue.recent(skus)
        checked = False
        cart: _Cart | None = None
        for _ in range(3):
            if recent is None:
                await catalogue.products(skus)
                recent = catalogue.recent(skus)
                if recent is None:
                    # Unknown SKU: the normal path says so, after its repeat check.
                    return EdgeOutcome()
            cart = self._cart(body, key, digest, merged, recent)
            if cart is None:
                return EdgeOutcome()  # the same: a repeat is answered before the cart's problem
            try:
                answer = await self._state.edge.ask(
                    customer_id=body.customer_id,
                    key=key,
                    order_id=cart.view.order_id,
                    request_hash=digest,
                    location_id=body.location_id,
                    hot=cart.hot,
                    priced_from=[(catalogue.cache_key(sku), recent[sku][0]) for sku in skus],
                    loser_row=cart.loser.row if cart.loser is not None else "",
                    checked=checked,
                )
            except (RedisError, OSError) as exc:
                # Unknown: the normal path (its own rate check fails open; the workflow decides).
                log.info("sold-out edge unavailable, taking the normal path: %s", exc)
                return cart.normal
            verdict = answer.verdict
            if verdict == Verdict.SOLD_OUT and cart.loser is not None:
                business_metrics.flash_sale_claims.labels("sold_out").inc(answer.short_lines)
                metrics.orders_created.inc()
                return Placed(created=True, order=cart.loser.view, body=cart.loser.body)
            if verdict == Verdict.PROCEED:
                return replace(cart.normal, rate_taken=True)
            if verdict == Verdict.RATE_LIMITED:
                assert answer.rate is not None
                raise _rate_limited(answer.rate)
            if verdict == Verdict.REPEAT_EDGE:
                if answer.request_hash != digest:
                    raise _key_reused(str(answer.order_id))
                if answer.row is None:
                    return EdgeOutcome()  # its copy is gone: SQL has it once drained
                return Placed(created=False, order=order_resource(answer.row["view"]))
            if verdict == Verdict.STALE_PRICES:
                # The catalogue changed since this process last read it: price from the cache.
                catalogue.forget(skus)
                recent = None
                continue
            if verdict == Verdict.UNKNOWN_KEY and not checked:
                # Sold out, and the index may not know every key (docs/inventory.md): SQL does.
                async with self._state.sessionmaker() as session:
                    existing = await orders.order_by_key(
                        session, customer_id=body.customer_id, idempotency_key=key
                    )
                    await session.commit()
                if existing is not None:
                    return await self._repeat(existing, body, digest)
                checked = True
                continue
            return EdgeOutcome()  # REPEAT_NORMAL: SQL answers
        return EdgeOutcome()  # the catalogue kept changing under this checkout: the normal path

    def _cart(
        self,
        body: CheckoutBody,
        key: str,
        digest: str,
        merged: list[tuple[str, int]],
        recent: dict[str, tuple[str, dict[str, Any]]],
    ) -> _Cart | None:
        """The checkout priced from ``recent`` products, as the normal path and, if a hot
        line is short, the loser; None when the cart is a 422."""
        try:
            currency, lines = price_lines({sku: p for sku, (_, p) in recent.items()}, merged)
        except ApiProblem:
            return None
        view = self._initial_view(body, currency, lines, utcnow_iso())
        hot = [(li.sku, li.quantity) for li in lines if li.hot]
        return _Cart(
            view=view,
            normal=EdgeOutcome(priced=(currency, lines), view=view),
            hot=hot,
            loser=self._loser(body, key, digest, view, lines) if hot else None,
        )

    def _loser(
        self, body: CheckoutBody, key: str, digest: str, view: OrderView, lines: list[OrderLine]
    ) -> _Loser:
        """The answer and the row of this checkout if the edge finds it sold out: FAILED /
        OUT_OF_STOCK at once, a final row (no workflow write can follow one never started)."""
        failed = _out_of_stock(view)
        failed_dict = as_plain(failed)
        inp = self._checkout_input(failed_dict, body, {li.sku for li in lines if li.hot})
        row = {**self._row(body, key, digest, failed_dict), "seq": orders.FINAL_SEQ}
        row["checkout_input"] = as_plain(inp)
        view_json = json.dumps(row.pop("view"), separators=(",", ":"))
        head = json.dumps(row, separators=(",", ":"))
        return _Loser(view=failed, body=view_json.encode(), row=f'{head[:-1]},"view":{view_json}}}')

    async def _repeat(self, existing: Order, body: CheckoutBody, digest: str) -> Placed:
        """The answer to a request whose key was used before: the stored order, or 422."""
        if existing.request_hash != digest:
            raise _key_reused(existing.order_id)
        if existing.status == OrderStatus.PENDING:
            await self._start(await self._stored_input(existing, body))
        return Placed(created=False, order=await self.current_view(existing))

    async def _stored_input(self, order: Order, body: CheckoutBody) -> CheckoutInput:
        stored = checkout_input_of(order.checkout_input)
        if stored is not None:
            return stored
        # A row from before inputs were stored: rebuilt from its view (the price snapshot)
        # and the body (whose hash matched); hot flags as the catalogue says now.
        products = await self._state.catalogue.products(i["sku"] for i in order.view["items"])
        hot = {sku for sku, p in products.items() if p is not None and p.get("hot")}
        return self._checkout_input(dict(order.view), body, hot)

    async def _check_rate(self, customer_id: str) -> None:
        try:
            decision = await self._state.checkout_limiter.allow(customer_id)
        except (RedisError, OSError, TimeoutError) as exc:
            # Fail open: a Redis outage must not stop checkout; the workflow still guards stock.
            metrics.rate_limiter_fail_open.inc()
            log.warning("rate limiter unavailable, letting %s through: %s", customer_id, exc)
            return
        if not decision.allowed:
            raise _rate_limited(decision)

    async def _price(self, lines: list[tuple[str, int]]) -> tuple[str, list[OrderLine]]:
        products = await self._state.catalogue.products(sku for sku, _ in lines)
        return price_lines(products, lines)

    def _initial_view(
        self, body: CheckoutBody, currency: str, lines: list[OrderLine], now: str
    ) -> OrderView:
        return OrderView.placed(
            order_id="o_" + uuid.uuid4().hex,
            customer_id=body.customer_id,
            location_id=body.location_id,
            currency=currency,
            lines=lines,
            delivery_fee_cents=DELIVERY_FEE_CENTS,
            at=now,
        )

    def _checkout_input(
        self, view: dict[str, Any], body: CheckoutBody, hot: set[str]
    ) -> CheckoutInput:
        """The workflow input: prices from the stored view (the snapshot), the rest from the
        body (whose hash matched the stored one, so it is the body the order was made from)."""
        settings = self._state.settings
        return CheckoutInput(
            order_id=view["order_id"],
            customer_id=view["customer_id"],
            location_id=view["location_id"],
            currency=view["currency"],
            lines=[
                OrderLine(
                    sku=i["sku"],
                    quantity=i["quantity"],
                    unit_price_cents=i["unit_price_cents"],
                    hot=i["sku"] in hot,
                )
                for i in view["items"]
            ],
            delivery=DeliveryAddress(
                address=body.delivery.address, lat=body.delivery.lat, lng=body.delivery.lng
            ),
            payment_token=body.payment.token,
            delivery_fee_cents=view["amounts"]["delivery_fee_cents"],
            created_at=view["created_at"],
            timeouts=OrderTimeouts(
                payment_timeout_s=settings.payment_timeout_s,
                offer_timeout_s=settings.offer_timeout_s,
                max_offers=settings.max_offers,
                reservation_ttl_s=settings.reservation_ttl_s,
            ),
            dispatch_task_queue=self._state.dispatch_task_queue,
            notify_merchant=bool(settings.merchant_webhook_url),
        )

    async def _start(self, inp: CheckoutInput) -> None:
        total = checkout_total_cents(inp)
        search_attributes = None
        if self._state.search_attributes:
            search_attributes = TypedSearchAttributes(
                [
                    SearchAttributePair(ORDER_STATUS_KEY, OrderStatus.PENDING.value),
                    SearchAttributePair(CUSTOMER_ID_KEY, inp.customer_id),
                    SearchAttributePair(ORDER_TOTAL_CENTS_KEY, total),
                    SearchAttributePair(FAILURE_REASON_KEY, ""),
                ]
            )
        await self._temporal.start(
            order_start(inp),
            task_queue=self._state.orders_task_queue,
            search_attributes=search_attributes,
            unavailable_detail=_STORED_NOT_STARTED,
        )

    # ------------------------------------------------------------------------------- read

    async def current_view(self, order: Order) -> OrderView:
        """The order as of now, with its refunds from the refunds table."""
        view = await self._order_view(order)
        async with self._state.sessionmaker() as session:
            refunds = await refund_book.of_orders(session, [order.order_id])
            await session.commit()
        return order_resource(with_refunds(view, refunds.get(order.order_id, [])))

    async def _order_view(self, order: Order) -> dict[str, Any]:
        """The workflow's own view while it runs, else the read model (a transition or two
        behind at most; better than no answer)."""
        stored = dict(order.view)
        if order.status in TERMINAL_STATUSES or self._state.temporal.client is None:
            return stored
        live = await self._query(order_workflow_id(order.order_id), QUERY_ORDER, OrderView)
        if live is None:
            return stored
        if live.dispatching:
            # The open offer as the delivery knows it: deliveries started with
            # ``quiet-dispatch`` do not tell the order (``OrderView.with_offer``). None: not
            # started yet, or just ended (the order hears of it next), so no open offer.
            dispatch = await self._query(
                delivery_workflow_id(order.order_id), QUERY_DELIVERY, DeliveryState
            )
            if dispatch is not None:
                live = live.with_offer(dispatch)
        return asdict(live)

    async def _query(self, workflow_id: str, query: str, result_type: type[_T]) -> _T | None:
        """The workflow's answer, or None (logged) when it gives none."""
        try:
            return await self._temporal.query(workflow_id, query, result_type)
        except _UNANSWERED as exc:
            log.info("query %s of %s failed: %s", query, workflow_id, exc)
            return None

    async def get(self, session: AsyncSession, order_id: str) -> OrderView:
        order = await self._load(session, order_id)
        return await self.current_view(order)

    async def _load(self, session: AsyncSession, order_id: str) -> Order:
        # populate_existing: a second read in the same session must see the newest row.
        order = await session.get(Order, order_id, populate_existing=True)
        # End the transaction before any Temporal call (SQLite holds its lock until then).
        await session.commit()
        if order is None:
            order = await self._undrained(order_id)
        if order is None:
            raise ApiProblem(404, NOT_FOUND, f"order {order_id!r} does not exist")
        return order

    async def _undrained(self, order_id: str) -> Order | None:
        """A loser answered at the edge whose row the write-behind has not written yet: its
        copy in Redis (docs/inventory.md). Redis unreachable: as if there were none."""
        try:
            row = await order_copy(self._state.redis, order_id)
        except (RedisError, OSError) as exc:
            log.info("edge copy of order %s unreadable: %s", order_id, exc)
            return None
        return Order(**row) if row is not None else None

    async def list_page(
        self,
        session: AsyncSession,
        *,
        customer_id: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> OrderPage:
        before = None
        if cursor is not None:
            created_at, order_id = decode_cursor(cursor, 2)
            before = (created_at, order_id)
        rows = await orders.list_orders(
            session, customer_id=customer_id, status=status, before=before, limit=limit + 1
        )
        page = rows[:limit]
        refunds = await refund_book.of_orders(session, [r.order_id for r in page])
        await session.commit()
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(page[-1].created_at, page[-1].order_id)
        items = [
            order_resource(with_refunds(dict(r.view), refunds.get(r.order_id, []))) for r in page
        ]
        return OrderPage(items=items, next_cursor=next_cursor)

    # ----------------------------------------------------------------------------- cancel

    async def cancel(self, session: AsyncSession, order_id: str, reason: str) -> OrderView:
        await self._load(session, order_id)
        try:
            await self._temporal.update(
                order_workflow_id(order_id),
                UPDATE_CANCEL,
                CancelRequest(reason=reason),
                CancelResult,
            )
        except UpdateRefused as exc:
            view = await self.get(session, order_id)
            if exc.error_type == errors.ALREADY_APPLIED:
                return view  # repeating an accepted cancel: same answer, nothing more happens
            if exc.error_type == errors.NOT_CANCELLABLE:
                if view.status == OrderStatus.CANCELLED:
                    return view  # repeating an accepted cancel
                detail = f"order is {view.status}; it can be cancelled only before pick-up"
                raise _conflict(view, NOT_CANCELLABLE, detail) from exc
            code = snake_case(exc.error_type) if exc.error_type else NOT_CANCELLABLE
            raise _conflict(view, code, f"cancel refused: {exc}") from exc
        except WorkflowNotRunning as exc:
            # The workflow has closed (or never started): the read model has the last word.
            view = await self.get(session, order_id)
            if view.status == OrderStatus.CANCELLED:
                return view
            detail = f"order is {view.status} and no longer running; it cannot be cancelled"
            raise _conflict(view, NOT_CANCELLABLE, detail) from exc
        return await self.get(session, order_id)

    # ---------------------------------------------------------------------- courier events

    async def courier_event(
        self, session: AsyncSession, order_id: str, event: CourierEventIn
    ) -> CourierEventAccepted:
        await self._load(session, order_id)
        if event.type in (CourierEventType.ACCEPTED, CourierEventType.DECLINED):
            # Offers belong to the delivery workflow; it ends once a courier is assigned.
            workflow_id, update, closed_code = (
                delivery_workflow_id(order_id),
                UPDATE_COURIER_RESPONSE,
                NOT_DISPATCHING,
            )
        else:
            workflow_id, update, closed_code = (
                order_workflow_id(order_id),
                UPDATE_COURIER_EVENT,
                OUT_OF_ORDER,
            )
        try:
            result = await self._temporal.update(
                workflow_id,
                update,
                CourierEvent(courier_id=event.courier_id, type=event.type),
                CourierEventResult,
            )
        except UpdateRefused as exc:
            error_type = exc.error_type
            if error_type == errors.ALREADY_APPLIED:
                return await self._repeated_event(session, order_id, event)
            code = (
                _EVENT_REJECTION_CODES.get(error_type, snake_case(error_type))
                if error_type
                else "event_rejected"
            )
            raise ApiProblem(409, code, f"{event.type.value} refused: {exc}") from exc
        except WorkflowNotRunning as exc:
            if await self._already_recorded(session, order_id, event):
                return await self._repeated_event(session, order_id, event)
            detail = (
                "the order is not being dispatched (no open offer)"
                if closed_code == NOT_DISPATCHING
                else f"the order does not accept {event.type.value} now"
            )
            raise ApiProblem(409, closed_code, detail) from exc
        if event.type in (CourierEventType.ACCEPTED, CourierEventType.DECLINED):
            business_metrics.dispatch_responses.labels(event.type.value).inc()
        return CourierEventAccepted(
            order_id=order_id,
            courier_id=event.courier_id,
            type=event.type.value,
            status=result.status,
            accepted=result.accepted,
        )

    async def _already_recorded(
        self, session: AsyncSession, order_id: str, event: CourierEventIn
    ) -> bool:
        """After its workflow has closed: is this event one the order already took from this
        courier (its accept, or its delivery)?"""
        if event.type == CourierEventType.ACCEPTED:
            # The courier's row says so from the accept on (until it is freed), also while the
            # order's workflow cannot be asked and its read model is a transition behind.
            assigned = await couriers.assigned_to(
                session, order_id=order_id, courier_id=event.courier_id
            )
            await session.commit()
            if assigned:
                return True
        view = await self.get(session, order_id)
        if view.delivery.courier_id != event.courier_id:
            return False
        if event.type == CourierEventType.ACCEPTED:
            return True
        return event.type in (CourierEventType.PICKED_UP, CourierEventType.DELIVERED) and (
            view.status == OrderStatus.DELIVERED
        )

    async def _repeated_event(
        self, session: AsyncSession, order_id: str, event: CourierEventIn
    ) -> CourierEventAccepted:
        """The same event again from the courier that sent it: 202, and no second effect."""
        view = await self.get(session, order_id)
        return CourierEventAccepted(
            order_id=order_id,
            courier_id=event.courier_id,
            type=event.type.value,
            status=view.status,
            accepted=True,
            duplicate=True,
        )

    # ----------------------------------------------------------------------------- repair

    async def repair(
        self, session: AsyncSession, order_id: str, reason: str, operator: str
    ) -> RepairedOrder:
        """Resume the compensations of an order parked in NEEDS_ATTENTION (operators)."""
        await self._load(session, order_id)
        log.warning("repair of order %s by %s: %s", order_id, operator, reason)
        try:
            result = await self._temporal.update(
                order_workflow_id(order_id),
                UPDATE_REPAIR,
                RepairRequest(reason=reason, operator=operator),
                RepairResult,
                rpc_timeout=REPAIR_TIMEOUT,
                unavailable_detail=(
                    "the repair is accepted or under way but did not finish in time; "
                    "GET the order to follow it"
                ),
            )
        except (UpdateRefused, WorkflowNotRunning) as exc:
            view = await self.get(session, order_id)
            detail = (
                f"repair refused: {exc}"
                if isinstance(exc, UpdateRefused)
                else f"order is {view.status} and no longer running; nothing to repair"
            )
            raise _conflict(view, NOT_REPAIRABLE, detail) from exc
        view = await self.get(session, order_id)
        return RepairedOrder.of(
            view, RepairReport(status=result.status, remaining=list(result.remaining))
        )
