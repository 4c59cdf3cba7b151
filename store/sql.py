"""Dialect helpers for the few statements SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert


def _insert(session: AsyncSession, table: Table) -> Any:
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


def insert_ignore(session: AsyncSession, table: Table, values: dict[str, Any]) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING``; the result's rowcount says whether it inserted."""
    stmt: Insert = _insert(session, table).values(**values).on_conflict_do_nothing()
    return stmt
