"""Redlock over real Redis nodes, and the fencing tokens that stop a paused holder's writes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import insert, select

from infra.locks import (
    ExtensionLimitReached,
    LeaseLost,
    QuorumNotAchieved,
    Redlock,
    RedlockConfig,
)
from infra.redis import make_redis
from store import couriers as fleet
from store.db import make_engine, make_sessionmaker
from store.fencing import COUNTERS, Fence, StaleFencingToken, admit, next_token, token_source
from store.models import Courier
from tests.conftest import REDIS_URL
from tests.integration.test_launcher import free_port

pytestmark = pytest.mark.slow


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _start_node() -> Node:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            return Node(port, proc)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server on {port} did not start")


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Three independent redis-server processes on free ports."""
    started = [_start_node() for _ in range(3)]
    yield started
    for n in started:
        if n.proc.poll() is None:
            n.kill()


def _clients(urls: list[str]) -> list:  # type: ignore[type-arg]
    return [make_redis(u) for u in urls]


def _redlock(urls: list[str], **config: object) -> Redlock:
    return Redlock(_clients(urls), RedlockConfig(**config))  # type: ignore[arg-type]


async def _aclose(lock: Redlock) -> None:
    for n in lock.nodes:
        await n.aclose()


@pytest.fixture
async def sessions(sqlite_url: str) -> AsyncIterator:  # type: ignore[type-arg]
    engine = make_engine(sqlite_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def _add_couriers(sessions, *ids: str) -> None:  # type: ignore[no-untyped-def]
    async with sessions() as s, s.begin():
        for cid in ids:
            await s.execute(insert(Courier.__table__).values(courier_id=cid, lat=31.2, lng=121.4))  # type: ignore[attr-defined]


async def _holder_of(sessions, courier_id: str) -> str | None:  # type: ignore[no-untyped-def]
    async with sessions() as s:
        return (
            await s.execute(
                select(Courier.current_order_id).where(Courier.courier_id == courier_id)  # type: ignore[arg-type]
            )
        ).scalar_one()


@pytest.mark.parametrize("where", ["the real Redis", "three redis-server nodes"])
async def test_only_one_of_many_contenders_holds_a_zone_lease_at_a_time(
    where: str, nodes: list[Node], sessions
) -> None:  # type: ignore[no-untyped-def]
    urls = [REDIS_URL] if where == "the real Redis" else [n.url for n in nodes]
    resource = f"zone:test-{uuid.uuid4().hex[:8]}"
    inside, most_inside, grants = 0, 0, []
    fencing = token_source(sessions)

    async def contender() -> None:
        nonlocal inside, most_inside
        lock = Redlock(
            _clients(urls),
            RedlockConfig(ttl_ms=2000, retry_count=400, retry_delay_ms=10),
            fencing=fencing,
        )
        try:
            for _ in range(4):
                lease = await lock.acquire(resource)
                inside += 1
                most_inside = max(most_inside, inside)
                grants.append(lease.token)
                await asyncio.sleep(0.005)
                inside -= 1
                await lock.release(lease)
        finally:
            await _aclose(lock)

    await asyncio.gather(*(contender() for _ in range(10)))
    assert most_inside == 1
    assert len(grants) == 40
    assert grants == sorted(grants) and len(set(grants)) == 40  # each grant a newer token


async def test_quorum_holds_with_one_node_killed_and_is_lost_with_two_and_nothing_is_written(
    nodes: list[Node], sessions
) -> None:  # type: ignore[no-untyped-def]
    await _add_couriers(sessions, "k-1")
    lock = Redlock(
        _clients([n.url for n in nodes]),
        RedlockConfig(ttl_ms=1000, retry_count=2, retry_delay_ms=20, node_timeout_ms=250),
        fencing=token_source(sessions),
    )
    nodes[0].kill()
    lease = await lock.acquire("zone:q")
    assert lease.token == 1
    await lock.release(lease)

    nodes[1].kill()
    wrote = False
    with pytest.raises(QuorumNotAchieved):
        async with lock.hold("zone:q"):
            wrote = True
            async with sessions() as s, s.begin():
                await fleet.offer(s, order_id="o-1", courier_id="k-1", fence=Fence("q", 99))
    assert not wrote
    survivor = make_redis(nodes[2].url)
    assert await survivor.exists(lock.key_for("zone:q")) == 0  # the lone SET was undone
    await survivor.aclose()
    assert await _holder_of(sessions, "k-1") is None
    async with sessions() as s:  # no fencing token was drawn for the failed grant
        assert (await s.execute(select(COUNTERS.c.value))).scalar_one() == 1
    await _aclose(lock)


async def test_a_holder_paused_past_its_ttl_is_fenced_out_after_another_takes_the_lease(
    nodes: list[Node], sqlite_url: str, sessions
) -> None:  # type: ignore[no-untyped-def]
    await _add_couriers(sessions, "k-1", "k-2", "k-3")
    urls = [n.url for n in nodes]
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.lease_holder",
        sqlite_url,
        "z1",
        "1000",
        *urls,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert holder.stdin is not None and holder.stdout is not None

    async def ask(line: str) -> str:
        holder.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
        await holder.stdin.drain()  # type: ignore[union-attr]
        return (await holder.stdout.readline()).decode().strip()  # type: ignore[union-attr]

    try:
        first_token = int((await holder.stdout.readline()).split()[1])
        assert await ask("offer o-1 k-1") == "wrote"

        os.kill(holder.pid, signal.SIGSTOP)  # a GC pause, a frozen VM...
        lock = Redlock(
            _clients(urls),
            RedlockConfig(ttl_ms=20_000, retry_count=200, retry_delay_ms=50),
            fencing=token_source(sessions),
        )
        lease = await lock.acquire("zone:z1")  # succeeds once the paused holder's TTL lapses
        assert lease.token is not None and lease.token > first_token
        async with sessions() as s, s.begin():
            assert await fleet.offer(
                s, order_id="o-2", courier_id="k-2", fence=Fence("z1", lease.token)
            )

        os.kill(holder.pid, signal.SIGCONT)  # it still believes it holds the zone
        assert await ask("offer o-3 k-3") == "stale"
        assert await _holder_of(sessions, "k-3") is None
        assert await ask("release") == "released"  # owner-checked: the new holder's lock stays
        assert all([await c.get(lease.key) == lease.value for c in lock.nodes])
        await lock.release(lease)
        await _aclose(lock)
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


async def test_a_lease_is_extended_only_up_to_its_limit(nodes: list[Node]) -> None:
    lock = _redlock([n.url for n in nodes], ttl_ms=900, max_extensions=2, node_timeout_ms=200)
    lease = await lock.acquire("zone:ext")
    await lock.extend(lease)
    await lock.extend(lease)
    assert lease.extensions == 2
    with pytest.raises(ExtensionLimitReached):
        await lock.extend(lease)

    started = time.monotonic()
    reached = False
    with pytest.raises(ExtensionLimitReached):
        async with lock.hold("zone:ext2"):
            await asyncio.sleep(30)
            reached = True
    # two extensions at ttl/3, then the last validity: about 1.5 s, far under the block's 30 s
    assert not reached and time.monotonic() - started < 5.0
    await lock.release(lease)
    await _aclose(lock)


async def test_losing_the_lease_cancels_the_task_it_guards(nodes: list[Node]) -> None:
    lock = _redlock([n.url for n in nodes], ttl_ms=600)
    steps: list[str] = []
    with pytest.raises(LeaseLost):
        async with lock.hold("zone:lost") as guard:
            steps.append("started")
            for c in lock.nodes:  # the lock vanishes behind the holder's back (expiry, failover)
                await c.delete(lock.key_for("zone:lost"))
            await asyncio.sleep(10)
            steps.append("went on")
    assert steps == ["started"]
    assert guard.lost.is_set()
    await _aclose(lock)


async def test_a_cancel_from_outside_stays_a_cancel_and_frees_the_lease(nodes: list[Node]) -> None:
    lock = _redlock([n.url for n in nodes], ttl_ms=5000)

    async def guarded() -> None:
        async with lock.hold("zone:outside"):
            await asyncio.sleep(10)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [await c.exists(lock.key_for("zone:outside")) for c in lock.nodes] == [0, 0, 0]
    await _aclose(lock)


async def test_the_fence_refuses_a_lower_token_and_admits_equal_or_higher(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    async with sessions() as s, s.begin():
        assert [await next_token(s, name="zone:a") for _ in range(3)] == [1, 2, 3]
        assert await next_token(s, name="zone:b") == 1
    async with sessions() as s, s.begin():
        await admit(s, zone="a", token=2)
        await admit(s, zone="a", token=2)
        await admit(s, zone="a", token=3)
    with pytest.raises(StaleFencingToken):
        async with sessions() as s, s.begin():
            await admit(s, zone="a", token=1)
    await _add_couriers(sessions, "k-9")
    with pytest.raises(StaleFencingToken):
        async with sessions() as s, s.begin():
            await fleet.offer(s, order_id="o-9", courier_id="k-9", fence=Fence("a", 2))
    assert await _holder_of(sessions, "k-9") is None
    await engine.dispose()
