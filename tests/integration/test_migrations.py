"""Alembic migrations: the schema they build is the one the models describe, on both databases,
and many processes may run them at once (API replicas and workers all migrate on start)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, pool, text
from sqlmodel import SQLModel

import store.models  # noqa: F401
from store import outbox  # noqa: F401  (order_events)
from store.schema import migrate
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
