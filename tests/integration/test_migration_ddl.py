"""The DDL every revision emits is history: it must equal the committed golden files in
tests/integration/golden/, upgrade (base to head) and downgrade (head to base), on both dialects.
PostgreSQL is rendered offline (`alembic upgrade head --sql`, `downgrade head:base --sql`).
SQLite cannot be: its batch operations reflect the live table to copy it, so there every statement
Alembic executes on a fresh database file is recorded instead (reflection PRAGMAs included). A change to a revision, or to store/migrations/columns.py which the
revisions build their columns with, that alters a single emitted byte fails here.

Regenerate the files only for a NEW revision (never for an old one):
    TRADEFLOW_WRITE_GOLDEN_DDL=1 .venv/bin/pytest -q tests/integration/test_migration_ddl.py
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, pool

from store.schema import alembic_config

GOLDEN = Path(__file__).with_name("golden")
# Offline mode connects to nothing: the URL only selects the dialect the SQL is rendered for
# (SQLite's URL is a fresh file per test).
URLS = {"sqlite": "", "postgresql": "postgresql+psycopg://golden@localhost/golden"}


def render(dialect: str, direction: str, tmp_path: Path) -> str:
    return _executed_on_sqlite(direction, tmp_path) if dialect == "sqlite" else _offline(direction)


def _run(cfg: Config, direction: str, sql: bool) -> None:
    if direction == "upgrade":
        command.upgrade(cfg, "head", sql=sql)
    else:
        command.downgrade(cfg, "head:base" if sql else "base", sql=sql)


def _offline(direction: str) -> str:
    cfg = alembic_config(URLS["postgresql"])
    buf = io.StringIO()
    cfg.output_buffer = buf
    _run(cfg, direction, sql=True)
    return buf.getvalue()


def _executed_on_sqlite(direction: str, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'golden.db'}"
    engine = create_engine(url, poolclass=pool.NullPool)
    if direction == "downgrade":
        command.upgrade(alembic_config(url), "head")
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(f"{statement.strip()}\n-- {parameters!r};\n")

    with engine.begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        _run(cfg, direction, sql=False)
    engine.dispose()
    return "\n".join(_sort_index_runs(statements))


def _sort_index_runs(statements: list[str]) -> list[str]:
    """A batch table copy re-creates the table's indexes in set order, which varies between
    interpreter runs: sort each run of consecutive CREATE INDEX statements (nothing else moves)."""
    out: list[str] = []
    run: list[str] = []
    for s in [*statements, ""]:
        if s.startswith(("CREATE INDEX", "CREATE UNIQUE INDEX")):
            run.append(s)
            continue
        out.extend(sorted(run))
        run = []
        if s:
            out.append(s)
    return out


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
@pytest.mark.parametrize("dialect", sorted(URLS))
def test_every_revision_renders_its_committed_ddl(
    dialect: str, direction: str, tmp_path: Path
) -> None:
    path = GOLDEN / f"ddl.{direction}.{dialect}.sql"
    rendered = render(dialect, direction, tmp_path)
    if os.environ.get("TRADEFLOW_WRITE_GOLDEN_DDL") == "1":
        path.write_text(rendered)
    assert "CREATE TABLE" in rendered or "DROP TABLE" in rendered
    assert rendered == path.read_text(), f"{direction} DDL for {dialect} differs from {path}"
