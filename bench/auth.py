"""What authentication costs per request: the same requests with ``TRADEFLOW_AUTH=off`` and
``on``, in one run.

    .venv/bin/python -m bench.auth --requests 300 --rounds 7

Two instances of the real app (``api.app.create_app``) share one migrated SQLite database and
the real Redis; one has authentication off, the other on with an HS256 secret. Each is called
in-process over ASGI with httpx (no sockets, so what differs is the app's own work), one
request at a time. Requests, each in both modes:

* ``list_orders``: ``GET /v1/orders`` as a customer (JWT verified, listing scoped to ``sub``);
* ``courier_view``: ``GET /v1/couriers/{id}`` as the courier (courier token: a SHA-256 and a
  primary-key lookup in the database);
* ``couriers_admin``: ``GET /v1/couriers`` with ``X-Admin-Token`` (a constant-time compare);
* ``product``: ``GET /v1/products/{sku}``, a public route (no check at all), as a control.

``jwt_verify_hs256`` is the JWT check alone (``JwtVerifier.claims``), µs per verification.

Modes take turns every ``BATCH`` requests so drift and the load of other processes fall on
both alike. Figures are medians over
``--rounds`` of each round's mean µs per request; ``ratio_to_baseline`` is on / off (above 1:
authentication costs), and ``overhead_us`` the difference. One JSON line per figure; progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

ADMIN = "bench-admin-token"
SECRET = "bench-jwt-secret-" + "b" * 32
BATCH = 10


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _app(data_dir: Path, db_url: str, redis_url: str, auth: str) -> AsyncIterator[Any]:
    from api.app import create_app
    from infra.settings import Settings

    values: dict[str, Any] = {
        "TRADEFLOW_DATA_DIR": str(data_dir),
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "TRADEFLOW_ADMIN_TOKEN": ADMIN,
        "TRADEFLOW_AUTH": auth,
        "TRADEFLOW_JWT_SECRET": SECRET,
        "TRADEFLOW_OTEL_EXPORTER": "none",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{_closed_port()}",  # these routes do not need it
    }
    settings = Settings.from_variables(values).with_secrets()
    app = create_app(settings, migrate_on_start=False, tracing=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        yield settings, http


async def run(args: argparse.Namespace) -> None:
    from api.auth import JwtVerifier, mint_token
    from domain.roles import Role
    from store.schema import migrate

    run_id = uuid.uuid4().hex[:8]
    sku, courier, customer = f"BENCH-{run_id}", f"k-bench-{run_id}", f"c-bench-{run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        migrate(db_url)
        async with (
            _app(Path(tmp), db_url, args.redis_url, "off") as (_, off),
            _app(Path(tmp), db_url, args.redis_url, "on") as (settings, on),
        ):
            admin = {"X-Admin-Token": ADMIN}
            r = await off.put(
                f"/v1/admin/products/{sku}",
                json={"name": "Bench", "price_cents": 100, "currency": "USD"},
                headers=admin,
            )
            r.raise_for_status()
            r = await off.put(
                f"/v1/admin/couriers/{courier}",
                json={"lat": 1.0, "lng": 2.0, "available": False},
                headers=admin,
            )
            r.raise_for_status()
            r = await on.post(f"/v1/admin/couriers/{courier}/tokens", headers=admin)
            r.raise_for_status()
            courier_token = r.json()["token"]
            customer_jwt = mint_token(settings, Role.CUSTOMER, customer)
            cases: dict[str, tuple[str, dict[str, str]]] = {
                "list_orders": ("/v1/orders", {"Authorization": f"Bearer {customer_jwt}"}),
                "courier_view": (
                    f"/v1/couriers/{courier}",
                    {"Authorization": f"Bearer {courier_token}"},
                ),
                "couriers_admin": ("/v1/couriers?limit=10", admin),
                "product": (f"/v1/products/{sku}", {}),
            }
            clients = {"off": off, "on": on}
            means: dict[tuple[str, str], list[float]] = {(c, m): [] for c in cases for m in clients}
            for case, (path, headers) in cases.items():  # warm up caches and pools
                for mode, http in clients.items():
                    for _ in range(20):
                        r = await http.get(path, headers=headers)
                        assert r.status_code == 200, (case, mode, r.text)
            for round_no in range(args.rounds):
                for case, (path, headers) in cases.items():
                    spent = {"off": 0.0, "on": 0.0}
                    # Batches of BATCH requests, off and on taking turns, so that the load
                    # other processes put on the machine falls on both modes alike.
                    for batch in range(max(1, args.requests // BATCH)):
                        order = ("off", "on") if batch % 2 == 0 else ("on", "off")
                        for mode in order:
                            http = clients[mode]
                            started = time.perf_counter()
                            for _ in range(BATCH):
                                r = await http.get(path, headers=headers)
                                if r.status_code != 200:
                                    raise SystemExit(f"{case}/{mode}: HTTP {r.status_code}")
                            spent[mode] += time.perf_counter() - started
                    n = max(1, args.requests // BATCH) * BATCH
                    for mode in clients:
                        means[(case, mode)].append(spent[mode] / n * 1e6)
                _say(f"round {round_no + 1}/{args.rounds} done")
            verifier = JwtVerifier(settings)
            samples = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                for _ in range(args.requests):
                    await verifier.claims(customer_jwt)
                samples.append((time.perf_counter() - started) / args.requests * 1e6)
            _emit("jwt_verify_hs256", statistics.median(samples), "us/verification", None)
            for case in cases:
                off_us = statistics.median(means[(case, "off")])
                on_us = statistics.median(means[(case, "on")])
                ratios = [
                    b / a for a, b in zip(means[(case, "off")], means[(case, "on")], strict=True)
                ]
                for mode, value in (("off", off_us), ("on", on_us)):
                    _emit(f"{case}_auth_{mode}", value, "us/request", None if mode == "off" else statistics.median(ratios))  # fmt: skip
                _emit(f"{case}_overhead", on_us - off_us, "us/request", None)


def _emit(name: str, value: float, unit: str, ratio: float | None) -> None:
    line = {
        "name": name,
        "value": round(value, 1),
        "unit": unit,
        "ratio_to_baseline": None if ratio is None else round(ratio, 3),
    }
    print(json.dumps(line), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=300, help="requests per mode per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="[REDIS_URL, else redis://127.0.0.1:6379/0]",
    )
    args = p.parse_args()
    if args.requests < 1 or args.rounds < 1:
        p.error("--requests and --rounds must be >= 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
