"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.testing import WorkflowEnvironment

from infra.telemetry import setup_tracing
from tests.api.conftest import ApiFactory
from tests.api.helpers import Api, closed_port, order_body, unique


async def test_healthz_answers_while_the_process_runs(api: Api) -> None:
    r = await api.http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_is_ok_when_temporal_database_and_redis_answer(api: Api) -> None:
    r = await api.http.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


async def test_readyz_names_redis_when_redis_does_not_answer(api_factory: ApiFactory) -> None:
    async with api_factory(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0") as api:
        r = await api.http.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["redis"]


async def test_api_starts_without_temporal_and_readyz_names_it(api_factory: ApiFactory) -> None:
    # No client given: the app connects in the background to TEMPORAL_ADDRESS (a dead port).
    async with api_factory(temporal=None) as api:
        assert (await api.http.get("/healthz")).status_code == 200
        r = await api.http.get("/readyz")
        assert r.status_code == 503
        assert r.json()["failing"] == ["temporal"]
        # Reads that need no workflow still work.
        assert (await api.http.get("/v1/products")).status_code == 200


async def test_api_connects_to_temporal_once_it_answers(
    api_factory: ApiFactory, dev_env: WorkflowEnvironment
) -> None:
    host = dev_env.client.service_client.config.target_host
    async with api_factory(temporal=None, TEMPORAL_ADDRESS=host) as api:
        for _ in range(100):  # the background connect retries with a short backoff
            r = await api.http.get("/readyz")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text


async def test_metrics_count_requests_by_route_and_orders_created(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku, 100)
    await api.http.get(f"/v1/products/{sku}")
    r = await api.http.post(
        "/v1/orders", json=order_body(unique("c"), [(sku, 1)]), headers={"Idempotency-Key": "k1"}
    )
    assert r.status_code == 202, r.text
    await api.http.get("/no/such/route")

    text = (await api.http.get("/metrics")).text
    assert (
        'tradeflow_http_requests_total{method="GET",route="/v1/products/{sku}",status="200"}'
        in text
    )
    assert 'route="unmatched",status="404"' in text
    assert "tradeflow_http_request_duration_seconds_bucket" in text
    assert "tradeflow_orders_created_total" in text


async def test_each_request_is_a_server_span_that_continues_the_callers_trace(api: Api) -> None:
    provider = setup_tracing("tradeflow-api", api.settings)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    try:
        r = await api.http.get(
            f"/v1/products/{unique('nope')}",
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
        assert r.status_code == 404
        # Exactly one server span (FastAPI's native one, or the middleware's where absent).
        [span] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    finally:
        exporter.shutdown()
    assert span.name == "GET /v1/products/{sku}"
    assert span.context is not None and format(span.context.trace_id, "032x") == trace_id
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 404
    assert span.attributes["http.route"] == "/v1/products/{sku}"
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"


async def test_openapi_documents_the_contract_and_the_additions(api: Api) -> None:
    r = await api.http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert {"/v1/couriers", "/v1/couriers/{courier_id}", "/v1/orders/{order_id}/cancel"} <= set(
        doc["paths"]
    )
    assert "GET /v1/couriers" in doc["info"]["description"]


async def test_the_middleware_traces_requests_where_fastapi_does_not(api: Api) -> None:
    from fastapi import FastAPI

    from api.app import NATIVE_TELEMETRY
    from api.middleware import ObservabilityMiddleware

    provider = setup_tracing("tradeflow-api", api.settings)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    options: dict[str, Any] = {"telemetry": {"tracing": False}} if NATIVE_TELEMETRY else {}
    plain = FastAPI(**options)

    @plain.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    plain.add_middleware(ObservabilityMiddleware, spans=True)
    transport = httpx.ASGITransport(app=plain)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/items/7")).status_code == 200
            assert (await http.get("/elsewhere")).status_code == 404
        names = [s.name for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    finally:
        exporter.shutdown()
    assert names == ["GET /items/{item_id}", "GET unmatched"]
