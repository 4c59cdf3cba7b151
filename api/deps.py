"""``Annotated`` dependency aliases, so handlers read like sentences."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Header, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth import admin
from api.errors import ApiProblem
from api.state import AppState
from infra.settings import Settings

MAX_IDEMPOTENCY_KEY = 255


# The dependencies here are ``async def`` though they never wait: FastAPI runs a plain ``def``
# dependency in its thread pool, a hand-off to a thread and back (~50-100 us) per dependency
# per request, which a checkout paid several times (docs/benchmarks.md, "Flash sale").


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.tradeflow
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_redis(state: StateDep) -> aioredis.Redis:
    return state.redis


RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]


AdminDep = Depends(admin)
"""Use as ``dependencies=[AdminDep]`` on an admin router: ``X-Admin-Token`` (401 without it,
403 when wrong), or an operator's JWT when authentication is on (api/auth.py)."""


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            # Documented, not enforced by FastAPI (that would answer 422; the contract says 400).
            json_schema_extra={
                "minLength": 1,
                "maxLength": MAX_IDEMPOTENCY_KEY,
                "pattern": r"\S",
            },
        ),
    ] = None,
) -> str:
    # A 400 (not FastAPI's 422): the contract calls a missing key a bad request.
    if key is None or not key.strip():
        raise ApiProblem(400, "validation_error", "the Idempotency-Key header is required")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiProblem(
            400, "validation_error", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters"
        )
    return key


IdempotencyKeyDep = Annotated[str, Depends(idempotency_key)]
