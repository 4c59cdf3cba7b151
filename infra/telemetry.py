"""OpenTelemetry tracing setup and the Prometheus metrics the processes export.

Traces: one ``TracerProvider`` per process with a batch processor; the exporter is chosen by
``TRADEFLOW_OTEL_EXPORTER`` (``none``, ``console`` or ``otlp``; OTLP over HTTP honours the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables).
Temporal's ``TracingInterceptor`` (see ``infra.temporal``) continues these traces into
workflows and activities, and the OpenTelemetry instrumentations installed with the provider
add what each step does underneath: FastAPI server spans (``instrument_app``), one span per
SQL statement (SQLAlchemy, ``instrument_engine``), per Redis command or Lua script and per
outgoing HTTP request (httpx, which carries ``traceparent`` to the PSP). One order is one
trace::

    POST /v1/orders                              (API, FastAPI)
    ├── EVALSHA / SELECT ... / INSERT ...          rate limit, catalogue, read model
    └── StartWorkflow:OrderWorkflow
        └── RunWorkflow:OrderWorkflow            (worker)
            ├── StartActivity:try_reserve → RunActivity:try_reserve → UPDATE stock ...
            └── StartActivity:authorize_payment → RunActivity:authorize_payment
                ├── EVALSHA                      PSP breaker and rate limiter
                └── POST                         httpx → the PSP

A later request that signals or updates the order's workflows (the PSP webhook, a courier
event) starts its own trace; it carries a link to the order's trace and the workflow's
``HandleSignal``/``HandleUpdate`` span links back to it (``infra.temporal``).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest

from infra.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

EXPORTERS = ("none", "console", "otlp")

_lock = threading.Lock()
_provider: TracerProvider | None = None


def _exporter(kind: str) -> SpanExporter | None:
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"TRADEFLOW_OTEL_EXPORTER must be one of {EXPORTERS}, got {kind!r}")


def setup_tracing(service_name: str, settings: Settings) -> TracerProvider:
    """Install the process-wide tracer provider (once; later calls return the first one).

    With ``none`` there is still a real provider, so spans carry trace ids that propagate
    to Temporal and show up in logs, but nothing is exported.
    """
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = _exporter(settings.otel_exporter.strip().lower())
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _provider = provider
        instrument_libraries()
        log.info("tracing for %s, exporter %s", service_name, settings.otel_exporter)
        return provider


_instrumented_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def tracing_enabled() -> bool:
    """True once ``setup_tracing`` ran in this process."""
    return _provider is not None


def _stable_semantic_conventions() -> None:
    """Spans use the stable HTTP and database attribute names (``http.response.status_code``,
    ``db.query.text``) unless the operator chose otherwise; read once, at first use."""
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database")


def instrument_libraries() -> None:
    """httpx and Redis, process-wide (they patch the client classes, so clients made before
    are covered too). Called by ``setup_tracing``; a second call does nothing."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    _stable_semantic_conventions()
    for instrumentor in (HTTPXClientInstrumentor(), RedisInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def instrument_engine(engine: AsyncEngine | Engine) -> None:
    """A span per SQL statement on ``engine`` (a child of whatever span runs it), with the
    SQLAlchemy instrumentation's ``EngineTracer`` (its event listeners on this engine only).

    Per engine rather than ``SQLAlchemyInstrumentor().instrument()``: that patches
    ``create_async_engine`` in SQLAlchemy's module, which ``store.db`` imported before any
    process sets tracing up, and it would trace engines twice where both apply.
    """
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter
    from sqlalchemy.ext.asyncio import AsyncEngine

    _stable_semantic_conventions()
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    with _lock:
        if sync in _instrumented_engines:
            return
        _instrumented_engines.add(sync)
    meter = get_meter("opentelemetry.instrumentation.sqlalchemy")
    EngineTracer(
        trace.get_tracer("opentelemetry.instrumentation.sqlalchemy"),
        sync,
        meter.create_up_down_counter("db.client.connections.usage", unit="connections"),
    )


def instrument_app(app: FastAPI) -> None:
    """The FastAPI instrumentation's server span per request (FastAPI's native tracing steps
    aside when it finds it, so a request still has exactly one server span)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    _stable_semantic_conventions()
    FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])


def shutdown_tracing() -> None:
    """Flush what the batch processor still holds (call at process exit)."""
    if _provider is not None:
        _provider.shutdown()


class ApiMetrics:
    """Prometheus instruments of the HTTP API."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.http_requests = Counter(
            "tradeflow_http_requests_total",
            "HTTP requests served, by route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_latency = Histogram(
            "tradeflow_http_request_duration_seconds",
            "HTTP request latency, by route template.",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.orders_created = Counter(
            "tradeflow_orders_created_total",
            "Orders accepted by POST /v1/orders (first time for an idempotency key).",
            registry=registry,
        )
        self.checkout_rejected = Counter(
            "tradeflow_checkout_rejected_total",
            "POST /v1/orders requests refused before an order was created, by problem code.",
            ["code"],
            registry=registry,
        )
        self.checkout_latency = Histogram(
            "tradeflow_checkout_duration_seconds",
            "Time to accept an order: validation, pricing, read-model insert, workflow start.",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.rate_limiter_fail_open = Counter(
            "tradeflow_rate_limiter_fail_open_total",
            "Checkouts let through because Redis could not be asked.",
            registry=registry,
        )

    def render(self) -> tuple[bytes, str]:
        return _generate_latest(self.registry), CONTENT_TYPE_LATEST


metrics = ApiMetrics()
"""The process-wide instruments (default registry, so library collectors show up too)."""
