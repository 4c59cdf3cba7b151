"""Temporal client factory shared by the API, the worker and the CLI."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter

from infra.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    """The payload encryption codec (``TRADEFLOW_CODEC``, key ring in the data dir) or, with
    it off, Temporal's default converter. A worker runs with its client's converter, so the
    client made here is what puts the codec on every worker too."""
    if not settings.codec:
        return DataConverter.default
    from infra import codec

    return codec.data_converter(codec.codec_for(settings.resolved_codec_key_file))


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
        data_converter=data_converter(settings),
    )
