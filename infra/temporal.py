"""Temporal client factory shared by the API, the worker and the CLI."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor

from infra.settings import Settings


async def connect(settings: Settings, *, tracing: bool = True) -> Client:
    """Connect to ``TEMPORAL_ADDRESS`` / ``TEMPORAL_NAMESPACE``.

    With ``tracing`` the client carries the OpenTelemetry interceptor, so a trace that starts in
    an HTTP request continues through the workflow and every activity it runs.
    """
    interceptors = [TracingInterceptor()] if tracing else []
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        interceptors=interceptors,
    )
