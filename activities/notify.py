"""Merchant webhook delivery: one signed POST per try; the workflow owns the schedule."""

from __future__ import annotations

import json

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.messages import MerchantEvent, NotificationOutcome, NotifyAttempt
from domain.names import ACT_NOTIFY_MERCHANT, ACT_RECORD_NOTIFICATION
from psp.signing import sign
from store import notifications as store

SIGNATURE_HEADER = "X-Tradeflow-Signature"


class NotifyActivities:
    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        sessionmaker: async_sessionmaker[AsyncSession],
        url: str | None,
        secret: str,
    ) -> None:
        self._http = http
        self._sessions = sessionmaker
        self._url = url
        self._secret = secret

    @activity.defn(name=ACT_NOTIFY_MERCHANT)
    async def notify_merchant(self, ev: MerchantEvent) -> NotifyAttempt:
        if not self._url:
            return NotifyAttempt(delivered=False, skipped=True)
        body = json.dumps(
            {
                "event_id": ev.event_id,
                "type": ev.type,
                "order_id": ev.order_id,
                "amount_cents": ev.amount_cents,
                "currency": ev.currency,
                "occurred_at": ev.occurred_at,
            },
            separators=(",", ":"),
        ).encode()
        try:
            r = await self._http.post(
                self._url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign(self._secret, body),
                    "Idempotency-Key": ev.event_id,
                },
                timeout=10.0,
            )
        except httpx.HTTPError as e:
            return NotifyAttempt(delivered=False, error=f"{type(e).__name__}: {e}")
        if 200 <= r.status_code < 300:
            return NotifyAttempt(delivered=True, status_code=r.status_code)
        return NotifyAttempt(
            delivered=False,
            status_code=r.status_code,
            error=f"HTTP {r.status_code}: {r.text[:200]}",
        )

    @activity.defn(name=ACT_RECORD_NOTIFICATION)
    async def record_notification(self, outcome: NotificationOutcome) -> None:
        async with self._sessions() as s, s.begin():
            await store.record(s, outcome)
        if outcome.status == "GAVE_UP":
            activity.logger.error(
                "gave up notifying the merchant of %s after %d tries: %s",
                outcome.event_id,
                outcome.attempts,
                outcome.last_error,
            )
