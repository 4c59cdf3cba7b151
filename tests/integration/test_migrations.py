"""Alembic migrations: the schema they build is the one the models describe, on both databases,
and many processes may run them at once (API replicas and workers all migrate on start)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

import store.models  # noqa: F401
from store import outbox  # noqa: F401  (order_events)
from store.schema import alembic_config, migrate
from tests.conftest import drop_postgres_schema, new_postgres_schema


def _diff(url: str) -> list[object]:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        main = conn.execute(text("SELECT name FROM locations WHERE location_id = 'main'")).scalar()
    engine.dispose()
    assert main, "location main must exist after migrating"
    return list(diffs)


def test_migrations_match_the_models_on_sqlite(sqlite_url: str) -> None:
    assert _diff(sqlite_url) == []


def test_migrations_match_the_models_on_postgres(postgres_url: str) -> None:
    assert _diff(postgres_url) == []


def _run_concurrently(url: str, n: int = 6) -> list[int | None]:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=migrate, args=(url,)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def test_concurrent_migrations_of_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert _run_concurrently(url) == [0] * 6
    assert _diff(url) == []


def test_concurrent_migrations_on_postgres_all_succeed() -> None:
    schema, url = new_postgres_schema()
    try:
        assert _run_concurrently(url) == [0] * 6
        assert _diff(url) == []
    finally:
        drop_postgres_schema(schema)


# ------------------------------------------------------------- 0009: the try as a function


def _head_and_function(url: str) -> tuple[str | None, int | None]:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        functions = None
        if conn.dialect.name == "postgresql":
            functions = conn.execute(
                text(
                    "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                    " WHERE p.proname = 'tradeflow_try_reserve' AND n.nspname = current_schema()"
                )
            ).scalar()
    engine.dispose()
    return head, functions


def _try_once(url: str, order_id: str) -> str | None:
    engine = create_engine(url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT tradeflow_try_reserve(%s, 'main', 'SKU-M', 1, 'now')", (order_id,)
        ).scalar()
    engine.dispose()
    return found


def test_a_postgres_database_at_the_previous_head_gets_the_try_function() -> None:
    schema, url = new_postgres_schema()
    try:
        cfg = alembic_config(url)
        command.upgrade(cfg, "0008")
        assert _head_and_function(url) == ("0008", 0)
        engine = create_engine(url, poolclass=pool.NullPool)
        with engine.begin() as conn:  # data written before the upgrade stays usable
            conn.exec_driver_sql(
                "INSERT INTO stock (location_id, sku, available, reserved, sold, stocked,"
                " updated_at) VALUES ('main', 'SKU-M', 1, 0, 0, 1, 'x')"
            )
        engine.dispose()
        migrate(url)
        assert _head_and_function(url) == ("0009", 1)
        assert _diff(url) == []
        assert _try_once(url, "o-1") is None  # fenced and moved
        assert _try_once(url, "o-1") == "TRIED"  # a repeat moves nothing
        with pytest.raises(DBAPIError) as err:
            _try_once(url, "o-2")
        assert getattr(err.value.orig, "sqlstate", None) == "TF001"
        command.downgrade(cfg, "0008")
        assert _head_and_function(url) == ("0008", 0)
        migrate(url)  # and up again
        assert _head_and_function(url) == ("0009", 1)
    finally:
        drop_postgres_schema(schema)


def test_a_sqlite_database_at_the_previous_head_upgrades_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'previous.db'}"
    command.upgrade(alembic_config(url), "0008")
    assert _head_and_function(url) == ("0008", None)
    migrate(url)
    assert _head_and_function(url) == ("0009", None)
    assert _diff(url) == []
