"""Redlock leases over N independent Redis nodes, each grant carrying a fencing token.

The algorithm is the one the Redis documentation specifies ("Distributed Locks with Redis"):

1. Take a random owner value and the current monotonic time.
2. ``SET key value NX PX ttl`` on every node, each with a timeout small against the TTL, so a
   dead node costs little.
3. The lock is held when a majority (``N // 2 + 1``) said yes *and* the validity left,
   ``ttl - elapsed - drift`` (drift = ``ttl * drift_factor`` + 2 ms for clock rate differences),
   is positive. Otherwise it is released on every node (also where the SET seemed to fail: the
   reply may have been lost) and tried again after a random delay, so contenders desynchronise.
4. Release and extension are owner-checked Lua scripts: a holder never deletes or prolongs a
   lock another client holds now. An extension also needs a majority and recomputes the
   validity; a lease can be extended only ``max_extensions`` times.

Redlock alone cannot stop a holder that pauses past its TTL and then writes (Kleppmann). So a
lease may take a *fencing token* from a linearizable source (``fencing``, e.g. a database
counter) once the quorum is in; the token is strictly greater than that of every earlier grant
of any holder, and the store that receives the holder's writes refuses a token lower than the
highest it has seen (see ``store/fencing.py``).

:meth:`Redlock.hold` runs a block while keeping its lease alive; when the lease is lost (an
extension fails, the extension limit is reached, validity runs out) the block's task is
cancelled and :class:`LeaseLost` raised in it, and ``guard.lost`` is set for code that polls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

FencingSource = Callable[[str], Awaitable[int]]
"""Given a resource, the next fencing token (strictly increasing across all grants)."""


class LockError(Exception):
    pass


class QuorumNotAchieved(LockError):
    """No majority of nodes granted the lease (with validity left) within the retries."""


class LeaseLost(LockError):
    """The lease ended before its holder was done: whatever it guarded must stop."""


class ExtensionLimitReached(LeaseLost):
    """The lease was extended ``max_extensions`` times already."""


@dataclass
class Lease:
    resource: str
    key: str
    value: str
    """Random owner value: only this holder's scripts match it."""
    ttl_ms: int
    valid_until: float
    """``time.monotonic()`` after which the holder must assume the lease is gone."""
    token: int | None = None
    """Fencing token of this grant (None without a fencing source)."""
    extensions: int = 0

    def remaining_s(self) -> float:
        return self.valid_until - time.monotonic()

    def is_valid(self) -> bool:
        return self.remaining_s() > 0


@dataclass
class RedlockConfig:
    ttl_ms: int = 10_000
    retry_count: int = 3
    """Further attempts after the first one fails."""
    retry_delay_ms: int = 200
    """Each retry waits a random time up to this (jitter)."""
    drift_factor: float = 0.01
    max_extensions: int | None = None
    """How often a lease may be extended; None: without limit."""
    node_timeout_ms: int | None = None
    """Per-node timeout of each command; default ttl / 20, at least 5 ms."""
    prefix: str = "lock:"


@dataclass
class Redlock:
    nodes: Sequence[aioredis.Redis]
    config: RedlockConfig = field(default_factory=RedlockConfig)
    fencing: FencingSource | None = None

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("Redlock needs at least one Redis node")
        self.quorum = len(self.nodes) // 2 + 1

    # ---------------------------------------------------------------- per-node primitives
    @property
    def _node_timeout_s(self) -> float:
        ms = self.config.node_timeout_ms or max(5, self.config.ttl_ms // 20)
        return ms / 1000

    async def _on_node(self, node: aioredis.Redis, op: Awaitable[object]) -> object | None:
        try:
            return await asyncio.wait_for(op, timeout=self._node_timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            log.debug("lock node %s failed: %r", node, e)
            return None

    async def _set_all(self, key: str, value: str, ttl_ms: int) -> int:
        results = await asyncio.gather(
            *(self._on_node(n, n.set(key, value, nx=True, px=ttl_ms)) for n in self.nodes)
        )
        return sum(1 for r in results if r)

    async def _script_all(self, script: str, key: str, *args: object) -> int:
        results = await asyncio.gather(
            *(self._on_node(n, n.eval(script, 1, key, *args)) for n in self.nodes)  # type: ignore[arg-type]
        )
        return sum(1 for r in results if r)

    def _validity_ms(self, ttl_ms: int, started: float) -> float:
        elapsed_ms = (time.monotonic() - started) * 1000
        drift_ms = ttl_ms * self.config.drift_factor + 2
        return ttl_ms - elapsed_ms - drift_ms

    # ----------------------------------------------------------------------------- API
    def key_for(self, resource: str) -> str:
        return f"{self.config.prefix}{resource}"

    async def try_acquire(self, resource: str, *, ttl_ms: int | None = None) -> Lease | None:
        """One attempt: a lease, or None (and nothing left behind) without a quorum."""
        ttl = ttl_ms or self.config.ttl_ms
        key, value = self.key_for(resource), secrets.token_hex(20)
        started = time.monotonic()
        granted = await self._set_all(key, value, ttl)
        validity = self._validity_ms(ttl, started)
        if granted >= self.quorum and validity > 0:
            lease = Lease(resource, key, value, ttl, started + validity / 1000)
            if self.fencing is None:
                return lease
            try:
                lease.token = await self.fencing(resource)
            except BaseException:
                await self.release(lease)
                raise
            if lease.is_valid():
                return lease
        await self._script_all(_RELEASE, key, value)
        return None

    async def acquire(self, resource: str, *, ttl_ms: int | None = None) -> Lease:
        """A lease on ``resource``, retrying with jitter; :class:`QuorumNotAchieved` if not."""
        for attempt in range(self.config.retry_count + 1):
            lease = await self.try_acquire(resource, ttl_ms=ttl_ms)
            if lease is not None:
                return lease
            if attempt < self.config.retry_count:
                await asyncio.sleep(random.uniform(0, self.config.retry_delay_ms / 1000))
        raise QuorumNotAchieved(
            f"no quorum ({self.quorum}/{len(self.nodes)}) for {resource} after "
            f"{self.config.retry_count + 1} attempts"
        )

    async def extend(self, lease: Lease, *, ttl_ms: int | None = None) -> Lease:
        """Prolong ``lease`` to a fresh TTL on a majority, or raise :class:`LeaseLost`."""
        limit = self.config.max_extensions
        if limit is not None and lease.extensions >= limit:
            raise ExtensionLimitReached(f"{lease.resource}: extended {limit} times already")
        if not lease.is_valid():
            raise LeaseLost(f"{lease.resource}: validity ran out before the extension")
        ttl = ttl_ms or lease.ttl_ms
        started = time.monotonic()
        extended = await self._script_all(_EXTEND, lease.key, lease.value, ttl)
        validity = self._validity_ms(ttl, started)
        if extended < self.quorum or validity <= 0:
            raise LeaseLost(
                f"{lease.resource}: extension reached {extended}/{len(self.nodes)} nodes"
            )
        lease.ttl_ms = ttl
        lease.valid_until = started + validity / 1000
        lease.extensions += 1
        return lease

    async def release(self, lease: Lease) -> None:
        """Delete the lock wherever it is still this lease's (idempotent, never throws)."""
        await self._script_all(_RELEASE, lease.key, lease.value)

    def hold(self, resource: str, *, ttl_ms: int | None = None) -> LeaseGuard:
        """``async with redlock.hold("zone:x") as guard:`` keeps the lease while the block runs
        and cancels the block (raising :class:`LeaseLost`) when the lease is lost."""
        return LeaseGuard(self, resource, ttl_ms)


class LeaseGuard:
    """The lease keeper of :meth:`Redlock.hold`."""

    def __init__(self, redlock: Redlock, resource: str, ttl_ms: int | None) -> None:
        self._redlock = redlock
        self._resource = resource
        self._ttl_ms = ttl_ms
        self._task: asyncio.Task[object] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.lease: Lease | None = None
        self.lost = asyncio.Event()
        """Set when the lease is lost (before the block is cancelled)."""
        self.reason: LeaseLost | None = None

    @property
    def token(self) -> int | None:
        return None if self.lease is None else self.lease.token

    async def __aenter__(self) -> LeaseGuard:
        self._task = asyncio.current_task()
        self.lease = await self._redlock.acquire(self._resource, ttl_ms=self._ttl_ms)
        self._keeper = asyncio.create_task(self._keep(self.lease), name=f"lease:{self._resource}")
        return self

    async def _keep(self, lease: Lease) -> None:
        try:
            while True:
                # Extend at a third of the TTL: two more chances before validity runs out.
                await asyncio.sleep(max(0.0, min(lease.ttl_ms / 3000, lease.remaining_s() / 2)))
                try:
                    await self._redlock.extend(lease)
                except ExtensionLimitReached as e:
                    # No more extensions: the lease is good until its validity ends, then lost.
                    await asyncio.sleep(max(0.0, lease.remaining_s()))
                    self._lose(e)
                    return
                except LeaseLost as e:
                    self._lose(e)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an unexpected failure must not leave the block unguarded
            self._lose(LeaseLost(f"{lease.resource}: keeper failed: {e!r}"))

    def _lose(self, reason: LeaseLost) -> None:
        log.warning("lease lost: %s", reason)
        self.reason = reason
        self.lost.set()
        if self._task is not None:
            self._task.cancel(msg="lease lost")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        if self.lease is not None:
            await asyncio.shield(self._redlock.release(self.lease))
        if (
            self.reason is not None
            and exc_type is asyncio.CancelledError
            and self._task is not None
            and self._task.uncancel() == 0
        ):
            raise self.reason from exc
