"""Bring a database to the newest schema with Alembic (SQLite and PostgreSQL alike)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool

from infra.settings import to_sync_url

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", to_sync_url(url).replace("%", "%%"))
    return cfg


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(url: str) -> None:
    """Upgrade to head. Safe to call from many processes at once: PostgreSQL serialises them
    with an advisory lock, SQLite with an exclusive lock on a file beside the database."""
    sync_url = to_sync_url(url)
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if sync_url.startswith("sqlite:///"):
        db_file = Path(sync_url[len("sqlite:///") :].split("?", 1)[0])
        db_file.parent.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(db_file.with_name(db_file.name + ".migrate.lock"))
    with lock:
        _upgrade(sync_url)


def _upgrade(sync_url: str) -> None:
    engine = create_engine(sync_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Serialise concurrent starters (API replicas, workers) on one migration run.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            cfg = alembic_config(sync_url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
