"""OpenTelemetry tracing setup and the Prometheus metrics the processes export.

Traces: one ``TracerProvider`` per process with a batch processor; the exporter is chosen by
``TRADEFLOW_OTEL_EXPORTER`` (``none``, ``console`` or ``otlp``; OTLP over HTTP honours the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables).
Temporal's ``TracingInterceptor`` (see ``infra.temporal``) continues these traces into
workflows and activities.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest

from infra.settings import Settings

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
        log.info("tracing for %s, exporter %s", service_name, settings.otel_exporter)
        return provider


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
