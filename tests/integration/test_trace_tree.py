"""One order is one trace, end to end (infra/telemetry.py, infra/temporal.py).

The real API (FastAPI instrumentation), a client from ``infra.temporal.connect`` on the real
Temporal dev server (``TracingInterceptor``), real workers, SQLite through the SQLAlchemy
instrumentation, the real Redis (checkout limiter, PSP breaker and limiter) and the PSP
simulator over httpx, all reporting to the SDK's ``InMemorySpanExporter``. The test follows the
parents, not just the names: ``POST /v1/orders`` → ``StartWorkflow`` → ``RunWorkflow`` → each
activity → its SQL statements, Redis scripts and the PSP call; and the PSP's webhook, which
arrives with no trace context of its own, is linked to the order's trace both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from domain.messages import OrderView
from domain.names import QUERY_ORDER, order_workflow_id
from infra.redis import make_redis
from infra.telemetry import setup_tracing
from infra.temporal import connect
from psp.app import create_app as create_psp_app
from store.db import make_engine, make_sessionmaker
from store.models import Product, Stock
from tests.api.helpers import make_settings
from tests.conftest import REDIS_URL
from worker import Dependencies, build_workers, psp_guards

pytestmark = pytest.mark.slow


class Tree:
    def __init__(self, spans: list[ReadableSpan]) -> None:
        self.spans = spans
        self.by_id = {s.context.span_id: s for s in spans if s.context is not None}

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id.get(span.parent.span_id) if span.parent is not None else None

    def named(self, name: str, trace_id: int | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans
            if s.name == name and (trace_id is None or s.context.trace_id == trace_id)
        ]

    def one(self, name: str, trace_id: int | None = None) -> ReadableSpan:
        found = self.named(name, trace_id)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans
            if s.parent is not None and s.parent.span_id == span.context.span_id
        ]

    def child(self, span: ReadableSpan, name: str) -> ReadableSpan:
        found = [c for c in self.children(span) if c.name == name]
        assert found, f"{span.name} has no child {name}: {[c.name for c in self.children(span)]}"
        return found[0]

    def render(self, root: ReadableSpan, depth: int = 0, limit: int = 60) -> list[str]:
        lines = [f"{'  ' * depth}{root.name}"]
        for c in sorted(self.children(root), key=lambda s: s.start_time or 0):
            if len(lines) < limit:
                lines += self.render(c, depth + 1, limit - len(lines))
        return lines


def attrs(span: ReadableSpan) -> Mapping[str, object]:
    return span.attributes or {}


def is_sql(span: ReadableSpan) -> bool:
    return span.kind == SpanKind.CLIENT and any(k.startswith("db.") for k in attrs(span))


def is_redis(span: ReadableSpan) -> bool:
    a = attrs(span)
    return span.kind == SpanKind.CLIENT and (
        a.get("db.system") == "redis" or a.get("db.system.name") == "redis"
    )


async def test_one_order_is_one_trace_from_the_api_to_sql_redis_and_the_psp(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    provider = setup_tracing("tradeflow-test", make_settings(tmp_path, sqlite_url))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    run = uuid.uuid4().hex[:8]
    settings = make_settings(
        tmp_path,
        sqlite_url,
        REDIS_URL=REDIS_URL,
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        TRADEFLOW_OFFER_TIMEOUT_S=600,
    )
    client = await connect(settings)  # what the API and the worker use: codec and tracing
    engine = make_engine(sqlite_url)
    sku, customer = f"SKU-trace-{run}", f"c-trace-{run}"
    async with make_sessionmaker(engine)() as s, s.begin():
        s.add(Product(sku=sku, name="Traced", price_cents=1299, currency="USD"))
        s.add(Stock(location_id="main", sku=sku, available=5, stocked=5))

    queues = {"orders": f"orders-trace-{run}", "dispatch": f"dispatch-trace-{run}"}
    api = create_app(
        settings,
        temporal_client=client,
        migrate_on_start=False,
        orders_task_queue=queues["orders"],
        dispatch_task_queue=queues["dispatch"],
    )
    # The PSP delivers its webhook the way a real one does: no trace context of ours on it.
    webhook_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")

    async def send_webhook(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        # From another process, as in production: none of the simulator's spans is current.
        token = otel_context.attach(otel_context.Context())
        try:
            r = await webhook_http.post("/v1/payments/webhook", content=body, headers=dict(headers))
        finally:
            otel_context.detach(token)
        return r.status_code

    psp = create_psp_app(
        tmp_path / "psp.db",
        webhook_url="http://api/v1/payments/webhook",
        webhook_secret=settings.resolved_webhook_secret,
        action_delay_s=0.3,
        webhook_sender=send_webhook,
    )
    psp_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=psp), base_url="http://psp")
    HTTPXClientInstrumentor.instrument_client(psp_http)  # real transports are patched globally
    redis = make_redis(REDIS_URL)
    breaker, limiter = psp_guards(redis, settings, key_prefix=f"trace-{run}:")
    deps = Dependencies(
        engine=engine,
        http=psp_http,
        psp_url="http://psp",
        redis=redis,
        psp_breaker=breaker,
        psp_limiter=limiter,
    )
    order_id = ""
    async with contextlib.AsyncExitStack() as es:
        await es.enter_async_context(psp.router.lifespan_context(psp))
        await es.enter_async_context(api.router.lifespan_context(api))
        for w in build_workers(client, deps, roles=queues):
            await es.enter_async_context(w)
        http = await es.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
        )
        r = await http.post(
            "/v1/orders",
            json={
                "customer_id": customer,
                "location_id": "main",
                "items": [{"sku": sku, "quantity": 1}],
                "delivery": {"address": "1 Trace St", "lat": 31.2404, "lng": 121.4737},
                "payment": {"token": "tok_action"},  # 3-D Secure: the webhook says PAID
            },
            headers={"Idempotency-Key": f"trace-{run}"},
        )
        assert r.status_code == 202, r.text
        order_id = r.json()["order_id"]
        handle = client.get_workflow_handle(order_workflow_id(order_id))
        for _ in range(300):
            view = await handle.query(QUERY_ORDER, result_type=OrderView)
            if view.status not in ("PENDING", "RESERVED", "AWAITING_PAYMENT"):
                break
            await asyncio.sleep(0.1)
        assert view.status in ("PAID", "DISPATCHING"), view.status
        await handle.terminate("trace test done")
    await webhook_http.aclose()
    await psp_http.aclose()
    await redis.aclose()
    await engine.dispose()

    tree = Tree(list(exporter.get_finished_spans()))
    root = tree.one("POST /v1/orders")
    assert root.kind == SpanKind.SERVER and root.parent is None
    trace_id = root.context.trace_id
    print("\n".join(tree.render(root)))

    # The request's own work: Redis (checkout limiter) and SQL (read model) under it.
    assert any(is_redis(c) for c in tree.children(root)), [c.name for c in tree.children(root)]
    assert any(is_sql(c) for c in tree.children(root))
    # TracingInterceptor's shape: a workflow's RunWorkflow span and the spans of what it
    # schedules are children of the span that started it.
    start = tree.child(root, "StartWorkflow:OrderWorkflow")
    tree.child(start, "RunWorkflow:OrderWorkflow")
    # Each activity: scheduled by the workflow, run by the worker, its SQL beneath it.
    for act in ("record_order", "try_reserve", "confirm_reservation"):
        scheduled = tree.child(start, f"StartActivity:{act}")
        ran = tree.child(scheduled, f"RunActivity:{act}")
        assert any(is_sql(c) for c in tree.children(ran)), (
            act,
            [c.name for c in tree.children(ran)],
        )
    # The payment, authorized by the order itself: its PSP call over HTTP, the PSP answering
    # in the same trace.
    payment = tree.child(
        tree.child(start, "StartActivity:authorize_payment"), "RunActivity:authorize_payment"
    )
    calls = [c for c in tree.children(payment) if c.kind == SpanKind.CLIENT and c.name == "POST"]
    assert calls, [c.name for c in tree.children(payment)]
    assert attrs(calls[0]).get("http.response.status_code") in (200, 201, 202)
    [psp_span] = tree.children(calls[0])
    assert psp_span.kind == SpanKind.SERVER and psp_span.name == "POST /v1/payment_intents"
    assert any(is_redis(c) for c in tree.children(payment))  # breaker and limiter scripts
    assert {s.context.trace_id for s in (start, payment, psp_span)} == {trace_id}

    # The webhook: its own trace (the PSP sent no traceparent), linked to the order's trace;
    # the update it sent is handled inside the order's trace, linked back to the webhook.
    hook = tree.one("POST /v1/payments/webhook")
    assert hook.kind == SpanKind.SERVER and hook.context.trace_id != trace_id
    assert trace_id in {link.context.trace_id for link in hook.links}
    handled = [
        s
        for s in tree.spans
        if s.name == "HandleUpdate:payment_outcome" and s.context.trace_id == trace_id
    ]
    assert any(
        link.context.trace_id == hook.context.trace_id for s in handled for link in s.links
    ), [s.name for s in handled]
