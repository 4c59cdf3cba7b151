"""The simulator's webhook fault knobs: duplicated and reordered deliveries, on request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

import httpx

from psp.app import create_app
from psp.faults import Faults


class Recorder:
    def __init__(self) -> None:
        self.event_ids: list[str] = []
        self.payment_ids: list[str] = []
        self.seen = asyncio.Event()
        self.expected = 0

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        event = json.loads(body)
        self.event_ids.append(event["event_id"])
        self.payment_ids.append(event["payment_id"])
        if len(self.event_ids) >= self.expected:
            self.seen.set()
        return 200


async def _completed_intent(http: httpx.AsyncClient, order: str) -> str:
    r = await http.post(
        "/v1/payment_intents",
        headers={"Idempotency-Key": f"authorize:{order}"},
        json={
            "order_id": order,
            "amount_cents": 1000,
            "currency": "USD",
            "token": "tok_action",
            "capture_method": "manual",
        },
    )
    assert r.status_code == 200, r.text
    pid = str(r.json()["id"])
    assert (await http.post(f"/v1/test/payment_intents/{pid}/complete")).status_code == 200
    return pid


def _app(tmp_path: Path, faults: Faults, rec: Recorder):  # type: ignore[no-untyped-def]
    return create_app(
        tmp_path / "psp.db",
        webhook_url="http://api/v1/payments/webhook",
        webhook_secret="s",
        action_delay_s=3600,
        faults=faults,
        webhook_sender=rec,
        seed=7,
    )


async def test_webhooks_are_duplicated_on_request(tmp_path: Path) -> None:
    rec = Recorder()
    rec.expected = 3
    app = _app(tmp_path, Faults(webhook_duplicates=2), rec)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://psp"
    ) as http:
        await _completed_intent(http, "o1")
        await asyncio.wait_for(rec.seen.wait(), 10)
        await asyncio.sleep(0.2)
        assert len(rec.event_ids) == 3 and len(set(rec.event_ids)) == 1  # one event, three times
        await app.state.simulator.aclose()


async def test_webhooks_overtake_each_other_on_request(tmp_path: Path) -> None:
    rec = Recorder()
    rec.expected = 12
    app = _app(tmp_path, Faults(webhook_reorder_ms=400), rec)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://psp"
    ) as http:
        sent = [await _completed_intent(http, f"o{i}") for i in range(12)]
        await asyncio.wait_for(rec.seen.wait(), 10)
        assert sorted(rec.payment_ids) == sorted(sent)
        # Completed one after another within milliseconds, each held up 0..400 ms: they do not
        # arrive in the order they were sent.
        assert rec.payment_ids != sent
        await app.state.simulator.aclose()
