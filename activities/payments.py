"""Payment activities: authorize, capture and void at the PSP, recorded in ``payments``.

Every call that moves money carries the workflow's idempotency key, so a retry cannot charge
twice; when a call ends with an unknown outcome (timeout, dropped connection) the next attempt
first looks the intent up at the PSP and continues from what really happened.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import httpx
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain import errors
from domain.errors import ALREADY_CAPTURED
from domain.messages import (
    AuthorizeInput,
    AuthorizeResult,
    CaptureInput,
    CaptureResult,
    VoidInput,
    VoidResult,
)
from domain.names import ACT_AUTHORIZE_PAYMENT, ACT_CAPTURE_PAYMENT, ACT_VOID_PAYMENT
from domain.status import PaymentStatus
from infra.breaker import CircuitBreaker, CircuitOpen, Permit
from infra.ratelimit import GcraLimiter
from store import payments as payment_book

# ApplicationError types raised here besides those in domain.errors.
PSP_UNAVAILABLE = "PspUnavailable"
"""Retryable: the PSP answered 5xx/429 or could not be reached."""
PSP_UNKNOWN_OUTCOME = "PspUnknownOutcome"
"""Retryable: no answer in time; the next attempt looks the intent up before calling again."""
PSP_PROTOCOL_ERROR = "PspProtocolError"
"""Non-retryable: the PSP refused the request in a way a retry cannot fix."""
PAYMENT_NOT_CAPTURABLE = "PaymentNotCapturable"
CAPTURE_EXCEEDS_AUTHORIZED = "CaptureExceedsAuthorized"
PAYMENT_NOT_FOUND = "PaymentNotFound"
CIRCUIT_OPEN = "CircuitOpen"
"""Retryable: the PSP breaker is open; no call was made, Temporal retries with its backoff."""
RATE_LIMITED = "RateLimited"
"""Retryable: over the PSP call rate; ``next_retry_delay`` says when a token is back."""

PSP_LIMITER_KEY = "psp"
"""One bucket for every worker: the PSP's limit is on tradeflow as a whole."""
RATE_LIMIT_JITTER_CAP_S = 5.0

_S = PaymentStatus


def _authorize_result(intent: dict[str, Any]) -> AuthorizeResult:
    status = intent["status"]
    if status in ("requires_capture", "succeeded"):
        return AuthorizeResult(
            status=_S.AUTHORIZED,
            payment_id=intent["id"],
            authorized_cents=intent["amount_cents"],
        )
    if status == "requires_action":
        return AuthorizeResult(status=_S.REQUIRES_ACTION, payment_id=intent["id"])
    detail = intent.get("last_error") or status
    return AuthorizeResult(status=_S.DECLINED, payment_id=intent["id"], detail=detail)


def _authorized_cents(intent: dict[str, Any]) -> int:
    """What the PSP held on this intent, also after it was captured or released."""
    reported = intent.get("amount_authorized")
    if reported is not None:
        return int(reported)
    # A capture reply the PSP stored before it reported the field, replayed under its key:
    # an authorization is for the intent's whole amount.
    return (
        int(intent["amount_cents"]) if intent["status"] in ("requires_capture", "succeeded") else 0
    )


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def _refused(
    response: httpx.Response, what: str, error_type: str = PSP_PROTOCOL_ERROR
) -> ApplicationError:
    code = _error_code(response)
    return ApplicationError(
        f"PSP refused {what}: {response.status_code} {code}",
        code,
        type=error_type,
        non_retryable=True,
    )


async def _unless_psp_fails(
    lookup: Coroutine[Any, Any, dict[str, Any] | None],
) -> dict[str, Any] | None:
    """A look-up before a retry, or None when the PSP fails to answer it.

    The look-up saves resending a request whose earlier attempt landed; the idempotency key
    already makes resending safe. So a look-up the PSP fails (5xx, timeout) does not cost the
    attempt: against a PSP failing a third of its calls, making every retry pass two calls
    instead of one nearly doubled the attempts an order needed. A look-up the breaker or the
    limiter refused is raised: the request after it would be refused too.
    """
    try:
        return await lookup
    except ApplicationError as exc:
        if exc.type not in (PSP_UNAVAILABLE, PSP_UNKNOWN_OUTCOME):
            raise
        activity.logger.warning("look-up before retry failed, resending under the key: %s", exc)
        return None


def _rate_limited_delay(retry_after_s: float) -> timedelta:
    """Not before the limiter has a token again, plus a jitter that grows with the attempt:
    every caller refused in the same instant is told the same retry-after, and they must not
    all come back together."""
    spread = min(RATE_LIMIT_JITTER_CAP_S, 0.05 * 2 ** (activity.info().attempt - 1))
    return timedelta(seconds=retry_after_s + random.uniform(0, spread))


class PaymentActivities:
    """Talks to the PSP over ``http`` and keeps tradeflow's ``payments`` row in step.

    With a ``breaker`` and a ``limiter`` (both shared through Redis by every worker) each PSP
    request first asks the breaker, then takes a token; a refusal is a retryable
    ``ApplicationError`` raised at once, so the activity never sleeps and Temporal's retry
    policy does the waiting.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        sessionmaker: async_sessionmaker[AsyncSession],
        psp_url: str,
        timeout_s: float = 3.0,
        breaker: CircuitBreaker | None = None,
        limiter: GcraLimiter | None = None,
    ) -> None:
        self._http = http
        self._sessions = sessionmaker
        self._psp_url = psp_url.rstrip("/")
        self._timeout_s = timeout_s
        self._breaker = breaker
        self._limiter = limiter

    # ----------------------------------------------------------------------- activities

    @activity.defn(name=ACT_AUTHORIZE_PAYMENT)
    async def authorize_payment(self, inp: AuthorizeInput) -> AuthorizeResult:
        # Our own record comes first, so a crash after the PSP call still leaves a trace.
        await self._record_pending(inp)
        intent: dict[str, Any] | None = None
        if activity.info().attempt > 1:
            intent = await _unless_psp_fails(
                self._find_intent(inp.order_id, idempotency_key=inp.idempotency_key)
            )
            if intent is not None:
                activity.logger.info(
                    "authorize retry found intent %s (%s)", intent["id"], intent["status"]
                )
        if intent is None:
            response = await self._call(
                "POST",
                "/v1/payment_intents",
                key=inp.idempotency_key,
                json={
                    "order_id": inp.order_id,
                    "amount_cents": inp.amount_cents,
                    "currency": inp.currency,
                    "token": inp.token,
                    "capture_method": "manual",
                },
            )
            intent = self._authorization_from(response)
        result = _authorize_result(intent)
        await self._set_status(
            inp.order_id,
            PaymentStatus(result.status),
            payment_id=result.payment_id,
            authorized_cents=result.authorized_cents,
        )
        activity.logger.info(
            "payment for order %s: %s (%s)", inp.order_id, result.status, result.payment_id
        )
        return result

    @activity.defn(name=ACT_CAPTURE_PAYMENT)
    async def capture_payment(self, inp: CaptureInput) -> CaptureResult:
        await self._note_payment_id(inp.order_id, inp.payment_id)
        intent: dict[str, Any] | None = None
        if activity.info().attempt > 1:
            found = await _unless_psp_fails(self._get_intent(inp.payment_id))
            if found is not None and found["status"] == "succeeded":
                intent = found
        if intent is None:
            body = {"amount_cents": inp.amount_cents} if inp.amount_cents > 0 else {}
            response = await self._call(
                "POST",
                f"/v1/payment_intents/{inp.payment_id}/capture",
                key=inp.idempotency_key,
                json=body,
            )
            intent = await self._captured_from(response, inp.payment_id)
        captured = int(intent["amount_received"])
        # The authorization is recorded here too: when the customer's action authorized it,
        # the PSP said so in a webhook to the payment workflow and no activity has written it.
        await self._set_status(
            inp.order_id,
            PaymentStatus.CAPTURED,
            payment_id=inp.payment_id,
            captured_cents=captured,
            authorized_cents=_authorized_cents(intent),
        )
        activity.logger.info("captured %s on %s", captured, inp.payment_id)
        return CaptureResult(payment_id=inp.payment_id, captured_cents=captured)

    @activity.defn(name=ACT_VOID_PAYMENT)
    async def void_payment(self, inp: VoidInput) -> VoidResult:
        if inp.payment_id is not None:
            candidates = [inp.payment_id]
        else:
            # Authorization never told us an id: every intent the PSP holds for the order.
            candidates = [i["id"] for i in await self._list_intents(order_id=inp.order_id)]
            if not candidates:
                activity.logger.info("nothing to void for order %s", inp.order_id)
                return VoidResult(payment_id=None, voided=False)
        result = VoidResult(payment_id=candidates[-1], voided=False)
        released = 0
        declined = False
        for payment_id in candidates:
            intent = await self._cancel(payment_id, inp.idempotency_key)
            if intent is None:
                continue
            if intent["status"] == "canceled":
                result = VoidResult(payment_id=payment_id, voided=True)
                released += _authorized_cents(intent)
            elif intent["status"] == "declined":
                declined = True
        # The record says what the PSP held, whichever way it was authorized (the authorize
        # call, or the customer's action that only a webhook told the workflow about).
        if result.voided:
            await self._set_status(
                inp.order_id,
                PaymentStatus.VOIDED,
                payment_id=result.payment_id,
                authorized_cents=released,
            )
        elif declined:
            await self._set_status(inp.order_id, PaymentStatus.DECLINED)
        activity.logger.info(
            "void for order %s: %s (%s)", inp.order_id, result.voided, result.payment_id
        )
        return result

    # --------------------------------------------------------------------- PSP calls

    async def _call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One PSP request; transport failures and 5xx become retryable errors.

        The breaker hears how it went: 5xx, 429, timeouts and unreachable are failures; any
        other answer, a declined card included, is the PSP working as it should.
        """
        headers = {"Idempotency-Key": key} if key else {}
        permit = await self._admit(method, path)
        started = time.monotonic()
        try:
            response = await self._http.request(
                method,
                f"{self._psp_url}{path}",
                json=json,
                params=params,
                headers=headers,
                timeout=self._timeout_s,
            )
        except httpx.TimeoutException as exc:
            await self._settle(permit, started, failed=True)
            raise ApplicationError(
                f"PSP {method} {path}: no answer within {self._timeout_s}s, outcome unknown",
                type=PSP_UNKNOWN_OUTCOME,
            ) from exc
        except httpx.TransportError as exc:
            await self._settle(permit, started, failed=True)
            raise ApplicationError(
                f"PSP {method} {path} unreachable: {exc!r}", type=PSP_UNAVAILABLE
            ) from exc
        except BaseException:
            # Cancelled (or a bug): nothing is known about the PSP, so give the permit back.
            if permit is not None and self._breaker is not None:
                with contextlib.suppress(Exception):
                    await self._breaker.release(permit)
            raise
        unhealthy = response.status_code >= 500 or response.status_code == 429
        await self._settle(permit, started, failed=unhealthy)
        if unhealthy:
            raise ApplicationError(
                f"PSP {method} {path} answered {response.status_code}", type=PSP_UNAVAILABLE
            )
        return response

    async def _admit(self, method: str, path: str) -> Permit | None:
        """Breaker first (an open breaker spends no rate tokens), then the rate limiter."""
        permit: Permit | None = None
        if self._breaker is not None:
            try:
                permit = await self._breaker.allow()
            except CircuitOpen as exc:
                raise ApplicationError(
                    f"PSP circuit is {exc.state.value}: {method} {path} not sent "
                    f"(it may close in {exc.retry_after_s:.1f}s)",
                    type=CIRCUIT_OPEN,
                ) from exc
        if self._limiter is None:
            return permit
        try:
            decision = await self._limiter.allow(PSP_LIMITER_KEY)
        except RedisError as exc:
            # Like the breaker, the limiter fails open: Redis down must not stop payments.
            activity.logger.warning("PSP rate limiter unavailable, calling anyway: %r", exc)
            return permit
        if decision.allowed:
            return permit
        if permit is not None and self._breaker is not None:
            await self._breaker.release(permit)
        raise ApplicationError(
            f"PSP call rate exceeded: {method} {path} not sent; "
            f"a token is back in {decision.retry_after_s:.3f}s",
            type=RATE_LIMITED,
            next_retry_delay=_rate_limited_delay(decision.retry_after_s),
        )

    async def _settle(self, permit: Permit | None, started: float, *, failed: bool) -> None:
        if permit is None or self._breaker is None:
            return
        await self._breaker.record(permit, failed=failed, duration_s=time.monotonic() - started)

    def _authorization_from(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code in (200, 201):
            intent: dict[str, Any] = response.json()
            return intent
        if response.status_code == 402:
            # A decline is a business outcome, returned to the workflow, never raised.
            declined: dict[str, Any] = response.json()["intent"]
            return declined
        if response.status_code == 400:
            raise _refused(response, "the payment", errors.PAYMENT_INVALID)
        raise _refused(response, "the payment")

    async def _captured_from(self, response: httpx.Response, payment_id: str) -> dict[str, Any]:
        if response.status_code in (200, 201):
            intent: dict[str, Any] = response.json()
            return intent
        if response.status_code == 409:
            # Not capturable now: fine if it is captured already (by an earlier attempt).
            current = response.json().get("intent") or await self._get_intent(payment_id)
            if current is not None and current["status"] == "succeeded":
                return dict(current)
            status = current["status"] if current else "unknown"
            raise ApplicationError(
                f"payment {payment_id} cannot be captured: it is {status}",
                status,
                type=PAYMENT_NOT_CAPTURABLE,
                non_retryable=True,
            )
        if response.status_code == 404:
            raise _refused(response, f"capture of {payment_id}", PAYMENT_NOT_FOUND)
        if response.status_code == 422:
            raise _refused(response, f"capture of {payment_id}", CAPTURE_EXCEEDS_AUTHORIZED)
        raise _refused(response, f"capture of {payment_id}")

    async def _cancel(self, payment_id: str, key: str) -> dict[str, Any] | None:
        """The intent after the cancel: ``canceled`` (now or already), or as it stays when it
        held nothing (declined); None when the PSP does not know it."""
        response = await self._call("POST", f"/v1/payment_intents/{payment_id}/cancel", key=key)
        if response.status_code == 200:
            canceled: dict[str, Any] = response.json()
            return canceled
        if response.status_code == 404:
            activity.logger.warning("void: PSP does not know intent %s", payment_id)
            return None
        if response.status_code == 409:
            current = response.json().get("intent") or await self._get_intent(payment_id)
            status = current["status"] if current else "unknown"
            if status == "succeeded":
                raise ApplicationError(
                    f"payment {payment_id} is captured; refund it instead of voiding",
                    payment_id,
                    type=ALREADY_CAPTURED,
                    non_retryable=True,
                )
            return current  # declined: no money was ever held
        raise _refused(response, f"void of {payment_id}")

    async def _get_intent(self, payment_id: str) -> dict[str, Any] | None:
        response = await self._call("GET", f"/v1/payment_intents/{payment_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _refused(response, f"lookup of {payment_id}")
        intent: dict[str, Any] = response.json()
        return intent

    async def _list_intents(
        self, *, order_id: str, idempotency_key: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"order_id": order_id}
        if idempotency_key is not None:
            params["idempotency_key"] = idempotency_key
        response = await self._call("GET", "/v1/payment_intents", params=params)
        if response.status_code != 200:
            raise _refused(response, f"lookup of order {order_id}")
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def _find_intent(self, order_id: str, *, idempotency_key: str) -> dict[str, Any] | None:
        """The intent an earlier attempt created with this key, if the PSP has it."""
        items = await self._list_intents(order_id=order_id, idempotency_key=idempotency_key)
        return items[-1] if items else None

    # -------------------------------------------------------------------- payments row

    async def _record_pending(self, inp: AuthorizeInput) -> None:
        async with self._sessions() as session, session.begin():
            await payment_book.record_pending(
                session,
                order_id=inp.order_id,
                idempotency_key=inp.idempotency_key,
                currency=inp.currency,
                amount_cents=inp.amount_cents,
            )

    async def _note_payment_id(self, order_id: str, payment_id: str) -> None:
        """Record the intent id before moving money, if the row does not have it yet."""
        async with self._sessions() as session, session.begin():
            await payment_book.note_payment_id(session, order_id=order_id, payment_id=payment_id)

    async def _set_status(self, order_id: str, status: PaymentStatus, **values: Any) -> None:
        async with self._sessions() as session, session.begin():
            moved = await payment_book.set_status(
                session, order_id=order_id, status=status, **values
            )
        if not moved:
            activity.logger.info(
                "payments row of order %s not moved to %s (absent or further along)",
                order_id,
                status.value,
            )
