"""Prometheus samples (and, on FastAPI without native telemetry, a server span) per request.

FastAPI 0.16x traces requests natively (a SERVER span named ``METHOD /route/{template}`` with
the HTTP semantic-convention attributes, plus dependency and endpoint spans), so this
middleware opens its own span only where that is missing; two server spans per request would
only confuse a trace view.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.telemetry import metrics

_tracer = trace.get_tracer("tradeflow.api")

UNMATCHED_ROUTE = "unmatched"
"""Route label for paths no route matched (keeps label cardinality bounded)."""


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter and latency histogram of (method, route, status), looked up once:
    ``labels()`` validates and locks on every call, a few us each on every request. Bounded:
    routes are templates (or ``unmatched``), methods and statuses few."""
    key = (method, route, status)
    found = _SERIES.get(key)
    if found is None:
        found = _SERIES[key] = (
            metrics.http_requests.labels(method=method, route=route, status=str(status)),
            metrics.http_latency.labels(method=method, route=route),
        )
    return found


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, spans: bool = True) -> None:
        self.app = app
        self.spans = spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        carrier = (
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if self.spans
            else {}
        )
        status_code = 503  # if the app dies before answering, the client sees a reset
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        span_cm = (
            _tracer.start_as_current_span(
                f"{method} {scope.get('path', '')}",
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope.get("path", "")},
            )
            if self.spans
            else contextlib.nullcontext(None)
        )
        with span_cm as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = _route_template(scope)
                if span is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status_code)
                    if status_code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                requests, latency = _series(method, route, status_code)
                requests.inc()
                latency.observe(time.perf_counter() - started)
