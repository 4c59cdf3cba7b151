"""API test harness: the real app over ASGI, a real migrated database, real Redis, the real
Temporal dev server (``dev_env`` from tests/conftest.py) with test stand-ins for the workflows.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.app import create_app
from store.db import make_engine
from tests.api.fakes import FakeDeliveryWorkflow, FakeOrderWorkflow
from tests.api.helpers import Api, make_settings

ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


@pytest.fixture(scope="session")
async def fake_workers(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """One worker for the stand-in workflows on its own queue (orders and dispatch)."""
    queue = f"api-tests-{uuid.uuid4().hex[:8]}"
    async with Worker(
        dev_env.client,
        task_queue=queue,
        workflows=[FakeOrderWorkflow, FakeDeliveryWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield queue


@pytest.fixture
def api_factory(tmp_path: Path, dev_env: WorkflowEnvironment, fake_workers: str) -> ApiFactory:
    """``async with api_factory(db_url=..., temporal=..., **settings) as api:`` a running app."""

    @contextlib.asynccontextmanager
    async def start(
        *,
        db_url: str | None = None,
        temporal: Client | bool | None = True,
        **overrides: Any,
    ) -> AsyncIterator[Api]:
        url = db_url or f"sqlite:///{tmp_path / 'api.db'}"
        settings = make_settings(tmp_path, url, **overrides)
        client = dev_env.client if temporal is True else (temporal or None)
        engine = make_engine(url)
        app = create_app(
            settings,
            temporal_client=client,
            orders_task_queue=fake_workers,
            dispatch_task_queue=fake_workers,
            migrate_on_start=True,
        )
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                    yield Api(http=http, app=app, engine=engine, temporal=client, settings=settings)
        finally:
            await engine.dispose()

    return start


@pytest.fixture
async def api(api_factory: ApiFactory) -> AsyncIterator[Api]:
    async with api_factory() as running:
        yield running
