"""Helpers shared by the API tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from infra.settings import Settings

ADMIN_TOKEN = "test-admin-token"
REDIS_URL = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(data_dir: Path, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "TRADEFLOW_DATA_DIR": str(data_dir),
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS_URL,
        "TRADEFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
        "TRADEFLOW_CHECKOUT_RATE": "1000/s",
        "TRADEFLOW_CHECKOUT_BURST": 1000,
        "TRADEFLOW_OTEL_EXPORTER": "none",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}",
    }
    values.update(overrides)
    return Settings.from_variables(values).with_secrets()


@dataclass
class Api:
    """A running app and what the tests need to look behind it."""

    http: httpx.AsyncClient
    app: FastAPI
    engine: AsyncEngine
    temporal: Client | None
    settings: Settings

    @property
    def admin(self) -> dict[str, str]:
        return {"X-Admin-Token": ADMIN_TOKEN}

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    async def put_product(
        self, sku: str, price_cents: int = 1299, currency: str = "USD", **extra: Any
    ) -> dict[str, Any]:
        r = await self.http.put(
            f"/v1/admin/products/{sku}",
            json={"name": f"Product {sku}", "price_cents": price_cents, "currency": currency}
            | extra,
            headers=self.admin,
        )
        assert r.status_code == 200, r.text
        return dict(r.json())


def unique(prefix: str) -> str:
    """Names shared with Redis (SKUs, customers) must not collide across tests and runs."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def order_body(customer_id: str, items: list[tuple[str, int]], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": customer_id,
        "location_id": "main",
        "items": [{"sku": sku, "quantity": q} for sku, q in items],
        "delivery": {"address": "1 Main St", "lat": 31.23, "lng": 121.47},
        "payment": {"token": "tok_ok"},
    }
    body.update(overrides)
    return body


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    return dict(body)
