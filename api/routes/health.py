"""Liveness, readiness (Temporal, database, Redis) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep
from api.state import AppState
from infra.telemetry import metrics

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness: 200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_database(state: AppState) -> None:
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_redis(state: AppState) -> None:
    if not await state.redis.ping():
        raise RuntimeError("PING did not answer PONG")


async def _check_temporal(state: AppState) -> None:
    client = state.temporal.client
    if client is None:
        raise RuntimeError(state.temporal.last_error or "not connected yet")
    if not await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_S)):
        raise RuntimeError("health check answered not serving")


async def _probe(name: str, check: Any, state: AppState) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(check(state), timeout=CHECK_TIMEOUT_S)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        log.warning("readiness: %s failing: %s", name, reason)
        return name, reason
    return name, None


@router.get(
    "/readyz",
    summary="Readiness: 200 when Temporal, the database and Redis answer",
    responses={
        503: {
            "description": "One or more dependencies do not answer",
            "content": {
                "application/json": {"example": {"status": "unavailable", "failing": ["redis"]}}
            },
        }
    },
)
async def readyz(state: StateDep) -> JSONResponse:
    results = await asyncio.gather(
        _probe("temporal", _check_temporal, state),
        _probe("database", _check_database, state),
        _probe("redis", _check_redis, state),
    )
    failing = {name: reason for name, reason in results if reason is not None}
    if failing:
        return JSONResponse(
            {"status": "unavailable", "failing": sorted(failing), "reasons": failing},
            status_code=503,
        )
    return JSONResponse({"status": "ok"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type)
