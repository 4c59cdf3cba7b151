"""Dialect helpers for the few statements SQLite and PostgreSQL spell differently.

Both dialects support ``INSERT ... ON CONFLICT`` and ``RETURNING``; SQLAlchemy has one
``insert`` construct per dialect, picked here from the session's (or connection's) bind.
Decisions are taken from ``RETURNING`` rows, never from ``rowcount``: psycopg reports -1 for
``INSERT ... ON CONFLICT DO NOTHING`` through SQLAlchemy's insert path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Column, Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession


def dialect_insert(s: AsyncSession | AsyncConnection, table: Table) -> Any:
    """``INSERT INTO table`` in the bind's dialect, with its ``on_conflict_do_*`` methods."""
    dialect = (s.get_bind() if isinstance(s, AsyncSession) else s).dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


def insert_ignore(
    s: AsyncSession | AsyncConnection,
    table: Table,
    values: dict[str, Any],
    *,
    conflict_on: Sequence[str] | None = None,
) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING <pk>``: a row comes back iff it inserted.

    ``conflict_on`` names the unique columns whose conflict means "already there" (any unique
    constraint when None)."""
    return (
        dialect_insert(s, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict_on)
        .returning(*table.primary_key.columns)
    )


def upsert(
    s: AsyncSession | AsyncConnection,
    table: Table,
    values: dict[str, Any],
    *,
    conflict_on: Sequence[str],
    replace: Iterable[str],
) -> Any:
    """``INSERT ... ON CONFLICT (conflict_on) DO UPDATE SET <replace> = the new values
    RETURNING *``: the row as it is now, new, or old with the ``replace`` columns overwritten."""
    ins = dialect_insert(s, table).values(**values)
    return ins.on_conflict_do_update(
        index_elements=list(conflict_on), set_={c: ins.excluded[c] for c in replace}
    ).returning(table)


async def insert_many_ignore(
    s: AsyncSession,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    returning: Sequence[Column[Any]],
    conflict_on: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """``insert_ignore`` for many rows (all with the same keys): the ``returning`` columns of
    the rows inserted, in the rows' order.

    SQLite: one executemany, which SQLAlchemy sends as multi-row batches. PostgreSQL: one
    statement whatever the number of rows, the rows as a single JSON parameter
    (``json_populate_recordset``): the multi-row ``VALUES`` that SQLAlchemy would build has a
    new text for every batch, and psycopg parses each anew (~8 ms for 100 rows of an order,
    most of the write-behind's cost there)."""
    if not rows:
        return []
    if s.get_bind().dialect.name != "postgresql":
        stmt = (
            dialect_insert(s, table)
            .on_conflict_do_nothing(index_elements=conflict_on)
            .returning(*returning)
        )
        return [tuple(r) for r in (await s.execute(stmt, list(rows))).all()]
    quote = s.get_bind().dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in rows[0])
    target = f"({', '.join(quote(c) for c in conflict_on)})" if conflict_on else ""
    back = ", ".join(quote(c.name) for c in returning)
    name = quote(table.name)
    stmt = text(
        f"INSERT INTO {name} ({names}) SELECT {names} FROM "
        f"json_populate_recordset(NULL::{name}, CAST(:rows AS json)) WITH ORDINALITY AS r "
        f"ORDER BY r.ordinality ON CONFLICT {target} DO NOTHING RETURNING {back}"
    )
    payload = json.dumps(list(rows), separators=(",", ":"))
    return [tuple(r) for r in (await s.execute(stmt, {"rows": payload})).all()]
