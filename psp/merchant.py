"""A merchant's webhook endpoint, played by the simulator for demos and tests.

It checks tradeflow's signature, dedupes by event id (as a merchant must: notifications come at
least once), and can be told to fail its next N deliveries to exercise the retry schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from psp.signing import verify

SIGNATURE_HEADER = "X-Tradeflow-Signature"


@dataclass
class MerchantInbox:
    secret: str | None
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: int = 0
    fail_next: int = 0


class FailNextBody(BaseModel):
    count: int = Field(ge=0)


merchant = APIRouter(prefix="/v1/merchant", tags=["merchant"])


def _inbox(request: Request) -> MerchantInbox:
    inbox: MerchantInbox = request.app.state.merchant
    return inbox


@merchant.post("/webhook")
async def receive(request: Request) -> JSONResponse:
    inbox = _inbox(request)
    inbox.deliveries += 1
    if inbox.fail_next > 0:
        inbox.fail_next -= 1
        return JSONResponse({"error": "merchant temporarily unavailable"}, status_code=503)
    raw = await request.body()
    if inbox.secret and not verify(inbox.secret, raw, request.headers.get(SIGNATURE_HEADER)):
        return JSONResponse({"error": "invalid_signature"}, status_code=400)
    try:
        event = await request.json()
        event_id = str(event["event_id"])
    except Exception:
        return JSONResponse({"error": "bad event"}, status_code=400)
    duplicate = event_id in inbox.events
    inbox.events.setdefault(event_id, event)
    return JSONResponse({"received": True, "duplicate": duplicate})


@merchant.get("/notifications")
async def notifications(request: Request) -> dict[str, Any]:
    inbox = _inbox(request)
    return {"items": list(inbox.events.values()), "deliveries": inbox.deliveries}


@merchant.post("/fail_next")
async def fail_next(body: FailNextBody, request: Request) -> dict[str, int]:
    _inbox(request).fail_next = body.count
    return {"fail_next": body.count}
