"""The FastAPI application factory.

``uvicorn api.app:create_app --factory`` or ``uvicorn api.app:app`` (built on first access),
or ``python -m api``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.catalogue import PRODUCT_CACHE_PREFIX, Catalogue
from api.checkout_fast_path import CheckoutFastPath
from api.errors import install_error_handlers
from api.middleware import ObservabilityMiddleware
from api.openapi import install_problem_openapi
from api.routes import (
    admin,
    codec,
    couriers,
    deliveries,
    health,
    inventory,
    orders,
    payments,
    products,
    refunds,
    repairs,
)
from api.state import AppState, TemporalConnector
from api.write_behind import WriteBehind
from domain.names import DISPATCH_TASK_QUEUE, ORDERS_TASK_QUEUE
from infra.cache import CacheAside
from infra.ratelimit import GcraLimiter
from infra.redis import make_redis
from infra.settings import Settings, get_settings, to_sync_url
from infra.sold_out_edge import SoldOutEdge
from infra.telemetry import instrument_app, setup_tracing
from store.db import make_engine, make_sessionmaker
from store.schema import migrate

log = logging.getLogger(__name__)

CHECKOUT_RATE_PREFIX = "ratelimit:checkout"

NATIVE_TELEMETRY = "telemetry" in inspect.signature(FastAPI.__init__).parameters
"""FastAPI >= 0.16x traces requests itself (OpenTelemetry, global tracer provider)."""

DESCRIPTION = """
tradeflow's REST API, v1. The contract is `docs/api.md`; this service adds, without changing
anything written there:

* `GET /v1/couriers` → `{"items": [Courier]}` (`?available=true|false`, `?after=`, `?limit=`)
  and `GET /v1/couriers/{courier_id}` → `Courier` =
  `{"courier_id", "lat", "lng", "available", "current_order_id", "assignment"}`;
  the courier app polls it to learn about its offer (`assignment` is `OFFERED` or `ASSIGNED`).
* `POST /v1/orders`: lines with the same SKU are merged (quantities added); an unknown SKU is
  422 `unknown_sku` (with `skus`), an unknown location 422 `unknown_location`, items in
  different currencies 422 `currency_mismatch`. When the workflow service is down the order
  is stored and the answer is 503 `temporal_unavailable`; a retry with the same key starts it.
* `POST /v1/deliveries/{order_id}/events` answers
  `{"order_id", "courier_id", "type", "status", "accepted"}`; refusals are 409 with
  `courier_mismatch`, `out_of_order` or `not_dispatching` (no open offer).
* `PUT /v1/admin/products/{sku}` without `hot` keeps the product's current flag.
* Authentication (`TRADEFLOW_AUTH`, see docs/security.md): `POST
  /v1/admin/couriers/{courier_id}/tokens` → 201 `{"token", "courier_id", "created_at"}` (the
  token is shown once), `DELETE` → 200 `{"courier_id", "revoked"}`; an address that keeps
  presenting bad credentials gets 429 `rate_limited` with `Retry-After`; 503
  `auth_unavailable` while the JWKS cannot be fetched.
* `GET /readyz` 503 body: `{"status": "unavailable", "failing": [...], "reasons": {...}}`.
* Problems may carry extra members: `errors` (validation details), `skus`, `order_status`,
  `trace_id`. A dependency that is down is 503 (`temporal_unavailable`,
  `database_unavailable`, `redis_unavailable`, `internal_unavailable`) with `Retry-After`. No
  request, however malformed, gets a 500: only a bug does, as 500 `internal_error` whose
  `trace_id` is the one logged with its traceback.
"""


async def _migrate(url: str, attempts: int = 5) -> None:
    """Upgrade the schema in a worker thread. On SQLite nothing serialises two processes that
    migrate at once (PostgreSQL takes an advisory lock), so a loser retries: by then the
    winner has finished and the upgrade is a no-op."""
    for attempt in range(1, attempts + 1):
        try:
            await asyncio.to_thread(migrate, url)
            return
        except OperationalError as exc:
            if attempt == attempts:
                raise
            log.warning("schema migration failed (attempt %d), retrying: %s", attempt, exc)
            await asyncio.sleep(0.5 * attempt)


def create_app(
    settings: Settings | None = None,
    *,
    engine: AsyncEngine | None = None,
    redis: aioredis.Redis | None = None,
    temporal_client: Client | None = None,
    migrate_on_start: bool = True,
    search_attributes: bool = True,
    orders_task_queue: str = ORDERS_TASK_QUEUE,
    dispatch_task_queue: str = DISPATCH_TASK_QUEUE,
    tracing: bool = True,
) -> FastAPI:
    """Build the API. Nothing connects until the lifespan starts.

    ``engine``, ``redis`` and ``temporal_client`` are used as given (and not closed at
    shutdown); otherwise they are made from ``settings``. Without a client the API connects
    to Temporal in the background, so it starts (and ``/readyz`` says 503) while Temporal is
    still coming up. ``search_attributes=False`` starts orders without the custom search
    attributes, for servers that have not registered them.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tracing:
            setup_tracing("tradeflow-api", settings)
        db = engine if engine is not None else make_engine(settings.async_database_url)
        if migrate_on_start:
            await _migrate(to_sync_url(db.url.render_as_string(hide_password=False)))
        cache_redis = redis if redis is not None else make_redis(settings.redis_url)
        temporal = TemporalConnector(settings, temporal_client)
        temporal.start()
        sessionmaker = make_sessionmaker(db)
        limiter = GcraLimiter(
            cache_redis,
            rate_per_s=settings.checkout_rate_per_s,
            burst=settings.checkout_burst,
            prefix=CHECKOUT_RATE_PREFIX,
        )
        app.state.tradeflow = AppState(
            settings=settings,
            engine=db,
            sessionmaker=sessionmaker,
            redis=cache_redis,
            temporal=temporal,
            catalogue=Catalogue(sessionmaker, CacheAside(cache_redis, prefix=PRODUCT_CACHE_PREFIX)),
            checkout_limiter=limiter,
            edge=SoldOutEdge(cache_redis, limiter, ttl_s=settings.edge_idempotency_ttl_s),
            orders_task_queue=orders_task_queue,
            dispatch_task_queue=dispatch_task_queue,
            search_attributes=search_attributes,
        )
        # Losers answered at the edge, written to SQL behind their answers (api/write_behind.py).
        write_behind = app.state.write_behind = WriteBehind(sessionmaker, cache_redis, settings)
        write_behind.start()
        try:
            yield
        finally:
            await write_behind.stop()
            await app.state.tradeflow.auth.aclose()
            await temporal.stop()
            if redis is None:
                await cache_redis.aclose()
            if engine is None:
                await db.dispose()

    app = FastAPI(
        title="tradeflow",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    # Innermost of the middleware: inside the error handling, metrics and tracing, outside
    # the router (a sold-out checkout is answered there; docs/inventory.md).
    app.add_middleware(CheckoutFastPath)
    install_error_handlers(app)
    # Outermost: sees the final status code. Spans come from FastAPI itself where it can.
    app.add_middleware(ObservabilityMiddleware, spans=not NATIVE_TELEMETRY)
    # Orders first: a request is matched against the routes in this order, and checkout is
    # the route under the most load (a flash sale).
    for module in (orders, health, products, inventory, admin, deliveries, couriers, payments):
        app.include_router(module.router)
    app.include_router(refunds.router)
    app.include_router(repairs.router)
    codec.install(app, settings)
    if tracing:
        instrument_app(app)  # FastAPI, SQLAlchemy, Redis, httpx spans (infra/telemetry.py)
    install_problem_openapi(app)
    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # ``uvicorn api.app:app``: build the default app on first access, not at import.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
