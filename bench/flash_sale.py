"""A flash sale through HTTP: checkouts answered per second by the real API for a hot SKU with
few units, against the floor (``bench/flash_floor.py``: a FastAPI POST with the same body that
runs one Redis ``EVALSHA`` and answers 202), in the same run, on the same Redis.

    .venv/bin/python -m bench.flash_sale --units 50 --seconds 10 --threads 2 --connections 50

Starts its own stack with ``tradeflow up`` (free ports, throwaway data dir, no demo data, no
courier simulator, a checkout rate limit high enough that it never answers: every request is a
new customer with a new ``Idempotency-Key``), puts ``--units`` of a hot SKU on sale, sells
them (``--units`` checkouts through the API, waiting until every reservation has landed; the
floor's counter is set to 0 too) and then drives both servers with ``wrk`` (apt package
``wrk``) and ``bench/flash_sale.lua``: sustained checkouts of a sold-out SKU, a flash sale's
losers. ``--from-the-start`` starts wrk as the sale opens instead (the winners' checkouts and
workflows are then part of the API's run). Rounds alternate
which side goes first; each round the API gets a new SKU with ``--units`` units. After each API
round the sale must be exact: ``reserved + sold == units`` and ``available == 0`` (nothing
oversold, every unit sold to someone), or the benchmark fails.

Besides the rate, each side's CPU time per answer is read from ``/proc`` (the API process
with its write-behind, the floor process): their ratio (``cpu_per_answer_ratio``, floor over
API) moves less with the machine's other load than the rates do.

Prints one JSON line per figure (``{"name", "value", "unit", ...}``, the API's with
``"baseline": "floor"`` and ``"ratio_to_baseline"``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.orders import _free_port, launched_stack, load_average

LUA = Path(__file__).with_name("flash_sale.lua")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wrk(
    url: str, *, tag: str, sku: str, seconds: float, threads: int, connections: int
) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            url,
            "--",
            tag,
            sku,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in reversed(out.splitlines()) if x.startswith("{"))
    figures: dict[str, Any] = json.loads(line)
    answered = figures["status_200"] + figures["status_202"]
    figures["answered_per_s"] = answered / figures["seconds"]
    return figures


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def put_on_sale(http: httpx.Client, sku: str, units: int) -> None:
    r = http.put(
        f"/v1/admin/products/{sku}",
        json={"name": "Flash", "price_cents": 999, "currency": "USD", "hot": True},
    )
    r.raise_for_status()
    r = http.put(f"/v1/admin/inventory/{sku}", json={"location_id": "main", "available": units})
    r.raise_for_status()


def sell_out(http: httpx.Client, sku: str, units: int) -> float:
    """Buy the ``units`` one at a time through the API (each a winner) and wait until every
    reservation has landed, so what wrk measures next is checkouts of a sold-out SKU; the
    seconds that took."""
    started = time.monotonic()
    for i in range(units):
        r = http.post(
            "/v1/orders",
            json={
                "customer_id": f"winner-{sku}-{i}",
                "location_id": "main",
                "items": [{"sku": sku, "quantity": 1}],
                "delivery": {"address": "1 Main St", "lat": 31.23, "lng": 121.47},
                "payment": {"token": "tok_ok"},
            },
            headers={"Idempotency-Key": f"winner-{i}"},
        )
        r.raise_for_status()
    stock = sale_is_exact(http, sku, units)
    if stock["reserved"] + stock["sold"] != units:
        raise SystemExit(f"the {units} winners did not reserve in time: {stock}")
    return time.monotonic() - started


def edge_answers(http: httpx.Client) -> float:
    """``tradeflow_flash_sale_claims_total{result="sold_out"}`` of the API: losers answered at
    its edge (a loser answered by a workflow is counted by the worker, not here)."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("tradeflow_flash_sale_claims_total") and 'result="sold_out"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def sale_is_exact(
    http: httpx.Client, sku: str, units: int, *, within_s: float = 60.0
) -> dict[str, Any]:
    """The stock row once every winner's reservation has landed (or ``within_s`` passed)."""
    deadline = time.monotonic() + within_s
    while True:
        stock = http.get(f"/v1/inventory/{sku}", params={"location_id": "main"}).json()
        if stock["reserved"] + stock["sold"] == units or time.monotonic() > deadline:
            return dict(stock)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the stack's data dir")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the started stack's DATABASE_URL (an empty PostgreSQL database, say) [its SQLite]",
    )
    parser.add_argument(
        "--from-the-start",
        action="store_true",
        help="start wrk when the sale opens (the winners' workflows among the load) instead of "
        "once the units are sold",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")

    env = {"TRADEFLOW_CHECKOUT_RATE": "100000/s", "TRADEFLOW_CHECKOUT_BURST": "100000"}
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    floors: list[float] = []
    apis: list[float] = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    failures: list[str] = []
    with launched_stack(_say, args.keep, env) as stack:
        floor_port = _free_port()
        floor_key = f"bench:flash-floor:{uuid.uuid4().hex[:8]}"
        floor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.flash_floor",
                "--port",
                str(floor_port),
                "--redis-url",
                stack.redis_url,
                "--key",
                floor_key,
            ],
            cwd=Path(__file__).resolve().parents[1],
        )
        try:
            import redis

            r = redis.Redis.from_url(stack.redis_url)
            with httpx.Client(
                base_url=stack.api_url, headers={"X-Admin-Token": stack.admin_token}, timeout=30
            ) as http:
                for _ in range(100):
                    try:
                        httpx.get(f"http://127.0.0.1:{floor_port}/docs", timeout=1)
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                for round_no in range(args.rounds):
                    sku = f"FLASH-{uuid.uuid4().hex[:8].upper()}"
                    put_on_sale(http, sku, args.units)
                    r.set(floor_key, args.units)
                    if not args.from_the_start:
                        took = sell_out(http, sku, args.units)
                        r.set(floor_key, 0)
                        _say(f"round {round_no}: {args.units} units sold first ({took:.1f} s)")
                    tag = uuid.uuid4().hex[:8]
                    sides = ["floor", "api"] if round_no % 2 == 0 else ["api", "floor"]
                    got: dict[str, dict[str, Any]] = {}
                    for side in sides:
                        url = stack.api_url if side == "api" else f"http://127.0.0.1:{floor_port}"
                        _say(f"round {round_no}: {side} under wrk for {args.seconds:g} s")
                        before = edge_answers(http) if side == "api" else 0.0
                        pid = stack.pids["api"] if side == "api" else floor.pid
                        cpu_before = cpu_s(pid)
                        got[side] = wrk(
                            url,
                            tag=f"{tag}{side[0]}",
                            sku=sku,
                            seconds=args.seconds,
                            threads=args.threads,
                            connections=args.connections,
                        )
                        answered = got[side]["status_200"] + got[side]["status_202"]
                        got[side]["cpu_ms_per_answer"] = (
                            (cpu_s(pid) - cpu_before) * 1000 / max(1, answered)
                        )
                        if side == "api":
                            got[side]["answered_at_the_edge"] = edge_answers(http) - before
                        _say(f"  {json.dumps(got[side])}")
                    stock = sale_is_exact(http, sku, args.units)
                    _say(f"  stock after the sale: {stock}")
                    if stock["available"] != 0 or stock["reserved"] + stock["sold"] != args.units:
                        failures.append(
                            f"round {round_no}: sale not exact for {args.units}: {stock}"
                        )
                    for side in ("api", "floor"):
                        if got[side]["status_5xx"] or got[side]["errors_socket"]:
                            failures.append(
                                f"round {round_no}: {side} answered errors: {got[side]}"
                            )
                    floors.append(got["floor"]["answered_per_s"])
                    apis.append(got["api"]["answered_per_s"])
                    ratios.append(apis[-1] / floors[-1])
                    cpu_ratios.append(
                        got["floor"]["cpu_ms_per_answer"] / got["api"]["cpu_ms_per_answer"]
                    )
                    _say(f"  ratio {ratios[-1]:.3f}, CPU per answer ratio {cpu_ratios[-1]:.3f}")
        finally:
            floor.terminate()
            floor.wait(timeout=10)
    _say(f"done: {load_average()}")
    common = {"units": args.units, "threads": args.threads, "connections": args.connections}
    print(
        json.dumps(
            {
                "name": "flash_floor",
                "value": round(statistics.median(floors), 1),
                "unit": "checkouts/s",
                **common,
            }
        )
    )
    print(
        json.dumps(
            {
                "name": "flash_api",
                "value": round(statistics.median(apis), 1),
                "unit": "checkouts/s",
                "baseline": "flash_floor",
                "ratio_to_baseline": round(statistics.median(ratios), 3),
                "ratios": [round(r, 3) for r in ratios],
                "cpu_per_answer_ratio": round(statistics.median(cpu_ratios), 3),
                **common,
            }
        )
    )
    for f in failures:
        _say(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
