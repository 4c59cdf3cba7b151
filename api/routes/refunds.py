"""Refunds of an order: request one (idempotent per key), read them.

``POST /v1/orders/{order_id}/refunds`` decides at once, in one database transaction, whether
the refund fits: it stores the refund and commits its amount against the capture with one
conditional UPDATE on ``payments`` (see ``store/refunds.py``), so two refunds racing for the
last cents cannot both pass, whichever API replica takes them. Only then does it start
``RefundWorkflow``, which does the money movement. If the workflow service is down the refund
stays stored (PENDING) and the answer is 503; a retry with the same key starts it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth import OrderReaderDep, StaffDep
from api.deps import IdempotencyKeyDep, SessionDep, StateDep
from api.errors import NOT_FOUND, VALIDATION_ERROR, ApiProblem
from api.openapi import problems
from api.routes.orders import OrderIdPath
from api.schemas import MAX_ORDER_LINES, AmountCents, Id, Quantity, Text
from api.state import AppState
from api.temporal_calls import TemporalCalls
from domain.messages import RefundInput, RefundView, RestockLine, refund_start
from store import refunds as book
from store.models import Order

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/orders", tags=["refunds"])

# Problem codes of the refunds resource.
NOT_REFUNDABLE = "not_refundable"
REFUND_EXCEEDS_CAPTURED = "refund_exceeds_captured"
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"

_STORED_NOT_STARTED = (
    "the workflow service is not answering; the refund is stored and a retry with the"
    " same Idempotency-Key starts it"
)

RefundIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


# --------------------------------------------------------------------------------- bodies


class RestockLineIn(BaseModel):
    sku: Id
    quantity: Quantity


class RefundBody(BaseModel):
    """``POST /v1/orders/{order_id}/refunds``."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "amount_cents": 1299,
                "reason": "one item arrived damaged",
                "restock": [{"sku": "SKU-1", "quantity": 1}],
            }
        }
    )

    amount_cents: AmountCents
    reason: Text
    restock: Annotated[list[RestockLineIn], Field(max_length=MAX_ORDER_LINES)] | None = None
    """Units to put back on sale at the order's location once the money is back; each SKU
    must be on the order, and an order's refunds together restock at most what was ordered."""


class RefundList(BaseModel):
    """The ``Refund`` resource is ``domain.messages.RefundView`` itself."""

    items: list[RefundView]


# -------------------------------------------------------------------------------- service


@dataclass(frozen=True)
class Requested:
    created: bool
    view: RefundView

    @property
    def refund(self) -> dict[str, Any]:
        """The refund as JSON (what the route answers)."""
        return asdict(self.view)


def merge_restock(body: RefundBody) -> list[RestockLine]:
    """Quantities of repeated SKUs added up (the restock fence is one row per SKU)."""
    merged: dict[str, int] = {}
    for line in body.restock or []:
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    return [RestockLine(sku, qty) for sku, qty in merged.items()]


def request_hash(body: RefundBody, restock: list[RestockLine]) -> str:
    canonical = json.dumps(
        {
            "amount_cents": body.amount_cents,
            "reason": body.reason,
            "restock": sorted([li.sku, li.quantity] for li in restock),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _key_reused(e: book.IdempotencyKeyReused) -> ApiProblem:
    return ApiProblem(
        422,
        IDEMPOTENCY_KEY_REUSED,
        "this Idempotency-Key was used with a different request body",
        extra={"refund_id": e.refund_id},
    )


class RefundsService:
    def __init__(self, state: AppState) -> None:
        self._state = state

    async def request(
        self, session: AsyncSession, order_id: str, body: RefundBody, key: str
    ) -> Requested:
        order = await session.get(Order, order_id)
        if order is None:
            await session.rollback()
            raise ApiProblem(404, NOT_FOUND, f"order {order_id!r} does not exist")
        # Read now: a rollback below expires the row, and reloading it is I/O.
        status, currency, location_id = order.status, order.currency, order.location_id
        ordered: dict[str, int] = {}
        for item in order.view.get("items", []):
            ordered[item["sku"]] = ordered.get(item["sku"], 0) + int(item["quantity"])
        restock = merge_restock(body)
        digest = request_hash(body, restock)
        # A repeat is answered from what was stored, before any check of the request against
        # the order as it is now (what is left of the capture, what other refunds restock).
        try:
            admitted = await book.repeat_of(
                session, order_id=order_id, idempotency_key=key, request_hash=digest
            )
        except book.IdempotencyKeyReused as e:
            await session.rollback()
            raise _key_reused(e) from e
        if admitted is not None:
            await session.commit()
            return await self._started(admitted, order_id, location_id)
        for line in restock:
            if line.sku not in ordered:
                await session.rollback()
                raise ApiProblem(
                    422, VALIDATION_ERROR, f"restock: {line.sku!r} is not an item of this order"
                )
            if line.quantity > ordered[line.sku]:
                await session.rollback()
                raise ApiProblem(
                    422,
                    VALIDATION_ERROR,
                    f"restock: {line.quantity} of {line.sku} is more than the"
                    f" {ordered[line.sku]} ordered",
                )
        try:
            admitted = await book.admit(
                session,
                refund_id=f"r_{uuid.uuid4().hex}",
                order_id=order_id,
                idempotency_key=key,
                request_hash=digest,
                amount_cents=body.amount_cents,
                currency=currency,
                reason=body.reason,
                restock=restock,
                ordered=ordered,
            )
        except book.NotRefundable as e:
            await session.rollback()
            raise ApiProblem(
                409,
                NOT_REFUNDABLE,
                f"{e}; a refund is possible only after the payment is captured",
                extra={"order_status": status},
            ) from e
        except book.RefundExceedsCaptured as e:
            await session.rollback()
            raise ApiProblem(
                422,
                REFUND_EXCEEDS_CAPTURED,
                str(e),
                extra={"refundable_cents": e.refundable_cents},
            ) from e
        except book.IdempotencyKeyReused as e:
            await session.rollback()
            raise _key_reused(e) from e
        except book.RestockExceedsOrdered as e:
            await session.rollback()
            raise ApiProblem(422, VALIDATION_ERROR, f"restock: {e}") from e
        await session.commit()
        return await self._started(admitted, order_id, location_id)

    async def _started(self, admitted: book.Admitted, order_id: str, location_id: str) -> Requested:
        refund = admitted.refund
        if refund.status == book.PENDING:
            # Also on a repeat: the first request may have stored the refund while the
            # workflow service was down. USE_EXISTING makes a second start a no-op.
            if admitted.payment_id is None:  # pragma: no cover - a capture always has an id
                raise RuntimeError(f"the captured payment of order {order_id} has no PSP id")
            inp = RefundInput.of(
                refund,
                payment_id=admitted.payment_id,
                location_id=location_id,
                notify_merchant=bool(self._state.settings.merchant_webhook_url),
            )
            await TemporalCalls(self._state).start(
                refund_start(inp),
                task_queue=self._state.orders_task_queue,
                unavailable_detail=_STORED_NOT_STARTED,
            )
        return Requested(created=admitted.created, view=refund)

    async def get(self, session: AsyncSession, order_id: str, refund_id: str) -> RefundView:
        refund = await book.get(session, refund_id=refund_id)
        await session.commit()
        if refund is None or refund.order_id != order_id:
            raise ApiProblem(404, NOT_FOUND, f"order {order_id!r} has no refund {refund_id!r}")
        return refund

    async def of_order(self, session: AsyncSession, order_id: str) -> RefundList:
        order = await session.get(Order, order_id)
        refunds = (await book.of_orders(session, [order_id])).get(order_id, [])
        await session.commit()
        if order is None:
            raise ApiProblem(404, NOT_FOUND, f"order {order_id!r} does not exist")
        return RefundList(items=refunds)


# --------------------------------------------------------------------------------- routes


@router.post(
    "/{order_id}/refunds",
    status_code=202,
    summary="Refund an order, fully or partly (after capture)",
    description=(
        "Needs an `Idempotency-Key` header (1-255 characters), scoped to the order. The first "
        "request answers 202 with the `Refund` (status `PENDING`) and `Location`; the same key "
        "and body again answers 200 with the same refund; the same key with another body "
        "answers 422 `idempotency_key_reused`. A refund that would take the order's refunds "
        "past what was captured is 422 `refund_exceeds_captured` (decided atomically, also "
        "when refunds race); before capture it is 409 `not_refundable`. The order's status "
        "does not change: the money shows in the order's `amounts`, `payment` and `refunds`."
    ),
    responses={
        200: {"model": RefundView, "description": "Repeat of an earlier request"},
        202: {"model": RefundView, "description": "Accepted; the refund workflow runs"},
        **problems(
            {
                400: "Missing or bad Idempotency-Key",
                404: "No such order",
                409: "not_refundable: nothing captured yet",
                422: "validation_error, refund_exceeds_captured, idempotency_key_reused",
                503: "temporal_unavailable: the refund is stored; retry with the same key",
            }
        ),
    },
)
async def request_refund(
    order_id: OrderIdPath,
    staff: StaffDep,
    body: RefundBody,
    key: IdempotencyKeyDep,
    session: SessionDep,
    state: StateDep,
    response: Response,
) -> RefundView:
    requested = await RefundsService(state).request(session, order_id, body, key)
    response.status_code = 202 if requested.created else 200
    response.headers["Location"] = f"/v1/orders/{order_id}/refunds/{requested.view.refund_id}"
    return requested.view


@router.get(
    "/{order_id}/refunds",
    summary="Every refund of an order, oldest first",
    responses=problems({404: "No such order"}),
)
async def list_refunds(
    order_id: OrderIdPath, reader: OrderReaderDep, session: SessionDep, state: StateDep
) -> RefundList:
    return await RefundsService(state).of_order(session, order_id)


@router.get(
    "/{order_id}/refunds/{refund_id}",
    summary="One refund",
    responses=problems({404: "No such order or refund"}),
)
async def get_refund(
    order_id: OrderIdPath,
    refund_id: RefundIdPath,
    reader: OrderReaderDep,
    session: SessionDep,
    state: StateDep,
) -> RefundView:
    return await RefundsService(state).get(session, order_id, refund_id)
