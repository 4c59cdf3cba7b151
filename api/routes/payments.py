"""PSP webhooks: checked on the raw body, deduplicated by event id, handed to the order.

``POST /v1/payments/webhook`` answers 200 to every authentic event it has dealt with, so the
PSP stops retrying: the first delivery hands the word to ``order-<order_id>`` as the update
``payment_outcome`` (an order authorizing inline waits for it), or, when that order is not
waiting for it, signals the payment child ``payment-<order_id>`` that orders started before
``PATCH_INLINE_PAYMENT`` run; a repeat is a ``duplicate`` and changes nothing; an event for an
order whose payment is no longer waiting (finished, or never ours) is acknowledged and
ignored. Only an event that could not be handed over (the workflow service is down) gets a
503, which the PSP retries.

Dedupe under racing deliveries (two API replicas, the PSP retrying while the first attempt is
still in flight) is two layers:

1. ``webhook_events`` has the event id as its primary key. The first delivery inserts it as
   ``received`` (``INSERT ... ON CONFLICT DO NOTHING``, atomic on SQLite and PostgreSQL), hands
   it over, then marks it ``signalled``/``ignored``. A later delivery that finds a finished row
   answers ``duplicate`` without touching Temporal.
2. A delivery that finds the row still ``received`` (another replica is mid-way, or crashed or
   hit a Temporal outage after inserting) hands it over again instead of trusting it: the
   order keeps the event ids it has taken and refuses a repeat (``AlreadyApplied``, no
   history), the payment child drops repeats likewise, so the effect happens once while
   a crash between insert and signal can never lose the event. A dedupe marker alone (a Redis
   ``SET NX`` or the insert) taken as "done" would lose it exactly then.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated

from fastapi import APIRouter, Header, Request
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import StateDep
from api.errors import TEMPORAL_UNAVAILABLE, VALIDATION_ERROR, ApiProblem, unavailable
from api.openapi import problems
from api.schemas import EventAmountCents
from api.state import AppState
from api.temporal_calls import NOT_CONNECTED, TemporalCalls, UpdateRefused, WorkflowNotRunning
from domain import errors as business
from domain.messages import PaymentOutcome, PaymentOutcomeResult
from domain.names import (
    SIGNAL_PAYMENT_OUTCOME,
    UPDATE_PAYMENT_OUTCOME,
    order_workflow_id,
    payment_workflow_id,
)
from domain.status import PspEventType
from psp.signing import DEFAULT_TOLERANCE_S, SIGNATURE_HEADER, verify
from store import payments as payment_book
from store import webhooks
from store.webhooks import IGNORED, RECEIVED, SIGNALLED

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/payments", tags=["payments"])

INVALID_SIGNATURE = "invalid_signature"
PAYLOAD_TOO_LARGE = "payload_too_large"

HANDLED_TYPES = frozenset(PspEventType)

MAX_BODY_BYTES = 64 * 1024
MAX_SIGNATURE_HEADER = 2048

WEBHOOKS = Counter(
    "tradeflow_psp_webhooks_total",
    "PSP webhooks received, by what became of them.",
    ["outcome"],
)


class PspEvent(BaseModel):
    """The webhook body. Members beyond these are ignored (the PSP may add some)."""

    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    type: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    """``payment_intent.succeeded`` or ``payment_intent.failed``; others are acknowledged."""
    payment_id: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    amount_cents: EventAmountCents


class WebhookReceived(BaseModel):
    received: bool = True
    duplicate: bool
    """True when this event id had been delivered before (its effect, if any, happened once)."""


# --------------------------------------------------------------------------------- checks


async def _webhook_secret(request: Request, state: StateDep) -> str:
    # The secret may live in a file in the data dir: read it once, off the event loop.
    secret: str | None = getattr(request.app.state, "psp_webhook_secret", None)
    if secret is None:
        secret = await asyncio.to_thread(lambda: state.settings.resolved_webhook_secret)
        request.app.state.psp_webhook_secret = secret
    return secret


async def _raw_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiProblem(
            413, PAYLOAD_TOO_LARGE, f"webhook bodies are at most {MAX_BODY_BYTES} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiProblem(
                413, PAYLOAD_TOO_LARGE, f"webhook bodies are at most {MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _check_signature(secret: str, raw: bytes, header: str | None) -> None:
    if not header:
        raise ApiProblem(400, INVALID_SIGNATURE, f"the {SIGNATURE_HEADER} header is required")
    if len(header) > MAX_SIGNATURE_HEADER or not verify(secret, raw, header):
        stale = len(header) <= MAX_SIGNATURE_HEADER and verify(
            secret, raw, header, tolerance_s=math.inf
        )
        detail = (
            f"the signature timestamp is more than {DEFAULT_TOLERANCE_S} s from now"
            if stale
            else "the signature does not match the body"
        )
        raise ApiProblem(400, INVALID_SIGNATURE, detail)


def _parse(raw: bytes) -> PspEvent:
    try:
        return PspEvent.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {
                "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]
        )
        raise ApiProblem(
            400, VALIDATION_ERROR, detail or "invalid webhook body", extra={"errors": errors}
        ) from exc


# ------------------------------------------------------------------------ dedupe + signal


async def _claim(state: AppState, event: PspEvent, outcome: str, detail: str | None) -> str | None:
    """Store the event. None when this delivery is the first; else the stored outcome."""
    async with state.sessionmaker() as session, session.begin():
        return await webhooks.claim(
            session,
            event_id=event.event_id,
            type=event.type,
            order_id=event.order_id,
            payment_id=event.payment_id,
            amount_cents=event.amount_cents,
            outcome=outcome,
            detail=detail,
        )


async def _finish(state: AppState, event_id: str, outcome: str, detail: str | None) -> None:
    async with state.sessionmaker() as session, session.begin():
        await webhooks.finish(session, event_id=event_id, outcome=outcome, detail=detail)


async def _note_outcome(state: AppState, event: PspEvent) -> None:
    """The payment row follows the PSP's word now; the workflow acts on the signal."""
    async with state.sessionmaker() as session, session.begin():
        await payment_book.note_webhook_outcome(
            session,
            order_id=event.order_id,
            payment_id=event.payment_id,
            succeeded=event.type == PspEventType.SUCCEEDED,
            amount_cents=event.amount_cents,
        )


async def _signal(state: AppState, event: PspEvent) -> tuple[str, str | None]:
    """Hand the event to the order, else to its payment child: (``signalled`` | ``ignored``,
    why ignored)."""
    outcome = PaymentOutcome(
        event_id=event.event_id,
        type=event.type,
        payment_id=event.payment_id,
        amount_cents=event.amount_cents,
    )
    calls = TemporalCalls(state)
    try:
        await calls.update(
            order_workflow_id(event.order_id),
            UPDATE_PAYMENT_OUTCOME,
            outcome,
            PaymentOutcomeResult,
        )
        return SIGNALLED, None
    except WorkflowNotRunning:
        # Closed (the order finished) or never existed; a payment workflow started on its
        # own is the one place left that may wait for this.
        why = "no running order or payment workflow (order finished or unknown)"
    except UpdateRefused as refused:
        if refused.error_type == business.ALREADY_APPLIED:
            return SIGNALLED, None  # a repeat of a word the order took: its effect happened
        # Not waiting for it (or a worker from before the update): a payment child of an
        # order started before PATCH_INLINE_PAYMENT may be.
        why = str(refused)
    try:
        await calls.signal(payment_workflow_id(event.order_id), SIGNAL_PAYMENT_OUTCOME, outcome)
    except WorkflowNotRunning:
        return IGNORED, why
    return SIGNALLED, None


# ---------------------------------------------------------------------------------- route


@router.post(
    "/webhook",
    summary="A signed event from the PSP",
    description=(
        f'`{SIGNATURE_HEADER}: t=<unix>,v1=<hex>`, the HMAC-SHA256 of `"<t>.<raw body>"` '
        "under the shared secret, checked on the exact bytes received; a `t` more than "
        f"{DEFAULT_TOLERANCE_S} s away from now is refused like a wrong signature. Answers "
        '200 `{"received": true, "duplicate": bool}` for every authentic event, including '
        "repeats (`duplicate: true`, no second effect), events for orders whose payment is no "
        "longer waiting, unknown orders and event types tradeflow does not handle (all "
        "acknowledged and ignored). 503 `temporal_unavailable` when the event could not be "
        "handed over; the PSP's retry delivers it."
    ),
    openapi_extra={
        # The handler reads the raw bytes (the signature covers them), so FastAPI cannot infer
        # the body: document it.
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PspEvent.model_json_schema()}},
        }
    },
    responses=problems(
        {
            400: "invalid_signature or validation_error",
            413: f"Body over {MAX_BODY_BYTES} bytes",
            503: "temporal_unavailable: retry later",
        }
    ),
)
async def receive_psp_webhook(
    request: Request,
    state: StateDep,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> WebhookReceived:
    raw = await _raw_body(request)
    try:
        _check_signature(await _webhook_secret(request, state), raw, signature)
        event = _parse(raw)
    except ApiProblem as problem:
        WEBHOOKS.labels(problem.code).inc()
        log.warning("PSP webhook refused: %s", problem)
        raise

    if event.type not in HANDLED_TYPES:
        unhandled = f"event type {event.type!r} is not handled"
        earlier = await _claim(state, event, IGNORED, unhandled)
        WEBHOOKS.labels("duplicate" if earlier else IGNORED).inc()
        log.info("PSP webhook %s ignored: %s", event.event_id, unhandled)
        return WebhookReceived(duplicate=earlier is not None)

    earlier = await _claim(state, event, RECEIVED, None)
    if earlier is not None and earlier != RECEIVED:
        WEBHOOKS.labels("duplicate").inc()
        log.info("PSP webhook %s is a duplicate (%s before)", event.event_id, earlier)
        return WebhookReceived(duplicate=True)
    if state.temporal.client is None:
        raise unavailable(TEMPORAL_UNAVAILABLE, NOT_CONNECTED)

    await _note_outcome(state, event)
    outcome, why = await _signal(state, event)
    await _finish(state, event.event_id, outcome, why)
    WEBHOOKS.labels(outcome if earlier is None else "duplicate").inc()
    if outcome == IGNORED:
        log.info(
            "PSP webhook %s (%s) for order %s ignored: %s",
            event.event_id,
            event.type,
            event.order_id,
            why,
        )
    else:
        log.info(
            "PSP webhook %s (%s) handed to order %s", event.event_id, event.type, event.order_id
        )
    return WebhookReceived(duplicate=earlier is not None)
