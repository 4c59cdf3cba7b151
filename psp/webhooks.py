"""Sending signed webhooks to the merchant (tradeflow's API)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import httpx

WebhookSender = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]
"""``(url, raw body, headers) -> HTTP status``; raises on a transport failure."""


class HttpWebhookSender:
    """POSTs over real HTTP with its own client, created on first use."""

    def __init__(self, *, timeout_s: float = 5.0) -> None:
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        response = await self._client.post(url, content=body, headers=dict(headers))
        return response.status_code

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
