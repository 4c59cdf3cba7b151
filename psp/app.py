"""The PSP simulator's HTTP face: PaymentIntents, refunds, ledger, signed webhooks, faults.

Run it with ``python -m psp``. Tests build it with ``create_app`` and drive it in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, InitVar, dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from psp import store as ops
from psp.faults import Faults
from psp.merchant import MerchantInbox, merchant
from psp.signing import SIGNATURE_HEADER, sign
from psp.store import Event, PspStore, Reply, error_body
from psp.webhooks import HttpWebhookSender, WebhookSender

log = logging.getLogger("psp")

DEFAULT_WEBHOOK_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class PspError(Exception):
    def __init__(self, status_code: int, code: str, message: str | None = None) -> None:
        super().__init__(message or code)
        self.status_code = status_code
        self.code = code
        self.message = message


@dataclass(eq=False)
class Simulator:
    """Everything one simulator instance owns: its store, knobs and background deliveries."""

    store: PspStore
    _: KW_ONLY
    webhook_url: str | None
    webhook_secret: str
    action_delay_s: float
    slow_s: float
    faults: Faults
    rng: random.Random
    sender: InitVar[WebhookSender | None]
    """Delivers the webhooks; None: real HTTP, which the simulator opens and closes."""
    webhook_backoff_s: Sequence[float]
    _owned_sender: HttpWebhookSender | None = field(default=None, init=False)
    _send: WebhookSender = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _started: bool = field(default=False, init=False)

    def __post_init__(self, sender: WebhookSender | None) -> None:
        if sender is None:
            sender = self._owned_sender = HttpWebhookSender()  # no connection until first used
        self._send = sender
        self.webhook_backoff_s = tuple(self.webhook_backoff_s)

    @property
    def max_delivery_attempts(self) -> int:
        return len(self.webhook_backoff_s) + 1

    async def start(self) -> None:
        """Pick up work a previous run left: actions still to resolve, webhooks not delivered."""
        if self._started:
            return
        self._started = True
        for intent_id, due_at in await self.store.read(ops.pending_actions):
            self.schedule_action(intent_id, due_at)
        events = await self.store.read(
            partial(ops.undelivered_events, max_attempts=self.max_delivery_attempts)
        )
        for event in events:
            self._spawn(self._deliver(event))

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owned_sender is not None:
            await self._owned_sender.aclose()
        self.store.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("psp background task failed", exc_info=task.exception())

    def schedule_action(self, intent_id: str, due_at: float) -> None:
        self._spawn(self._resolve_when_due(intent_id, due_at))

    async def _resolve_when_due(self, intent_id: str, due_at: float) -> None:
        await asyncio.sleep(max(0.0, due_at - time.time()))
        out = await self.store.write(
            partial(ops.resolve_action, intent_id=intent_id, outcome=None, scheduled=True)
        )
        if out.event is not None:
            await self._deliver(out.event)

    async def complete_action(self, intent_id: str, outcome: str | None) -> Reply:
        """Resolve the customer action now and try the webhook once before answering."""
        out = await self.store.write(
            partial(ops.resolve_action, intent_id=intent_id, outcome=outcome, scheduled=False)
        )
        if out.event is None:
            return out.reply
        if self.faults.webhook_duplicates or self.faults.webhook_reorder_ms:
            self._spawn(self._deliver(out.event))  # the fault knobs act on the delivery path
        elif not await self._attempt(out.event):
            self._spawn(self._deliver(out.event, attempts_done=1))
        return out.reply

    async def _deliver(self, event: Event, *, attempts_done: int | None = None) -> None:
        attempts = event.attempts if attempts_done is None else attempts_done
        if self.webhook_url is not None and self.faults.webhook_reorder_ms:
            # Fault knob: a random hold-up, so a later event may overtake this one.
            await asyncio.sleep(self.rng.uniform(0, self.faults.webhook_reorder_ms) / 1000)
        while self.webhook_url is not None and attempts < self.max_delivery_attempts:
            if attempts > 0:
                await asyncio.sleep(
                    self.webhook_backoff_s[min(attempts, len(self.webhook_backoff_s)) - 1]
                )
            if await self._attempt(event):
                # Fault knob: at-least-once delivery, sent again as real PSPs sometimes do.
                for _ in range(self.faults.webhook_duplicates):
                    await self._attempt(event)
                return
            attempts += 1
        if self.webhook_url is not None:
            log.warning("webhook %s for %s given up", event.event_id, event.payment_id)

    async def _attempt(self, event: Event) -> bool:
        if self.webhook_url is None:
            return False
        headers = {
            "Content-Type": "application/json",
            # Signed afresh on every attempt: receivers refuse stale timestamps.
            SIGNATURE_HEADER: sign(self.webhook_secret, event.body),
        }
        try:
            status = await self._send(self.webhook_url, event.body, headers)
            delivered = 200 <= status < 300
            if not delivered:
                log.warning("webhook %s answered %s", event.event_id, status)
        except Exception as exc:  # the merchant being down must never take the PSP down
            log.warning("webhook %s not delivered: %r", event.event_id, exc)
            delivered = False
        await self.store.write(
            partial(ops.record_delivery_attempt, event_id=event.event_id, delivered=delivered)
        )
        return delivered


# ------------------------------------------------------------------------------- plumbing


async def get_simulator(request: Request) -> Simulator:
    sim: Simulator = request.app.state.simulator
    # ASGI transports in tests skip the lifespan; the first request starts the simulator.
    await sim.start()
    return sim


SimulatorDep = Annotated[Simulator, Depends(get_simulator)]


async def apply_faults(sim: SimulatorDep) -> None:
    if sim.faults.latency_ms:
        await asyncio.sleep(sim.faults.latency_ms / 1000)
    if sim.faults.error_rate and sim.rng.random() < sim.faults.error_rate:
        raise PspError(503, "psp_unavailable", "injected fault (error_rate)")


async def idempotency_key(
    key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str:
    if not key:
        raise PspError(400, "idempotency_key_missing", "the Idempotency-Key header is required")
    if len(key) > 255:
        raise PspError(400, "idempotency_key_invalid", "Idempotency-Key is 1-255 characters")
    return key


IdempotencyKeyDep = Annotated[str, Depends(idempotency_key)]


def respond(reply: Reply) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if reply.replayed else None
    return JSONResponse(reply.body, status_code=reply.status_code, headers=headers)


def not_found() -> JSONResponse:
    return JSONResponse(error_body("not_found", "no such payment intent"), status_code=404)


# --------------------------------------------------------------------------------- bodies


class CreateIntentBody(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: StrictInt = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Za-z]{3}$")
    token: str = Field(min_length=1, max_length=64)
    capture_method: Literal["manual"] = "manual"

    @field_validator("currency")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()


class CaptureBody(BaseModel):
    amount_cents: StrictInt | None = Field(default=None, gt=0)
    """Defaults to everything authorized."""


class CompleteBody(BaseModel):
    outcome: Literal["succeeded", "failed"] | None = None
    """Overrides the token's outcome (e.g. to finish a ``tok_action_never`` intent)."""


class RefundBody(BaseModel):
    payment_id: str = Field(min_length=1, max_length=64)
    amount_cents: StrictInt = Field(gt=0)


class FaultsBody(BaseModel):
    error_rate: float | None = Field(default=None, ge=0, le=1)
    latency_ms: StrictInt | None = Field(default=None, ge=0)
    authorize_latency_ms: StrictInt | None = Field(default=None, ge=0)
    decline_rate: float | None = Field(default=None, ge=0, le=1)
    webhook_duplicates: StrictInt | None = Field(default=None, ge=0, le=10)
    webhook_reorder_ms: StrictInt | None = Field(default=None, ge=0)
    seed: int | None = None
    """Reseeds the simulator's random generator, for reproducible fault runs."""


# --------------------------------------------------------------------------------- routes

payments = APIRouter(prefix="/v1", tags=["payments"], dependencies=[Depends(apply_faults)])
testing = APIRouter(prefix="/v1/test", tags=["test"])
operations = APIRouter(tags=["operations"])


@payments.post("/payment_intents")
async def create_payment_intent(
    body: CreateIntentBody, key: IdempotencyKeyDep, sim: SimulatorDep
) -> JSONResponse:
    if body.token not in ops.TOKENS:
        raise PspError(400, "invalid_token", f"unknown payment token {body.token!r}")
    if sim.faults.authorize_latency_ms:
        await asyncio.sleep(sim.faults.authorize_latency_ms / 1000)
    force_decline = bool(sim.faults.decline_rate) and sim.rng.random() < sim.faults.decline_rate
    out = await sim.store.write(
        partial(
            ops.create_intent,
            key=key,
            params=body.model_dump(),
            force_decline=force_decline,
            action_delay_s=sim.action_delay_s,
            now_unix=time.time(),
        )
    )
    if out.action_due_at is not None and out.intent_id is not None:
        sim.schedule_action(out.intent_id, out.action_due_at)
    if out.slow:
        # Committed already: a client that gives up first cannot know the outcome.
        await asyncio.sleep(sim.slow_s)
    return respond(out.reply)


@payments.get("/payment_intents")
async def list_payment_intents(
    sim: SimulatorDep,
    order_id: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    items = await sim.store.read(
        partial(ops.list_intents, order_id=order_id, idempotency_key=idempotency_key)
    )
    return {"items": items}


@payments.get("/payment_intents/{intent_id}")
async def get_payment_intent(intent_id: str, sim: SimulatorDep) -> JSONResponse:
    intent = await sim.store.read(partial(ops.get_intent, intent_id=intent_id))
    return not_found() if intent is None else JSONResponse(intent)


@payments.post("/payment_intents/{intent_id}/capture")
async def capture_payment_intent(
    intent_id: str,
    key: IdempotencyKeyDep,
    sim: SimulatorDep,
    body: CaptureBody | None = None,
) -> JSONResponse:
    amount = body.amount_cents if body is not None else None
    reply = await sim.store.write(
        partial(ops.capture, intent_id=intent_id, key=key, amount_cents=amount)
    )
    return respond(reply)


@payments.post("/payment_intents/{intent_id}/cancel")
async def cancel_payment_intent(intent_id: str, sim: SimulatorDep) -> JSONResponse:
    return respond(await sim.store.write(partial(ops.cancel, intent_id=intent_id)))


@payments.post("/refunds")
async def create_refund(
    body: RefundBody, key: IdempotencyKeyDep, sim: SimulatorDep
) -> JSONResponse:
    reply = await sim.store.write(
        partial(ops.refund, key=key, payment_id=body.payment_id, amount_cents=body.amount_cents)
    )
    return respond(reply)


@testing.post("/payment_intents/{intent_id}/complete")
async def complete_customer_action(
    intent_id: str, sim: SimulatorDep, body: CompleteBody | None = None
) -> JSONResponse:
    outcome = None
    if body is not None and body.outcome is not None:
        outcome = ops.EVENT_SUCCEEDED if body.outcome == "succeeded" else ops.EVENT_FAILED
    return respond(await sim.complete_action(intent_id, outcome))


@operations.get("/v1/ledger")
async def read_ledger(
    sim: SimulatorDep, order_id: Annotated[str | None, Query()] = None
) -> dict[str, list[dict[str, Any]]]:
    return {"items": await sim.store.read(partial(ops.ledger, order_id=order_id))}


@operations.get("/v1/admin/faults")
async def read_faults(sim: SimulatorDep) -> dict[str, float | int]:
    return sim.faults.as_dict()


@operations.post("/v1/admin/faults")
async def set_faults(body: FaultsBody, sim: SimulatorDep) -> dict[str, float | int]:
    changes = body.model_dump(exclude_none=True, exclude={"seed"})
    sim.faults = Faults(**{**sim.faults.as_dict(), **changes})
    if body.seed is not None:
        sim.rng.seed(body.seed)
    return sim.faults.as_dict()


@operations.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# ---------------------------------------------------------------------------------- app


def create_app(
    db_path: str | Path,
    *,
    webhook_url: str | None,
    webhook_secret: str,
    action_delay_s: float = 3.0,
    slow_s: float = 5.0,
    faults: Faults | None = None,
    seed: int | None = None,
    webhook_sender: WebhookSender | None = None,
    webhook_backoff_s: Sequence[float] = DEFAULT_WEBHOOK_BACKOFF_S,
    merchant_secret: str | None = None,
) -> FastAPI:
    """A simulator whose state lives in the SQLite file ``db_path`` (created if missing).

    ``faults`` defaults to the ``PSP_*`` environment knobs; ``webhook_sender`` defaults to real
    HTTP; ``webhook_url=None`` records webhook events without sending them.
    """
    sim = Simulator(
        PspStore(db_path),
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        action_delay_s=action_delay_s,
        slow_s=slow_s,
        faults=Faults.from_env() if faults is None else faults,
        rng=random.Random(seed),
        sender=webhook_sender,
        webhook_backoff_s=webhook_backoff_s,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.aclose()

    app = FastAPI(title="tradeflow PSP simulator", version="1", lifespan=lifespan)
    app.state.simulator = sim
    # The simulator also plays the merchant receiving tradeflow's notifications.
    app.state.merchant = MerchantInbox(secret=merchant_secret)
    app.include_router(merchant)
    app.include_router(payments)
    app.include_router(testing)
    app.include_router(operations)

    @app.exception_handler(PspError)
    async def _psp_error(_request: Request, exc: PspError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        body = error_body("validation_error", "invalid request", details=exc.errors())
        return JSONResponse(jsonable_encoder(body), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    return app


def main() -> None:
    """``python -m psp``: serve on ``BIND_HOST``:``PSP_PORT`` with state in the data dir."""
    import uvicorn

    from infra.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    seed = os.environ.get("PSP_SEED")
    app = create_app(
        settings.data_dir / "psp.db",
        webhook_url=f"{settings.resolved_api_url.rstrip('/')}/v1/payments/webhook",
        webhook_secret=settings.resolved_webhook_secret,
        action_delay_s=settings.psp_action_delay_s,
        slow_s=float(os.environ.get("PSP_SLOW_S") or 5.0),
        seed=int(seed) if seed else None,
        merchant_secret=settings.resolved_merchant_secret,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(app, host=settings.bind_host, port=settings.psp_port, log_level="info")
