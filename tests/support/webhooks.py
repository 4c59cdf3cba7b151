"""The whole webhook path in-process: the real workers (a ``Stack``), the API, and the PSP
simulator posting its signed webhooks to the API, so ``tok_action`` cards are authorized by
the customer's action as after ``make up``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowHandle

from psp.app import create_app as create_psp_app
from tests.api.helpers import make_settings
from tests.support.shop import stack_api
from tests.support.stack import Stack, order_stack, wait_for_view


@dataclass
class ApiSender:
    """The PSP's webhook sender, posting to the API in-process; ``copies`` > 1 delivers each
    event that many times at once (a PSP that duplicates)."""

    http: httpx.AsyncClient | None = None
    copies: int = 1
    responses: list[httpx.Response] = field(default_factory=list)

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        assert self.http is not None, "API not up yet"
        replies = await asyncio.gather(
            *(
                self.http.post(httpx.URL(url).path, content=body, headers=dict(headers))
                for _ in range(self.copies)
            )
        )
        self.responses.extend(replies)
        return replies[0].status_code

    async def answered(self, n: int, within_s: float = 10.0) -> list[httpx.Response]:
        """The responses once ``n`` have come. The order may move on before the API's answer
        reaches the PSP: the update that hands the word over returns once the order has
        taken it, and the API then records the event before it answers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                for _ in iter(lambda: len(self.responses) >= n, True):
                    await asyncio.sleep(0.01)
        return list(self.responses)


@dataclass
class World:
    stack: Stack
    api: httpx.AsyncClient
    sender: ApiSender
    engine: Any

    async def outcomes(self, order_id: str) -> list[str]:
        async with self.engine.connect() as c:
            rows = (
                await c.exec_driver_sql(
                    "SELECT outcome FROM webhook_events WHERE order_id = ?", (order_id,)
                )
            ).all()
        return [r[0] for r in rows]


@contextlib.asynccontextmanager
async def world_with_webhooks(
    client: Client,
    sqlite_url: str,
    tmp_path: Path,
    *,
    secret: str,
    sku: str,
    price_cents: int,
    units: int,
) -> AsyncIterator[World]:
    """A ``World`` whose PSP signs its webhooks with ``secret``, selling ``units`` of ``sku``."""
    sender = ApiSender()
    psp = create_psp_app(
        tmp_path / "psp.db",
        webhook_url="http://api/v1/payments/webhook",
        webhook_secret=secret,
        action_delay_s=0.2,
        webhook_sender=sender,
        webhook_backoff_s=(0.2, 0.5, 1.0),
    )
    async with order_stack(client, sqlite_url, tmp_path / "psp.db", psp_app=psp) as stack:
        await stack.seed_product(sku, price_cents, units)
        settings = make_settings(tmp_path, sqlite_url, TRADEFLOW_WEBHOOK_SECRET=secret)
        async with stack_api(stack, settings, client, migrate_on_start=True, tracing=False) as http:
            sender.http = http
            try:
                yield World(stack, http, sender, stack.engine)
            finally:
                sender.http = None
                await psp.state.simulator.aclose()


async def deliver_to_the_door(
    stack: Stack, handle: WorkflowHandle[Any, Any], order_id: str, courier_id: str = "k-1"
) -> Any:
    """``courier_id`` takes the offer, picks the order up and delivers it: the final view."""
    await wait_for_view(handle, lambda v: v.delivery.offered_to == courier_id)
    assert (await stack.courier_says(order_id, courier_id, "accepted")).accepted
    await wait_for_view(handle, lambda v: v.status == "COURIER_ASSIGNED")
    await stack.courier_says(order_id, courier_id, "picked_up")
    await wait_for_view(handle, lambda v: v.status == "OUT_FOR_DELIVERY")
    await stack.courier_says(order_id, courier_id, "delivered")
    return await handle.result()
