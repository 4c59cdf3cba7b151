"""``POST /v1/orders`` asked at the sold-out edge before FastAPI routes it.

A flash sale's losers are most of a sale's requests, and once the edge script
(infra/sold_out_edge.py) has answered one, what is left is writing 202 and the JSON the edge
stored. Routing, dependency solving and the route's response handling cost more than that
(docs/benchmarks.md, "Flash sale through HTTP"), so this ASGI layer, inside the error,
metrics and tracing middleware and outside the router, reads the request, checks it as the
route would (the same ``CheckoutBody`` model, Idempotency-Key check and customer check) and
asks ``OrdersService.edge``:

* a loser answered at the edge: 202 with its body and ``Location``, here;
* a problem (401/403/429/422 idempotency_key_reused, 400 for the key): the problem, here;
* anything else (not sold out, a repeat, a body the model refuses, an error): the request
  goes on to the route unchanged, the body replayed, with what the edge did (the rate-limit
  token taken, the key registered, the cart priced) left in the request's state, so the
  route's ``place`` goes on from there rather than asking the edge again.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import idempotency_key
from api.errors import ApiProblem
from api.orders_service import OrdersService, Placed
from api.schemas import CheckoutBody

EDGE_STATE_KEY = "checkout_edge"
"""``request.state.checkout_edge``: (body, key, what ``OrdersService.edge`` answered)."""

_PATH = "/v1/orders"


class _Route:
    """What the metrics middleware reads off ``scope["route"]``: the route template."""

    path = _PATH


_ROUTE = _Route()


class CheckoutFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != _PATH:
            await self.app(scope, receive, send)
            return
        raw, messages = await _read(receive)
        request = Request(scope)
        try:
            handled = await self._answer(scope, request, raw, send)
        except ApiProblem as problem:
            scope["route"] = _ROUTE
            await problem.response()(scope, receive, send)
            return
        if handled:
            return

        replay = iter(messages)

        async def again() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()  # the client's disconnect, when it comes

        await self.app(scope, again, send)

    async def _answer(self, scope: Scope, request: Request, raw: bytes, send: Send) -> bool:
        """True when the edge answered (the response is sent); False: on to the route."""
        if "json" not in (request.headers.get("content-type") or ""):
            return False
        try:
            body = CheckoutBody.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            return False  # the route answers 422 as it always has
        # In the route's order: the credentials (401), the key (400), the customer (403).
        state = scope["app"].state.tradeflow
        caller = await state.auth.caller(request) if state.auth.enabled else None
        key = await idempotency_key(request.headers.get("idempotency-key"))
        if caller is not None:
            caller.must_be_customer(body.customer_id)
        try:
            edge = await OrdersService(state).edge(body, key)
        except ApiProblem:
            raise
        except Exception:  # the route answers it, with its error handlers
            return False
        if isinstance(edge, Placed) and edge.body is not None:
            scope["route"] = _ROUTE
            await _send_json(edge, send)
            return True
        scope.setdefault("state", {})[EDGE_STATE_KEY] = (body, key, edge)
        return False


async def _send_json(placed: Placed, send: Send) -> None:
    assert placed.body is not None
    await send(
        {
            "type": "http.response.start",
            "status": 202 if placed.created else 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(placed.body)).encode()),
                (b"location", f"{_PATH}/{placed.order.order_id}".encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": placed.body})


async def _read(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body, and the messages it came in (to replay them)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


def edge_answer_of(request: Request, body: CheckoutBody, key: str) -> Any:
    """What the fast path's edge call answered for this very request, or None."""
    stashed = request.scope.get("state", {}).get(EDGE_STATE_KEY)
    if stashed is None:
        return None
    stashed_body, stashed_key, edge = stashed
    return edge if (stashed_body == body and stashed_key == key) else None
