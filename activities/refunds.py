"""Refund activities: the PSP's view of the intent, the refund itself, bookkeeping, restock.

The PSP calls go through ``PaymentActivities``' guarded client (breaker, rate limiter, error
classification), so a refund is refused by an open breaker exactly as a capture would be.
The refund is sent under ``refund:<refund_id>``: the PSP answers a repeated key with its stored
first answer, so a retry after an unknown outcome (timeout, dropped connection) cannot refund
twice and needs no look-up first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Required, TypedDict

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.payments import PAYMENT_NOT_FOUND, PaymentActivities, _error_code, _refused
from domain.errors import REFUND_EXCEEDS_CAPTURED, REFUND_REFUSED
from domain.errors import REFUND_LEDGER_INCONSISTENT as LEDGER_INCONSISTENT
from domain.messages import (
    PspRefundRequest,
    PspRefundResult,
    RefundableAtPsp,
    RefundView,
    RestockLine,
    RestockReport,
    RestockRequest,
    SettleRefund,
)
from domain.names import (
    ACT_CHECK_REFUNDABLE_AT_PSP,
    ACT_MARK_REFUND_FAILED,
    ACT_MARK_REFUND_SUCCEEDED,
    ACT_RESTOCK_REFUNDED_ITEMS,
    ACT_SEND_REFUND,
)
from infra.breaker import CircuitBreaker
from infra.hot_stock import reconcile_hot_counters
from infra.ratelimit import GcraLimiter
from store import refunds as book

if TYPE_CHECKING:
    from typing_extensions import Unpack


class PaymentActivitiesArgs(TypedDict, total=False):
    """``PaymentActivities``' keyword arguments (its PSP client), which a subclass passes on."""

    http: Required[httpx.AsyncClient]
    sessionmaker: Required[async_sessionmaker[AsyncSession]]
    psp_url: Required[str]
    timeout_s: float
    breaker: CircuitBreaker | None
    limiter: GcraLimiter | None


class RefundActivities(PaymentActivities):
    """``PaymentActivities``' PSP client plus the refunds book and, for hot SKUs, Redis."""

    def __init__(
        self, *, redis: aioredis.Redis | None = None, **psp: Unpack[PaymentActivitiesArgs]
    ) -> None:
        super().__init__(**psp)
        self._redis = redis

    @activity.defn(name=ACT_CHECK_REFUNDABLE_AT_PSP)
    async def check_refundable_at_psp(self, req: PspRefundRequest) -> RefundableAtPsp:
        """The PSP's own figures, so refunds made outside tradeflow (the PSP's dashboard, a
        support agent) count against the capture too."""
        intent = await self._get_intent(req.payment_id)
        if intent is None:
            raise ApplicationError(
                f"the PSP does not know payment {req.payment_id}",
                type=PAYMENT_NOT_FOUND,
                non_retryable=True,
            )
        received = int(intent["amount_received"])
        refunded = int(intent["amount_refunded"])
        fits = refunded + req.amount_cents <= received
        activity.logger.info(
            "refund %s of %s on %s: PSP received %s, refunded %s -> %s",
            req.refund_id,
            req.amount_cents,
            req.payment_id,
            received,
            refunded,
            "fits" if fits else "does not fit",
        )
        return RefundableAtPsp(received_cents=received, refunded_cents=refunded, fits=fits)

    @activity.defn(name=ACT_SEND_REFUND)
    async def send_refund(self, req: PspRefundRequest) -> PspRefundResult:
        response = await self._call(
            "POST",
            "/v1/refunds",
            key=req.idempotency_key,
            json={"payment_id": req.payment_id, "amount_cents": req.amount_cents},
        )
        if response.status_code in (200, 201):
            body = response.json()
            if response.headers.get("Idempotent-Replayed") == "true":
                activity.logger.info("refund %s: the PSP replayed its first answer", req.refund_id)
            return PspRefundResult(psp_refund_id=str(body["id"]))
        if response.status_code == 422 and _error_code(response) == "refund_exceeds_captured":
            raise _refused(response, f"refund {req.refund_id}", REFUND_EXCEEDS_CAPTURED)
        if response.status_code == 404:
            raise _refused(response, f"refund {req.refund_id}", PAYMENT_NOT_FOUND)
        raise _refused(response, f"refund {req.refund_id}", REFUND_REFUSED)

    @activity.defn(name=ACT_MARK_REFUND_SUCCEEDED)
    async def mark_refund_succeeded(self, inp: SettleRefund) -> RefundView:
        async with self._booking() as s:
            return await book.mark_succeeded(
                s, refund_id=inp.refund_id, psp_refund_id=inp.psp_refund_id or ""
            )

    @activity.defn(name=ACT_MARK_REFUND_FAILED)
    async def mark_refund_failed(self, inp: SettleRefund) -> RefundView:
        async with self._booking() as s:
            return await book.mark_failed(
                s, refund_id=inp.refund_id, failure_reason=inp.failure_reason or "failed"
            )

    @activity.defn(name=ACT_RESTOCK_REFUNDED_ITEMS)
    async def restock_refunded_items(self, req: RestockRequest) -> RestockReport:
        """Each line in its own transaction, fenced per (refund, sku): a retry after a crash
        halfway returns the remaining lines and none twice."""
        returned: list[RestockLine] = []
        refused: list[RestockLine] = []
        moved_now: list[str] = []
        for line in req.lines:
            try:
                async with self._sessions() as s, s.begin():
                    outcome = await book.restock(
                        s,
                        refund_id=req.refund_id,
                        order_id=req.order_id,
                        location_id=req.location_id,
                        sku=line.sku,
                        quantity=line.quantity,
                    )
            except book.RestockRefused as e:
                activity.logger.warning("refund %s: restock refused: %s", req.refund_id, e)
                refused.append(line)
                continue
            returned.append(line)
            if outcome == book.Restocked.RETURNED:
                moved_now.append(line.sku)
        if moved_now:
            await self._follow_hot_counters(req.location_id, moved_now)
        activity.logger.info(
            "refund %s restock at %s: returned %s, refused %s",
            req.refund_id,
            req.location_id,
            returned,
            refused,
        )
        return RestockReport(returned=returned, refused=refused)

    @asynccontextmanager
    async def _booking(self) -> AsyncIterator[AsyncSession]:
        """One transaction on the refunds book; a ledger that no longer adds up is for a
        person to look at, not for a retry."""
        try:
            async with self._sessions() as s, s.begin():
                yield s
        except book.LedgerInconsistent as e:
            raise ApplicationError(str(e), type=LEDGER_INCONSISTENT, non_retryable=True) from e

    async def _follow_hot_counters(self, location_id: str, skus: list[str]) -> None:
        """Flash-sale SKUs sell through a Redis counter: let it see the returned units. The
        DB is right either way; if Redis is down, reconciliation catches the counter up."""
        if self._redis is None:
            return
        for sku in skus:
            try:
                await reconcile_hot_counters(
                    self._sessions, self._redis, sku=sku, location_id=location_id
                )
            except (RedisError, OSError) as e:
                activity.logger.warning("hot counter of %s not updated after restock: %s", sku, e)
