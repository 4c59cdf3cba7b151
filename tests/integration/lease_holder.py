"""A zone matcher reduced to its lease and one fenced write per command, run as a subprocess so
a test can pause it with SIGSTOP (``python -m tests.integration.lease_holder``).

argv: database URL, zone, lease TTL ms, Redis URLs... . Prints ``granted <token>``, then per
line ``offer <order> <courier>`` on stdin answers ``wrote``, ``refused`` (courier not free) or
``stale`` (the fence refused the token), and ``release`` releases the lease.
"""

from __future__ import annotations

import asyncio
import sys

from infra.locks import Redlock, RedlockConfig
from infra.redis import make_redis
from store import couriers
from store.db import make_engine, make_sessionmaker
from store.fencing import Fence, StaleFencingToken, token_source


async def main(db_url: str, zone: str, ttl_ms: int, urls: list[str]) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    lock = Redlock(
        [make_redis(u) for u in urls],
        RedlockConfig(ttl_ms=ttl_ms, retry_count=200, retry_delay_ms=20, node_timeout_ms=200),
        fencing=token_source(sessions),
    )
    lease = await lock.acquire(f"zone:{zone}")
    assert lease.token is not None
    print(f"granted {lease.token}", flush=True)
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        if line[0] == "release":
            await lock.release(lease)
            print("released", flush=True)
            continue
        _, order, courier = line
        try:
            async with sessions() as s, s.begin():
                ok = await couriers.offer(
                    s, order_id=order, courier_id=courier, fence=Fence(zone, lease.token)
                )
            print("wrote" if ok else "refused", flush=True)
        except StaleFencingToken:
            print("stale", flush=True)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
