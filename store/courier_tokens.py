"""Courier tokens: issue (store the hash), look up by hash, revoke every token of a courier."""

from __future__ import annotations

import hashlib

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import CourierToken, utcnow_iso

T: Table = CourierToken.__table__  # type: ignore[attr-defined]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


async def issue(s: AsyncSession, *, courier_id: str, token: str) -> str:
    """Store the hash of a new token; returns its creation time."""
    now = utcnow_iso()
    await s.execute(
        T.insert().values(token_hash=token_hash(token), courier_id=courier_id, created_at=now)
    )
    return now


async def courier_of(s: AsyncSession, *, token: str) -> str | None:
    """The courier a live token belongs to, or None (unknown or revoked)."""
    row = (
        await s.execute(
            select(T.c.courier_id).where(
                (T.c.token_hash == token_hash(token)) & T.c.revoked_at.is_(None)
            )
        )
    ).first()
    return None if row is None else str(row[0])


async def revoke_all(s: AsyncSession, *, courier_id: str) -> int:
    """Revoke every live token of the courier; returns how many."""
    res = await s.execute(
        update(T)
        .where((T.c.courier_id == courier_id) & T.c.revoked_at.is_(None))
        .values(revoked_at=utcnow_iso())
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]
