"""``tradeflow load``: place N orders through the real API, C at a time, and measure.

Only the public API is used, as a storefront would: ``POST /v1/orders`` with an
``Idempotency-Key`` for each order, then reads until each order is ``PAID``. Each order has a
customer of its own, so the per-customer checkout rate limit does not throttle the run (a 429 is
still honoured: the request waits ``Retry-After`` and goes again with the same key, as do
transport errors and 5xx answers, which the key makes safe).

Open loop: C submitters send the N orders as fast as the API accepts them; the workflows run
behind. Reported figures:

- accepted/s: orders answered 202, over the time from the first request to the last answer;
- PAID/s: orders that reached ``PAID``, over the time from the first request to the last
  ``PAID`` (taken from the order's timeline, so the poll interval does not blur it);
- checkout latency p50/p95: the ``POST /v1/orders`` round trip;
- time to PAID p50/p95: from sending an order to its ``PAID`` entry.

Watching for ``PAID`` costs one request at a time, whatever N is: a single poller pages
through ``GET /v1/orders`` (the read model, newest first) down to the oldest order still
unpaid. Reading each order with ``GET /v1/orders/{id}`` would query its workflow instead, and
N pollers would load the worker being measured. Timeline times are the server's clock: run
this on the machine that runs the stack, or one with a synchronised clock.

``--report DIR`` writes ``DIR/load.json`` (the summary, and for every status the orders
reached: count, latency percentiles from sending the order, and both over time in buckets) and
``DIR/throughput.png`` / ``DIR/latency.png`` (matplotlib) with those series. ``ACCEPTED`` is the
202 answer; the other statuses are the timeline entries up to ``PAID`` (or the terminal status
an order ended in before it). A live progress bar (rich) goes to stderr.

``--seed`` first creates the SKU (``BENCH-1``) with enough stock at ``main`` and ``--couriers``
couriers ``k-load-<n>`` next to the store (default: as many as the concurrency; the courier
simulator plays ``k-*``), through the admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cli.main import command_parser

HELP = "place N orders through the API at concurrency C; report orders/s and latencies"

PAID = "PAID"
ACCEPTED = "ACCEPTED"
"""Not an order status: the 202 answer to ``POST /v1/orders``, in the report's series."""
TERMINAL = frozenset({"DELIVERED", "CANCELLED", "FAILED", "NEEDS_ATTENTION"})
MAIN_LAT, MAIN_LNG = 31.2304, 121.4737
PAGE = 200
"""Orders per list page (the API's maximum)."""
MAX_ATTEMPTS = 20
"""Tries per order for transport errors and 5xx answers (429s wait and do not count)."""


@dataclass(frozen=True)
class LoadConfig:
    api_url: str
    orders: int
    concurrency: int
    sku: str = "BENCH-1"
    quantity: int = 1
    payment_token: str = "tok_ok"
    location_id: str = "main"
    admin_token: str | None = None
    seed: bool = False
    couriers: int = 0
    """Couriers ``k-load-<n>`` to create when seeding."""
    price_cents: int = 100
    timeout_s: float = 300.0
    """How long to wait, after the last order is accepted, for every order to reach PAID."""
    poll_interval_s: float = 1.0
    """Between sweeps of the order list. PAID times come from the timelines, so a longer
    interval only makes the run end a little later; a shorter one loads the API more."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    """Customers and idempotency keys of this run are ``load-<run_id>-<n>``."""


@dataclass
class LoadResult:
    orders: int
    concurrency: int
    accepted: int = 0
    """Answered 202 (or 200 for a retried request the API had already accepted)."""
    rejected: dict[int, int] = field(default_factory=dict)
    """HTTP status -> count, for orders the API did not accept."""
    paid: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """Terminal status (and failure reason) -> count, for orders that ended before PAID."""
    unfinished: int = 0
    """Accepted but neither PAID nor ended when the run gave up waiting."""
    submit_s: float = 0.0
    """First request sent -> last answer received."""
    paid_s: float = 0.0
    """First request sent -> last PAID."""
    checkout_latencies_s: list[float] = field(default_factory=list, repr=False)
    paid_latencies_s: list[float] = field(default_factory=list, repr=False)
    started_at: float = 0.0
    """Unix time the first request was sent."""
    reached: dict[str, list[tuple[float, float]]] = field(default_factory=dict, repr=False)
    """Status -> (Unix time the order reached it, seconds since the order was sent), for
    ``ACCEPTED`` (the 202) and each timeline status up to PAID or the end."""

    def reach(self, status: str, at: float, latency_s: float) -> None:
        self.reached.setdefault(status, []).append((at, latency_s))

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.submit_s if self.submit_s > 0 else 0.0

    @property
    def paid_per_s(self) -> float:
        return self.paid / self.paid_s if self.paid_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.paid == self.orders

    def summary(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "concurrency": self.concurrency,
            "accepted": self.accepted,
            "rejected": {str(k): v for k, v in sorted(self.rejected.items())},
            "paid": self.paid,
            "failed": dict(sorted(self.failed.items())),
            "unfinished": self.unfinished,
            "accepted_per_s": round(self.accepted_per_s, 2),
            "paid_per_s": round(self.paid_per_s, 2),
            "checkout_p50_ms": ms(percentile(self.checkout_latencies_s, 50)),
            "checkout_p95_ms": ms(percentile(self.checkout_latencies_s, 95)),
            "time_to_paid_p50_ms": ms(percentile(self.paid_latencies_s, 50)),
            "time_to_paid_p95_ms": ms(percentile(self.paid_latencies_s, 95)),
            "submit_s": round(self.submit_s, 3),
            "paid_s": round(self.paid_s, 3),
        }


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 1)


def parse_time(text: str) -> float:
    """RFC 3339 (``...Z``) -> Unix seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class LoadError(Exception):
    """The run cannot start (API not answering, seeding refused)."""


@dataclass
class _Sent:
    sent_at: float
    """Unix time the first attempt was sent."""
    created_at: str
    """The order's ``created_at`` (its sort key in the list)."""


class LoadRun:
    def __init__(
        self,
        config: LoadConfig,
        http: httpx.AsyncClient,
        report: Callable[[str], None] | None = None,
        progress_every_s: float = 1.0,
        on_progress: Callable[[LoadResult, int], None] | None = None,
    ) -> None:
        self.config = config
        self._on_progress = on_progress
        """Called with the result so far and the orders still waiting, a few times a second
        (the live progress bar)."""
        self._http = http
        self._staff = {"X-Admin-Token": config.admin_token} if config.admin_token else {}
        """The poller lists every customer's orders: an operator's view when auth is on."""
        self._report = report
        self._progress_every_s = progress_every_s
        self.result = LoadResult(orders=config.orders, concurrency=config.concurrency)
        self._next = 0
        self._unpaid: dict[str, _Sent] = {}
        self._submitting = True
        self._started = 0.0
        self._last_paid_at = 0.0

    async def run(self) -> LoadResult:
        c = self.config
        if c.seed:
            await seed(self._http, c)
        self._started = time.time()
        self.result.started_at = self._started
        poller = asyncio.create_task(self._watch())
        progress = (
            asyncio.create_task(self._progress()) if self._report or self._on_progress else None
        )
        try:
            await asyncio.gather(*(self._submitter() for _ in range(c.concurrency)))
            self.result.submit_s = time.time() - self._started
            self._submitting = False
            await poller
        finally:
            poller.cancel()
            if progress is not None:
                progress.cancel()
        r = self.result
        r.unfinished = len(self._unpaid)
        r.paid_s = max(self._last_paid_at - self._started, 0.0)
        if self._on_progress:
            self._on_progress(r, r.unfinished)
        if self._report:
            self._report(self._line())
        return r

    # -- placing orders -------------------------------------------------------------------

    async def _submitter(self) -> None:
        while self._next < self.config.orders:
            n = self._next
            self._next += 1
            await self._place(n)

    async def _place(self, n: int) -> None:
        c = self.config
        key = f"load-{c.run_id}-{n}"
        body = {
            "customer_id": key,
            "location_id": c.location_id,
            "items": [{"sku": c.sku, "quantity": c.quantity}],
            "delivery": {"address": f"{n} Load St", "lat": MAIN_LAT, "lng": MAIN_LNG},
            "payment": {"token": c.payment_token},
        }
        sent_at = time.time()
        failures = 0
        while True:
            t0 = time.perf_counter()
            try:
                r = await self._http.post(
                    "/v1/orders", json=body, headers={"Idempotency-Key": key, **customer_auth(key)}
                )
            except httpx.HTTPError:
                status = 0
            else:
                status = r.status_code
            if status in (200, 202):
                latency = time.perf_counter() - t0
                self.result.checkout_latencies_s.append(latency)
                self.result.reach(ACCEPTED, time.time(), time.time() - sent_at)
                order = r.json()
                self.result.accepted += 1
                self._unpaid[order["order_id"]] = _Sent(sent_at, order["created_at"])
                return
            if status == 429:
                await asyncio.sleep(_retry_after(r))
                continue
            if status == 0 or status >= 500:
                failures += 1
                if failures < MAX_ATTEMPTS:
                    await asyncio.sleep(min(0.1 * 2**failures, 2.0))
                    continue
            self.result.rejected[status] = self.result.rejected.get(status, 0) + 1
            return

    # -- watching for PAID ----------------------------------------------------------------

    async def _watch(self) -> None:
        deadline: float | None = None
        while self._submitting or self._unpaid:
            if not self._submitting and deadline is None:
                deadline = time.monotonic() + self.config.timeout_s
            if deadline is not None and time.monotonic() > deadline:
                return
            await asyncio.sleep(self.config.poll_interval_s)
            if self._unpaid:
                try:
                    await self._sweep()
                except (httpx.HTTPError, ValueError, KeyError):
                    continue  # the next sweep tries again

    async def _sweep(self) -> None:
        """Page through the newest orders down to the oldest one still unpaid."""
        oldest = min(s.created_at for s in self._unpaid.values())
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": PAGE}
            if cursor:
                params["cursor"] = cursor
            r = await self._http.get("/v1/orders", params=params, headers=self._staff)
            r.raise_for_status()
            page = r.json()
            for order in page["items"]:
                sent = self._unpaid.get(order["order_id"])
                if sent is not None:
                    self._settle(order, sent)
            cursor = page.get("next_cursor")
            if not cursor or not page["items"] or page["items"][-1]["created_at"] < oldest:
                return

    def _settle(self, order: dict[str, Any], sent: _Sent) -> None:
        paid_at = next((t["at"] for t in order["timeline"] if t["status"] == PAID), None)
        if paid_at is not None:
            at = parse_time(paid_at)
            self.result.paid += 1
            self.result.paid_latencies_s.append(max(at - sent.sent_at, 0.0))
            self._last_paid_at = max(self._last_paid_at, at)
        elif order["status"] in TERMINAL:
            reason = order["status"] + (
                f"/{order['failure_reason']}" if order.get("failure_reason") else ""
            )
            self.result.failed[reason] = self.result.failed.get(reason, 0) + 1
        else:
            return
        seen: set[str] = set()
        for entry in order["timeline"]:
            status = entry["status"]
            if status in seen:
                continue
            seen.add(status)
            at = parse_time(entry["at"])
            self.result.reach(status, at, max(at - sent.sent_at, 0.0))
            if status == PAID:
                break
        del self._unpaid[order["order_id"]]

    # -- progress -------------------------------------------------------------------------

    async def _progress(self) -> None:
        every = min(self._progress_every_s, 0.25) if self._on_progress else self._progress_every_s
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(every)
            if self._on_progress:
                self._on_progress(self.result, len(self._unpaid))
            if self._report and time.monotonic() - last_line >= self._progress_every_s - 0.01:
                last_line = time.monotonic()
                self._report(self._line())

    def _line(self) -> str:
        r, c = self.result, self.config
        elapsed = time.time() - self._started
        rejected = sum(r.rejected.values())
        failed = sum(r.failed.values())
        submit_s = elapsed if self._submitting else r.submit_s
        return (
            f"[{elapsed:6.1f}s] accepted {r.accepted}/{c.orders}"
            f" ({r.accepted / submit_s if submit_s > 0 else 0:.1f}/s)"
            f"  paid {r.paid} ({r.paid / elapsed if elapsed > 0 else 0:.1f}/s)"
            f"  waiting {len(self._unpaid)}"
            + (f"  rejected {rejected}" if rejected else "")
            + (f"  failed {failed}" if failed else "")
        )


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(max(float(r.headers.get("Retry-After", "1")), 0.05), 10.0)
    except ValueError:
        return 1.0


async def seed(http: httpx.AsyncClient, c: LoadConfig) -> None:
    """The SKU with stock for this run (on top of what it has) and the couriers, if asked."""
    if not c.admin_token:
        raise LoadError("--seed needs the admin token (--admin-token or TRADEFLOW_ADMIN_TOKEN)")
    headers = {"X-Admin-Token": c.admin_token}

    async def put(path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await http.put(path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise LoadError(f"PUT {path} failed: {exc!r}") from exc
        if r.status_code != 200:
            raise LoadError(f"PUT {path} answered HTTP {r.status_code}: {r.text[:300]}")
        answer: dict[str, Any] = r.json()
        return answer

    await put(
        f"/v1/admin/products/{c.sku}",
        {"name": f"Load test item {c.sku}", "price_cents": c.price_cents, "currency": "USD"},
    )
    r = await http.get(f"/v1/inventory/{c.sku}", params={"location_id": c.location_id})
    available = r.json().get("available", 0) if r.status_code == 200 else 0
    await put(
        f"/v1/admin/inventory/{c.sku}",
        {"location_id": c.location_id, "available": available + c.orders * c.quantity},
    )
    for i in range(1, c.couriers + 1):
        # A ring of couriers a few hundred metres around the store.
        angle = 2 * math.pi * i / max(c.couriers, 1)
        await put(
            f"/v1/admin/couriers/k-load-{i}",
            {
                "lat": MAIN_LAT + 0.003 * math.sin(angle),
                "lng": MAIN_LNG + 0.003 * math.cos(angle),
                "available": True,
            },
        )


async def run_load(
    config: LoadConfig,
    report: Callable[[str], None] | None = None,
    progress_every_s: float = 1.0,
    on_progress: Callable[[LoadResult, int], None] | None = None,
) -> LoadResult:
    """Run one load against ``config.api_url``; ``report`` gets the progress lines,
    ``on_progress`` the result so far and the orders waiting, a few times a second."""
    limits = httpx.Limits(
        max_connections=config.concurrency + 4, max_keepalive_connections=config.concurrency + 4
    )
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(base_url=config.api_url, limits=limits, timeout=timeout) as http:
        try:
            ready = await http.get("/readyz")
        except httpx.HTTPError as exc:
            raise LoadError(f"the API does not answer at {config.api_url}: {exc!r}") from exc
        if ready.status_code != 200:
            raise LoadError(f"the API at {config.api_url} is not ready: {ready.text[:300]}")
        return await LoadRun(config, http, report, progress_every_s, on_progress).run()


# -- the command --------------------------------------------------------------------------


def default_api_url() -> str:
    url = os.environ.get("TRADEFLOW_API_URL")
    return url or f"http://127.0.0.1:{os.environ.get('API_PORT', '8000')}"


def customer_auth(customer_id: str) -> dict[str, str]:
    """``Authorization`` with the customer's JWT for the local secret (ignored when the API's
    authentication is off); empty when no local secret can sign one."""
    from api.auth import mint_token
    from domain.roles import Role

    settings = _local_settings()
    if settings is None:
        return {}
    return {"Authorization": f"Bearer {mint_token(settings, Role.CUSTOMER, customer_id)}"}


@functools.cache
def _local_settings() -> Any:
    from infra.settings import load_settings

    settings = load_settings()
    return settings if settings.resolved_jwt_secret else None


def default_admin_token() -> str | None:
    """``TRADEFLOW_ADMIN_TOKEN``, else the one ``tradeflow up`` keeps in the data dir."""
    token = os.environ.get("TRADEFLOW_ADMIN_TOKEN")
    if token:
        return token
    path = Path(os.environ.get("TRADEFLOW_DATA_DIR", ".data")) / "admin_token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@contextlib.contextmanager
def progress_bar(config: LoadConfig) -> Iterator[Callable[[LoadResult, int], None]]:
    """A live progress bar on stderr (rich): orders accepted and orders PAID out of N."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[extra]}"),
        console=Console(stderr=True),
        transient=False,
    )
    accepted = progress.add_task("accepted", total=config.orders, rate="", extra="")
    paid = progress.add_task("PAID", total=config.orders, rate="", extra="")
    started = time.time()

    def update(result: LoadResult, waiting: int) -> None:
        elapsed = max(time.time() - started, 1e-9)
        ended = sum(result.failed.values()) + sum(result.rejected.values())
        submit_s = result.submit_s or elapsed  # set once the last order is answered
        progress.update(
            accepted, completed=result.accepted, rate=f"{result.accepted / submit_s:.1f}/s"
        )
        progress.update(
            paid,
            completed=result.paid,
            rate=f"{result.paid / elapsed:.1f}/s",
            extra=f"waiting {waiting}" + (f", ended/rejected {ended}" if ended else ""),
        )

    with progress:
        yield update


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    example = "example: tradeflow load --seed --orders 200 --concurrency 20"
    p = command_parser(subparsers, "load", help=HELP, doc=__doc__, epilog=example)
    p.add_argument("--orders", "-n", type=_positive, default=100, help="orders to place [100]")
    p.add_argument(
        "--concurrency", "-c", type=_positive, default=10, help="requests in flight [10]"
    )
    p.add_argument("--api", default=None, help="API base URL [TRADEFLOW_API_URL or :API_PORT]")
    p.add_argument(
        "--admin-token",
        default=None,
        help="for --seed [TRADEFLOW_ADMIN_TOKEN, else <TRADEFLOW_DATA_DIR>/admin_token]",
    )
    p.add_argument(
        "--seed", action="store_true", help="create the SKU with enough stock (and --couriers)"
    )
    p.add_argument(
        "--couriers",
        type=int,
        default=None,
        help="couriers k-load-<n> to create with --seed [the concurrency]",
    )
    p.add_argument("--sku", default="BENCH-1", help="SKU every order buys [BENCH-1]")
    p.add_argument("--quantity", type=_positive, default=1, help="units per order [1]")
    p.add_argument("--token", default="tok_ok", help="payment token [tok_ok]")
    p.add_argument(
        "--timeout-s",
        type=float,
        default=300.0,
        help="after the last order is accepted, how long to wait for PAID [300]",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="write DIR/load.json and PNG plots of throughput and latency over time",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="progress as plain lines, no progress bar"
    )


def run(args: argparse.Namespace) -> int:
    config = LoadConfig(
        api_url=(args.api or default_api_url()).rstrip("/"),
        orders=args.orders,
        concurrency=args.concurrency,
        sku=args.sku,
        quantity=args.quantity,
        payment_token=args.token,
        admin_token=args.admin_token or default_admin_token(),
        seed=args.seed,
        couriers=args.concurrency if args.couriers is None else args.couriers,
        timeout_s=args.timeout_s,
    )

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report(
        f"tradeflow load: {config.orders} orders of {config.quantity} x {config.sku}, "
        f"concurrency {config.concurrency}, against {config.api_url} (run {config.run_id})"
    )
    try:
        if args.no_progress:
            result = asyncio.run(run_load(config, report))
        else:
            with progress_bar(config) as on_progress:
                # The bar is the live view; the plain line comes once, at the end.
                result = asyncio.run(
                    run_load(config, report, progress_every_s=math.inf, on_progress=on_progress)
                )
    except LoadError as exc:
        report(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    if args.report is not None:
        from cli.load_report import write_report

        try:
            paths = write_report(result, config, args.report)
        except (RuntimeError, OSError) as exc:
            report(f"error: the report was not written: {exc}")
            return 2
        report("report: " + ", ".join(str(p) for p in paths))
    summary = result.summary()
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(
            f"accepted {summary['accepted']}/{summary['orders']}: "
            f"{summary['accepted_per_s']} orders/s accepted, "
            f"checkout p50 {summary['checkout_p50_ms']} ms, p95 {summary['checkout_p95_ms']} ms\n"
            f"paid {summary['paid']}/{summary['orders']}: {summary['paid_per_s']} orders/s to "
            f"PAID, time to PAID p50 {summary['time_to_paid_p50_ms']} ms, "
            f"p95 {summary['time_to_paid_p95_ms']} ms"
            + (f"\nrejected: {summary['rejected']}" if summary["rejected"] else "")
            + (f"\nended before PAID: {summary['failed']}" if summary["failed"] else "")
            + (
                f"\nstill waiting after {config.timeout_s:.0f}s: {summary['unfinished']}"
                if summary["unfinished"]
                else ""
            ),
            flush=True,
        )
    return 0 if result.ok else 1
