"""Column builders for the Alembic revisions in versions/.

FROZEN. The revisions depend on this module, so what a function here emits is part of history:
changing it would change what an old revision builds on a new database. Never edit a function's
output; add a new function instead. tests/integration/test_migration_ddl.py compares the DDL of
every revision (both dialects, upgrade and downgrade) with committed golden files and fails on
any change.

Each function returns exactly the column Alembic's autogenerate wrote for the matching SQLModel
field: NOT NULL unless `nullable=True`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel.sql.sqltypes import AutoString

TIMESTAMP_LENGTH = 32  # ISO-8601 text, as store/models.py keeps every instant


def varchar(name: str, length: int, *, nullable: bool = False) -> sa.Column[str]:
    """A `str` field with `max_length=length` (sqlmodel's AutoString, VARCHAR(length))."""
    return sa.Column(name, AutoString(length=length), nullable=nullable)


def timestamp(name: str, *, nullable: bool = False) -> sa.Column[str]:
    """An instant stored as ISO-8601 text: varchar(name, 32)."""
    return varchar(name, TIMESTAMP_LENGTH, nullable=nullable)


def integer(name: str, *, nullable: bool = False) -> sa.Column[int]:
    """An `int` field (counts, quantities, amounts in cents)."""
    return sa.Column(name, sa.Integer(), nullable=nullable)


def real(name: str, *, nullable: bool = False) -> sa.Column[float]:
    """A `float` field."""
    return sa.Column(name, sa.Float(), nullable=nullable)


def boolean(name: str, *, nullable: bool = False) -> sa.Column[bool]:
    """A `bool` field."""
    return sa.Column(name, sa.Boolean(), nullable=nullable)


def json(name: str, *, nullable: bool = False) -> sa.Column[object]:
    """A JSON field."""
    return sa.Column(name, sa.JSON(), nullable=nullable)
