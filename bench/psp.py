"""What the PSP guards (circuit breaker + rate limiter, both in Redis) cost per call, against
the same call made bare, measured in one run.

    .venv/bin/python -m bench.psp --calls 400 --rounds 15 --concurrency 16

The PSP simulator is served on loopback by uvicorn (``psp.testing.serve_in_background``) and
called with httpx, ``GET /healthz`` (the cheapest call it answers, so the guards' share is as
large as it can be). Every guarded call goes through ``PaymentActivities._call``, the very
method the payment activities use: breaker ``allow()``, limiter ``allow()``, the request,
breaker ``record()``. The guards are built by ``worker.psp_guards`` (the workers' breaker
configuration) on the real Redis under a throwaway key prefix, with a rate limit too high to
ever refuse, so what is measured is the guards' cost, never a refusal.

Variants, taking turns within every round so drift hurts all alike:

* ``bare``: ``_call`` without breaker nor limiter (one HTTP request): the baseline;
* ``breaker``: the breaker only; ``limiter``: the limiter only; ``guarded``: both (production);
* ``guards_only``: the three Redis round trips of a guarded call without the request;
* ``redis_ping``: one redis-py ``PING``, the floor of any Redis round trip.

Sequential: ``--calls`` calls back to back, µs per call. Concurrent: ``--concurrency`` tasks
sharing ``--calls`` calls, calls per second. Figures are medians over ``--rounds``; ratios are
the median of per-round ratios. One JSON line per figure:
``{"name", "value", "unit", "ratio_to_baseline"}``; ``ratio_to_baseline`` is "how many times
the bare call's cost": variant / bare for µs per call, bare / variant for calls per second, so
above 1 means the guards cost. ``guard_overhead_*`` lines give the µs each call gains
(concurrent: from the throughputs). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx

Call = Callable[[], Awaitable[Any]]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _emit(name: str, value: float, unit: str, ratio: float | None, **extra: Any) -> None:
    line = {
        "name": name,
        "value": round(value, 2),
        "unit": unit,
        "ratio_to_baseline": None if ratio is None else round(ratio, 3),
        **extra,
    }
    print(json.dumps(line), flush=True)


async def _sequential(call: Call, n: int) -> float:
    """µs per call of ``n`` calls back to back."""
    t0 = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - t0) / n * 1e6


async def _concurrent(call: Call, n: int, concurrency: int) -> float:
    """Calls per second of ``concurrency`` tasks sharing ``n`` calls."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0)


def _healthz(acts: Any) -> Call:
    """``GET /healthz`` through ``PaymentActivities._call`` (guards as ``acts`` has them)."""

    async def call() -> Any:
        return await acts._call("GET", "/healthz")

    return call


async def run(args: argparse.Namespace) -> None:
    from activities.payments import PaymentActivities
    from infra.redis import make_redis
    from infra.settings import get_settings
    from psp.app import create_app
    from psp.testing import serve_in_background
    from worker import psp_guards

    settings = get_settings().model_copy(update={"psp_rate": "1000000/s", "psp_burst": 1_000_000})
    redis = make_redis(args.redis_url or settings.redis_url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    breaker, limiter = psp_guards(redis, settings, key_prefix=prefix)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Path(tmp) / "psp.db", webhook_url=None, webhook_secret="bench")
        async with (
            serve_in_background(app) as psp_url,
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
            ) as http,
        ):
            _say(f"PSP simulator at {psp_url}; Redis guards under {prefix!r}")
            no_db = cast(Any, None)  # _call never touches the database

            def acts(**guards: Any) -> PaymentActivities:
                return PaymentActivities(http=http, sessionmaker=no_db, psp_url=psp_url, **guards)

            variants: dict[str, Call] = {}
            for name, guards in (
                ("bare", {}),
                ("breaker", {"breaker": breaker}),
                ("limiter", {"limiter": limiter}),
                ("guarded", {"breaker": breaker, "limiter": limiter}),
            ):
                variants[name] = _healthz(acts(**guards))

            async def guards_only() -> None:
                permit = await breaker.allow()
                await limiter.allow("psp")
                await breaker.record(permit, failed=False, duration_s=0.0)

            variants["guards_only"] = guards_only
            variants["redis_ping"] = redis.ping

            for call in variants.values():  # warm up connections, scripts, the app
                await _sequential(call, 50)
                await _concurrent(call, 50, args.concurrency)

            seq: dict[str, list[float]] = {k: [] for k in variants}
            conc: dict[str, list[float]] = {k: [] for k in variants}
            for r in range(args.rounds):
                for name, call in variants.items():
                    seq[name].append(await _sequential(call, args.calls))
                for name, call in variants.items():
                    conc[name].append(await _concurrent(call, args.calls, args.concurrency))
                _say(
                    f"round {r + 1}/{args.rounds}: seq bare {seq['bare'][-1]:.0f} µs,"
                    f" guarded {seq['guarded'][-1]:.0f} µs; c={args.concurrency} bare"
                    f" {conc['bare'][-1]:.0f}/s, guarded {conc['guarded'][-1]:.0f}/s"
                )
            snapshot = await breaker.snapshot()
            _say(f"breaker after the run: {snapshot}")
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()

    med = statistics.median
    c = args.concurrency
    common = {"calls": args.calls, "rounds": args.rounds}
    for name in variants:
        ratio = med(s / b for s, b in zip(seq[name], seq["bare"], strict=True))
        _emit(f"seq_{name}", med(seq[name]), "us/call", ratio, concurrency=1, **common)
    for name in variants:
        ratio = med(b / v for v, b in zip(conc[name], conc["bare"], strict=True))
        _emit(f"conc_{name}", med(conc[name]), "calls/s", ratio, concurrency=c, **common)
    for name in ("breaker", "limiter", "guarded"):
        added = med(s - b for s, b in zip(seq[name], seq["bare"], strict=True))
        _emit(f"guard_overhead_seq_{name}", added, "us/call", None, concurrency=1, **common)
        # Under concurrency: added wall time per call, from the throughputs.
        added_c = med(1e6 / v - 1e6 / b for v, b in zip(conc[name], conc["bare"], strict=True))
        _emit(f"guard_overhead_conc_{name}", added_c, "us/call", None, concurrency=c, **common)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=400, help="calls per variant per round")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--redis-url", default=None, help="default: REDIS_URL")
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
