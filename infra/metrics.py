"""Business metrics an on-call engineer needs, for Prometheus (``prometheus_client``).

Every process registers them on the default registry: the API serves them on ``/metrics``
beside its HTTP metrics (``infra.telemetry``), the worker on ``TRADEFLOW_WORKER_METRICS_PORT``
together with the Temporal SDK's own metrics (``serve_worker_metrics``). Workflow code never
touches these (it is replayed); they are emitted by activities, the API and the store, after
the fact they count has been committed.

Also on these endpoints, from their own modules: ``tradeflow_circuit_breaker_state`` /
``_refused_total`` (``infra.breaker``; the worker refreshes the PSP breaker's gauge every few
seconds), the API's HTTP and checkout metrics (``infra.telemetry``).

Label values are bounded: statuses and failure reasons are the contract's enums, activity
names are the code's, limiter names are configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from domain import names
from domain.status import OrderStatus

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)

order_status = Counter(
    "tradeflow_order_status_total",
    "Orders that reached each status (one per order and status: counted from the outbox).",
    ["status"],
)
order_failures = Counter(
    "tradeflow_order_failures_total",
    "Orders that ended FAILED or NEEDS_ATTENTION, by failure reason.",
    ["status", "reason"],
)
checkout_to_paid = Histogram(
    "tradeflow_checkout_to_paid_seconds",
    "Time from order creation to PAID.",
    buckets=_LATENCY_BUCKETS,
)
checkout_to_delivered = Histogram(
    "tradeflow_checkout_to_delivered_seconds",
    "Time from order creation to DELIVERED.",
    buckets=_LATENCY_BUCKETS,
)
time_to_assign = Histogram(
    "tradeflow_dispatch_time_to_assign_seconds",
    "Time from PAID to COURIER_ASSIGNED.",
    buckets=_LATENCY_BUCKETS,
)
compensations = Counter(
    "tradeflow_compensations_total",
    "Compensation steps run (activity attempts), by step and outcome (ok / failed).",
    ["step", "outcome"],
)
needs_attention = Gauge(
    "tradeflow_orders_needs_attention",
    "Orders parked in NEEDS_ATTENTION now (read model).",
)
limiter_refusals = Counter(
    "tradeflow_rate_limit_refusals_total",
    "Requests a GCRA rate limiter refused, by limiter.",
    ["limiter"],
)
flash_sale_claims = Counter(
    "tradeflow_flash_sale_claims_total",
    "Flash-sale (hot SKU) claims in Redis, by result (claimed, sold_out, repeat, no_counter).",
    ["result"],
)
dispatch_offers = Counter(
    "tradeflow_dispatch_offers_total",
    "Offers sent to couriers.",
)
dispatch_responses = Counter(
    "tradeflow_dispatch_responses_total",
    "Courier answers to offers, by answer (accepted / declined).",
    ["answer"],
)
relay_published = Counter(
    "tradeflow_events_published_total",
    "Order events the outbox relay published (repeats after a crash included), by broker.",
    ["broker"],
)
relay_errors = Counter(
    "tradeflow_events_relay_errors_total",
    "Relay batches that failed (broker or database unavailable), by broker.",
    ["broker"],
)
relay_batch_seconds = Histogram(
    "tradeflow_events_relay_batch_seconds",
    "Time to publish one relay batch and have the broker confirm it.",
    ["broker"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
outbox_backlog = Gauge(
    "tradeflow_events_outbox_backlog",
    "Order events in the outbox not yet published.",
)

COMPENSATION_STEPS = {
    names.ACT_CANCEL_RESERVATION: "cancel_reservation",
    names.ACT_RETURN_STOCK: "return_stock",
    names.ACT_VOID_PAYMENT: "void_payment",
    names.ACT_RELEASE_COURIER: "release_courier",
}
FAILED_STATUSES = (OrderStatus.FAILED.value, OrderStatus.NEEDS_ATTENTION.value)

# Known label values start at 0, so a dashboard shows every series from the first scrape.
for _s in OrderStatus:
    order_status.labels(_s.value)
for _step in COMPENSATION_STEPS.values():
    for _outcome in ("ok", "failed"):
        compensations.labels(_step, _outcome)
for _r in ("claimed", "sold_out", "repeat", "no_counter"):
    flash_sale_claims.labels(_r)
for _a in ("accepted", "declined"):
    dispatch_responses.labels(_a)


def _parse_ts(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def _since(view: dict[str, Any], start: str | None, end: str) -> float | None:
    a, b = _parse_ts(start or ""), _parse_ts(end)
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())


def observe_status_changes(view: dict[str, Any], events: Iterable[dict[str, Any]]) -> None:
    """Count the status changes a committed read-model write added (outbox payloads)."""
    timeline = view.get("timeline", [])
    paid_at = next((e["at"] for e in timeline if e["status"] == OrderStatus.PAID.value), None)
    for ev in events:
        status = ev["status"]
        order_status.labels(status).inc()
        if status in FAILED_STATUSES:
            order_failures.labels(status, ev.get("failure_reason") or "UNKNOWN").inc()
        elapsed: float | None
        if status == OrderStatus.PAID.value:
            elapsed = _since(view, view.get("created_at"), ev["occurred_at"])
            if elapsed is not None:
                checkout_to_paid.observe(elapsed)
        elif status == OrderStatus.DELIVERED.value:
            elapsed = _since(view, view.get("created_at"), ev["occurred_at"])
            if elapsed is not None:
                checkout_to_delivered.observe(elapsed)
        elif status == OrderStatus.COURIER_ASSIGNED.value:
            elapsed = _since(view, paid_at, ev["occurred_at"])
            if elapsed is not None:
                time_to_assign.observe(elapsed)


def claim_result(code: str) -> str:
    """The ``flash_sale_claims`` label of a hot-stock claim answer."""
    return {"C": "claimed", "S": "sold_out", "N": "no_counter"}.get(code, "repeat")


# ------------------------------------------------------------------ activity interceptor


class _CountingActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        step = COMPENSATION_STEPS.get(name)
        try:
            result = await self.next.execute_activity(input)
        except BaseException:
            if step is not None:
                compensations.labels(step, "failed").inc()
            raise
        if step is not None:
            compensations.labels(step, "ok").inc()
        elif name == names.ACT_OFFER_TO_COURIER:
            dispatch_offers.inc()
        return result


class MetricsInterceptor(Interceptor):
    """Counts compensation attempts and courier offers as the activities complete."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountingActivityInbound(next)


# ------------------------------------------------------------------ gauges from shared state


async def poll_gauges(
    sessions: Any, breaker: Any | None, stop: asyncio.Event, every_s: float = 5.0
) -> None:
    """Keep the gauges that mirror shared state (read model, Redis) fresh until ``stop``."""
    from sqlalchemy import func, select

    from store.models import Order
    from store.outbox import unpublished_count

    orders = Order.__table__  # type: ignore[attr-defined]
    while not stop.is_set():
        try:
            async with sessions() as s:
                n = await s.execute(
                    select(func.count())
                    .select_from(orders)
                    .where(orders.c.status == OrderStatus.NEEDS_ATTENTION.value)
                )
                needs_attention.set(int(n.scalar_one()))
                outbox_backlog.set(await unpublished_count(s))
            if breaker is not None:
                # Refreshes tradeflow_circuit_breaker_state{breaker="psp"} (infra.breaker)
                # from the state all workers share, also while no payment is being made.
                await breaker.state()
        except Exception as e:  # a gauge must never take the worker down
            log.debug("metrics gauges not refreshed: %r", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


# ------------------------------------------------------------------ the worker's endpoint


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SdkMetricsCollector(Collector):
    """The Temporal SDK's metrics (its Prometheus exporter on a loopback port), read at each
    scrape and served with this process's own, so one port carries both."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:  # nosec B310
                text = r.read().decode()
        except OSError as e:
            log.debug("Temporal SDK metrics not read: %r", e)
            return
        yield from text_string_to_metric_families(text)


def serve_worker_metrics(host: str, port: int) -> None:
    """Install the Temporal runtime with its Prometheus exporter on a loopback port and serve
    that plus the default registry on ``host:port``. Call before connecting the client."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    sdk_port = free_port()
    Runtime.set_default(
        Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=f"127.0.0.1:{sdk_port}", durations_as_seconds=True
                )
            )
        ),
        error_if_already_set=False,
    )
    REGISTRY.register(SdkMetricsCollector(f"http://127.0.0.1:{sdk_port}/metrics"))
    start_http_server(port, addr=host)
    log.info("worker metrics on %s:%d (Temporal SDK metrics included)", host, port)
