"""Orders: place (idempotent), read, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from api.auth import CallerDep, OrderReaderDep
from api.checkout_fast_path import edge_answer_of
from api.deps import IdempotencyKeyDep, SessionDep, StateDep
from api.openapi import problems
from api.orders_service import OrdersService
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from api.schemas import CancelBody, CheckoutBody, OrderPage
from domain.messages import OrderView
from domain.status import OrderStatus

router = APIRouter(prefix="/v1/orders", tags=["orders"])

OrderIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.post(
    "",
    status_code=202,
    response_model=OrderView,
    summary="Place an order",
    description=(
        "Needs an `Idempotency-Key` header (1-255 characters). The first request answers 202 "
        "with `Location`; the same customer, key and body again answers 200 with the same "
        "order; the same key with another body answers 422 `idempotency_key_reused`. Lines "
        "with the same SKU are merged (quantities added). Prices are snapshotted from the "
        "catalogue; all items must share one currency (422 `currency_mismatch`)."
    ),
    responses={
        200: {"model": OrderView, "description": "Repeat of an earlier request"},
        202: {"model": OrderView, "description": "Accepted; the workflow runs"},
        **problems(
            {
                400: "Missing or bad Idempotency-Key",
                422: "validation_error, unknown_sku, unknown_location, currency_mismatch, "
                "idempotency_key_reused",
                429: "rate_limited (see Retry-After)",
                503: "temporal_unavailable: the order is stored; retry with the same key",
            }
        ),
    },
)
async def place_order(
    caller: CallerDep,
    body: CheckoutBody,
    key: IdempotencyKeyDep,
    state: StateDep,
    request: Request,
    response: Response,
) -> OrderView | Response:
    caller.must_be_customer(body.customer_id)
    # The fast path (api/checkout_fast_path.py) may have asked the edge for this request.
    placed = await OrdersService(state).place(body, key, edge=edge_answer_of(request, body, key))
    location = f"/v1/orders/{placed.order.order_id}"
    if placed.body is not None:
        # Serialized once, by the edge that stored it (the same Order as the model's).
        return Response(
            placed.body,
            status_code=202 if placed.created else 200,
            media_type="application/json",
            headers={"Location": location},
        )
    response.status_code = 202 if placed.created else 200
    response.headers["Location"] = location
    return placed.order


@router.get("", summary="List orders, newest first")
async def list_orders(
    caller: CallerDep,
    session: SessionDep,
    state: StateDep,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    status: OrderStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> OrderPage:
    return await OrdersService(state).list_page(
        session,
        customer_id=caller.orders_scope(customer_id),
        status=status.value if status is not None else None,
        limit=limit,
        cursor=cursor,
    )


@router.get(
    "/{order_id}",
    summary="One order (reflects every transition that happened before the call)",
    responses=problems({404: "No such order"}),
)
async def get_order(
    order_id: OrderIdPath, reader: OrderReaderDep, session: SessionDep, state: StateDep
) -> OrderView:
    return await OrdersService(state).get(session, order_id)


@router.post(
    "/{order_id}/cancel",
    summary="Cancel an order before pick-up",
    responses={
        200: {"description": "Cancel accepted (or already cancelled)"},
        **problems(
            {404: "No such order", 409: "not_cancellable: picked up or at a terminal state"}
        ),
    },
)
async def cancel_order(
    order_id: OrderIdPath,
    canceller: OrderReaderDep,
    body: CancelBody,
    session: SessionDep,
    state: StateDep,
) -> OrderView:
    return await OrdersService(state).cancel(session, order_id, body.reason)
