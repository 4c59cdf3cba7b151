"""Dialect helpers for the few statements SQLite and PostgreSQL spell differently.

Decisions are taken from ``RETURNING`` rows, never from ``rowcount``: psycopg reports -1 for
``INSERT ... ON CONFLICT DO NOTHING`` through SQLAlchemy's insert path.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession


def insert_ignore(s: AsyncSession | AsyncConnection, table: Table, values: dict[str, Any]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING <pk>``: a row comes back iff it inserted."""
    dialect = (s.get_bind() if isinstance(s, AsyncSession) else s).dialect.name
    if dialect == "postgresql":
        ins: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        ins = sqlite.insert(table)
    else:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    return ins.values(**values).on_conflict_do_nothing().returning(*table.primary_key.columns)
