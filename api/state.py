"""What one API process holds for its lifetime: settings, engine, Redis, Temporal, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from functools import cached_property

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.auth import Authenticator
from api.catalogue import Catalogue
from infra.ratelimit import GcraLimiter
from infra.settings import Settings
from infra.sold_out_edge import SoldOutEdge
from infra.temporal import connect

log = logging.getLogger(__name__)


class TemporalConnector:
    """Holds the Temporal client, connecting in the background until the server answers.

    The API must start (and report ``/readyz`` 503) while Temporal is still coming up, so the
    first connection is retried forever with a capped backoff instead of failing startup.
    """

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self._settings = settings
        self.client: Client | None = client
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.client is None and self._task is None:
            self._task = asyncio.create_task(self._connect_until_up(), name="temporal-connect")

    async def _connect_until_up(self) -> None:
        delay = 0.25
        attempts = 0
        while self.client is None:
            attempts += 1
            try:
                self.client = await asyncio.wait_for(connect(self._settings), timeout=10)
                self.last_error = None
                log.info("connected to Temporal at %s", self._settings.temporal_address)
                return
            except Exception as exc:
                self.last_error = str(exc)
                if attempts == 1 or attempts % 20 == 0:
                    log.warning(
                        "Temporal at %s not reachable yet (attempt %d): %s",
                        self._settings.temporal_address,
                        attempts,
                        exc,
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: aioredis.Redis
    temporal: TemporalConnector
    catalogue: Catalogue
    checkout_limiter: GcraLimiter
    edge: SoldOutEdge
    """The checkout's one Redis round trip: idempotency index, rate limit, sold-out answer."""
    orders_task_queue: str
    dispatch_task_queue: str
    search_attributes: bool
    """Set OrderStatus/CustomerId/OrderTotalCents/FailureReason when starting an order."""
    _admin_token: str | None = field(default=None, repr=False)
    auth: Authenticator = field(init=False, repr=False)
    """Who is calling (api/auth.py); logs the authentication mode when made."""

    def __post_init__(self) -> None:
        self.auth = Authenticator(
            self.settings,
            redis=self.redis,
            sessionmaker=self.sessionmaker,
            admin_token=lambda: self.admin_token,
        )

    @cached_property
    def admin_token(self) -> str:
        return self._admin_token or self.settings.resolved_admin_token
