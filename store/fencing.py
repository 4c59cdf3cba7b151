"""Fencing tokens for zone leases (Kleppmann, "How to do distributed locking", 2016).

A lease from Redis alone cannot stop a holder that was paused past its TTL (GC, SIGSTOP, a
slow VM) from writing after another holder took over. So every grant takes the next value of a
counter in the database, which is linearizable (one row, one atomic UPDATE), and every write made
under the lease first passes :func:`admit`: the zone's fence row keeps the highest token seen, and
a write carrying a lower one is refused in the same transaction as the write itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import FencingCounter, ZoneFence, utcnow_iso
from store.sql import dialect_insert

COUNTERS: Table = FencingCounter.__table__  # type: ignore[attr-defined]
FENCES: Table = ZoneFence.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Fence:
    """What a write made under a zone lease carries: the zone and the lease's token."""

    zone: str
    token: int


class StaleFencingToken(Exception):
    """A write carried a token lower than one the zone has already seen: its lease is gone."""

    def __init__(self, zone: str, token: int) -> None:
        super().__init__(f"fencing token {token} for zone {zone} is stale")
        self.zone = zone
        self.token = token


async def next_token(s: AsyncSession, *, name: str) -> int:
    """The next fencing token of ``name``: strictly greater than every one handed out before."""
    ins = dialect_insert(s, COUNTERS).values(name=name, value=1)
    stmt = ins.on_conflict_do_update(
        index_elements=[COUNTERS.c.name], set_={"value": COUNTERS.c.value + 1}
    ).returning(COUNTERS.c.value)
    return int((await s.execute(stmt)).scalar_one())


async def admit(s: AsyncSession, *, zone: str, token: int) -> None:
    """Let a write for ``zone`` under ``token`` go on, or raise :class:`StaleFencingToken`.

    Call it inside the write's transaction: the fence row stays locked until commit, so a newer
    holder's write and this one are serialised and the check cannot go stale before the write.
    """
    ins = dialect_insert(s, FENCES).values(zone=zone, token=token, updated_at=utcnow_iso())
    stmt = ins.on_conflict_do_update(
        index_elements=[FENCES.c.zone],
        set_={"token": ins.excluded.token, "updated_at": ins.excluded.updated_at},
        where=FENCES.c.token <= ins.excluded.token,
    ).returning(FENCES.c.token)
    if (await s.execute(stmt)).first() is None:
        raise StaleFencingToken(zone, token)


async def highest_token(s: AsyncSession, *, zone: str) -> int | None:
    return (
        await s.execute(select(FENCES.c.token).where(FENCES.c.zone == zone))
    ).scalar_one_or_none()


def token_source(sessions: async_sessionmaker[Any]) -> Callable[[str], Awaitable[int]]:
    """A Redlock fencing source: one counter row per leased resource, in its own transaction."""

    async def next_for(resource: str) -> int:
        async with sessions() as s, s.begin():
            return await next_token(s, name=resource[:64])

    return next_for
