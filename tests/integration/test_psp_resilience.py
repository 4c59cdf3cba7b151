"""Orders through a PSP that fails and lags, with the breaker and the rate limiter in the path.

The real order, payment and delivery workflows run on the Temporal dev server with the real
activities; the PSP simulator runs in-process with its fault knobs turned up; the PSP breaker
and call-rate limiter share their state through the real Redis, exactly as a worker fleet
does. Whatever the PSP does, every order must end in one terminal state with its money
reconciled against the PSP's own ledger: at most one authorization and one capture per order,
and every authorized cent of an order that did not complete voided.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from sqlalchemy import text
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.payments import CIRCUIT_OPEN, PSP_UNAVAILABLE, RATE_LIMITED, PaymentActivities
from domain.messages import (
    AuthorizeInput,
    CancelRequest,
    CancelResult,
    OrderTimeouts,
    OrderView,
    VoidInput,
)
from domain.names import UPDATE_CANCEL, delivery_workflow_id, payment_workflow_id
from infra.breaker import BreakerConfig, BreakerState, CircuitBreaker
from infra.ratelimit import GcraLimiter, RateDecision
from psp.app import create_app as create_psp_app
from psp.faults import Faults
from store.db import make_engine, make_sessionmaker
from tests.api.helpers import make_settings
from tests.support import Stack, view_of, wait_for_view
from tests.support.stack import dispatch_settings, serving
from worker import PSP_RATE_PREFIX, Dependencies, psp_guards

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
PRICE = 1299
FEE = 500
TERMINAL = ("DELIVERED", "CANCELLED", "FAILED", "NEEDS_ATTENTION")
TIMEOUTS = OrderTimeouts(payment_timeout_s=60, offer_timeout_s=10, max_offers=3)


class CountingLimiter(GcraLimiter):
    asked = 0
    refused = 0

    async def allow(self, key: str, cost: int = 1) -> RateDecision:
        decision = await super().allow(key, cost)
        self.asked += 1
        self.refused += not decision.allowed
        return decision


@dataclass
class Guarded:
    stack: Stack
    breaker: CircuitBreaker
    limiter: CountingLimiter
    psp_requests: list[str]
    """Paths of every request the workers sent to the PSP, in order."""

    async def set_faults(self, **knobs: Any) -> None:
        r = await self.stack.psp.post("/v1/admin/faults", json=knobs)
        r.raise_for_status()


@contextlib.asynccontextmanager
async def guarded_stack(
    client: Any, db_url: str, tmp_path: Path, faults: Faults, **settings: Any
) -> AsyncIterator[Guarded]:
    """Like ``tests.support.order_stack``, with the PSP breaker and limiter of ``worker.py``
    under a key prefix of this test only."""
    psp = create_psp_app(
        tmp_path / "psp.db", webhook_url=None, webhook_secret="s", faults=faults, seed=7
    )
    requests: list[str] = []

    async def note(request: httpx.Request) -> None:
        requests.append(request.url.path)

    transport = httpx.ASGITransport(app=psp)
    engine = make_engine(db_url)
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"test:psp:{uuid.uuid4().hex}:"
    config = make_settings(tmp_path, db_url, **settings)
    breaker, plain = psp_guards(redis, config, key_prefix=prefix)
    limiter = CountingLimiter(
        redis,
        rate_per_s=config.psp_rate_per_s,
        burst=plain.burst,
        prefix=f"{prefix}{PSP_RATE_PREFIX}",
    )
    suffix = uuid.uuid4().hex[:8]
    async with (
        httpx.AsyncClient(transport=transport, event_hooks={"request": [note]}) as worker_http,
        httpx.AsyncClient(transport=transport, base_url="http://psp") as test_http,
    ):
        matching = dispatch_settings(suffix)
        deps = Dependencies(
            engine=engine,
            http=worker_http,
            psp_url="http://psp",
            psp_breaker=breaker,
            psp_limiter=limiter,
            **matching,
        )
        stack = Stack(client, engine, test_http, f"orders-{suffix}", f"dispatch-{suffix}")
        try:
            async with serving(stack, deps):
                yield Guarded(stack, breaker, limiter, requests)
        finally:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()
            await matching["dispatch_redis"].aclose()
            await psp.state.simulator.aclose()
            await engine.dispose()


async def until(
    stack: Stack,
    handle: WorkflowHandle[Any, Any],
    statuses: set[str],
    *,
    offered: bool = False,
    within: float = 180.0,
    every: float = 0.2,
) -> tuple[str, str | None]:
    """Wait for the order to reach one of ``statuses`` (or a terminal state), and with
    ``offered`` for a courier to hold its offer. Returns (status, offered courier).

    Reads the read model and the couriers table, not workflow queries: thirty orders polling
    queries would keep the workers busy answering them instead of running the orders.
    """
    order_id = handle.id.removeprefix("order-")
    deadline = asyncio.get_running_loop().time() + within
    status: str | None = None
    while True:
        async with stack.engine.connect() as c:
            row = (
                await c.execute(
                    text("SELECT status FROM orders WHERE order_id = :o"), {"o": order_id}
                )
            ).first()
            status = row[0] if row is not None else None
            courier = None
            if offered:
                found = (
                    await c.execute(
                        text(
                            "SELECT courier_id FROM couriers"
                            " WHERE current_order_id = :o AND assignment = 'OFFERED'"
                        ),
                        {"o": order_id},
                    )
                ).first()
                courier = found[0] if found is not None else None
        if status in TERMINAL or (status in statuses and (courier is not None or not offered)):
            return status, courier
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"order stuck in {status}: {await _pending(handle)}")
        await asyncio.sleep(every)


async def _pending(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """What the order, its payment and its delivery are doing (for a stuck order's message)."""
    out: list[str] = []
    order_id = handle.id.removeprefix("order-")
    for wf_id in (handle.id, payment_workflow_id(order_id), delivery_workflow_id(order_id)):
        try:
            d = await handle._client.get_workflow_handle(wf_id).describe()
        except Exception as exc:
            out.append(f"{wf_id}: {exc!r}")
            continue
        out.append(f"{wf_id}: {d.status.name if d.status else None}")
        if d.close_time is not None:
            with contextlib.suppress(Exception):
                async for e in handle._client.get_workflow_handle(wf_id).fetch_history_events():
                    if e.HasField("workflow_execution_failed_event_attributes"):
                        f = e.workflow_execution_failed_event_attributes.failure
                        out.append(f"  failed: {f.message} / cause: {f.cause.message}")
        for a in d.raw_description.pending_activities:
            out.append(
                f"  {a.activity_type.name} attempt {a.attempt} state {a.state}"
                f" last failure {a.last_failure.message!r}"
            )
    return out


async def cancel(handle: WorkflowHandle[Any, Any]) -> OrderView:
    with contextlib.suppress(WorkflowUpdateFailedError):  # finished first: fine, it's terminal
        await handle.execute_update(
            UPDATE_CANCEL, CancelRequest("resilience test"), result_type=CancelResult
        )
    result: OrderView = await handle.result()
    return result


async def deliver(stack: Stack, handle: WorkflowHandle[Any, Any], order_id: str) -> OrderView:
    """The courier app, compressed: accept whatever offer comes, pick up, deliver."""
    while True:
        status, courier = await until(stack, handle, {"DISPATCHING"}, offered=True)
        if status in TERMINAL:
            return await handle.result()  # type: ignore[no-any-return]
        assert courier is not None
        with contextlib.suppress(WorkflowUpdateFailedError):  # the offer moved on meanwhile
            if (await stack.courier_says(order_id, courier, "accepted")).accepted:
                break
    await until(stack, handle, {"COURIER_ASSIGNED"})
    await stack.courier_says(order_id, courier, "picked_up")
    await until(stack, handle, {"OUT_FOR_DELIVERY"})
    await stack.courier_says(order_id, courier, "delivered")
    return await handle.result()  # type: ignore[no-any-return]


async def assert_money_reconciles(stack: Stack, final: dict[str, OrderView]) -> None:
    for order_id, view in final.items():
        ledger = await stack.ledger(order_id)
        kinds = Counter(kind for kind, _ in ledger)
        total = view.amounts.total_cents
        assert kinds["authorize"] <= 1 and kinds["capture"] <= 1, (order_id, ledger)
        authorized = sum(a for k, a in ledger if k == "authorize")
        if view.status == "DELIVERED":
            assert ledger == [("authorize", total), ("capture", total)], (order_id, ledger)
            assert view.amounts.captured_cents == total
        else:
            voided = sum(a for k, a in ledger if k == "void")
            assert kinds["capture"] == 0, (order_id, ledger)
            assert authorized == voided, f"{order_id} {view.status}: dangling money {ledger}"


# ------------------------------------------------------------------------------ the tests

ORDERS = 100


async def test_a_hundred_orders_through_a_psp_failing_thirty_percent_end_with_money_reconciled(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    async with guarded_stack(
        dev_env.client,
        sqlite_url,
        tmp_path,
        Faults(error_rate=0.3, latency_ms=200),
    ) as g:
        stack = g.stack
        await stack.seed_product("SKU-R", PRICE, 1000)
        for i in range(ORDERS):
            await stack.seed_courier(f"k-{i:03d}", 0.5 + i * 0.02)

        async def one(i: int) -> tuple[str, OrderView]:
            # No tok_flaky here: its two forced 503s on top of the 30 % leave ~3 % of such
            # orders needing seven authorize attempts, and the seventh runs into the
            # authorize deadline, so it would end FAILED/PAYMENT_TIMEOUT instead of paid.
            token = "tok_decline" if i % 10 == 0 else "tok_ok"
            inp = stack.checkout(
                [("SKU-R", 1, PRICE)], token=token, customer_id=f"c-{i}", timeouts=TIMEOUTS
            )
            handle = await stack.start(inp)
            status, _ = await until(stack, handle, {"PAID", "DISPATCHING"})
            if status in TERMINAL:
                return inp.order_id, await handle.result()
            if i % 2:
                return inp.order_id, await cancel(handle)
            return inp.order_id, await deliver(stack, handle, inp.order_id)

        results = dict(
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(ORDERS))), 400)
        )

        statuses = Counter(v.status for v in results.values())
        assert set(statuses) <= {"DELIVERED", "CANCELLED", "FAILED"}, statuses
        assert statuses["DELIVERED"] > 0 and statuses["CANCELLED"] > 0, statuses
        declined = {oid for oid, v in results.items() if v.failure_reason == "PAYMENT_DECLINED"}
        assert len(declined) == ORDERS // 10, statuses
        await assert_money_reconciles(stack, results)
        delivered = statuses["DELIVERED"]
        assert await stack.stock("SKU-R") == (1000 - delivered, 0, delivered)
        # The PSP really was hostile: failed calls were retried.
        assert g.psp_requests.count("/v1/payment_intents") > ORDERS
        # Every request the PSP saw had passed the breaker and taken a rate token.
        assert g.limiter.asked - g.limiter.refused == len(g.psp_requests)


async def test_a_psp_outage_opens_the_breaker_then_orders_complete_once_it_heals(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    refused_before = _refused()
    async with guarded_stack(
        dev_env.client,
        sqlite_url,
        tmp_path,
        Faults(error_rate=1.0),
        TRADEFLOW_PSP_BREAKER_MIN_CALLS=5,
        TRADEFLOW_PSP_BREAKER_OPEN_S=1.0,
        TRADEFLOW_PSP_BREAKER_PROBES=2,
    ) as g:
        stack = g.stack
        await stack.seed_product("SKU-O", PRICE, 100)
        inputs = [
            stack.checkout([("SKU-O", 1, PRICE)], customer_id=f"c-{i}", timeouts=TIMEOUTS)
            for i in range(8)
        ]
        handles = [await stack.start(inp) for inp in inputs]

        await _until_breaker(g.breaker, BreakerState.OPEN, within=15)
        sent_when_opened = len(g.psp_requests)
        await asyncio.sleep(2.5)  # still down: the breaker lets only probes through
        sent_while_down = len(g.psp_requests) - sent_when_opened
        refused = _refused() - refused_before
        assert refused > 0, "retries while open must fail fast without calling the PSP"
        # At most a few half-open rounds of two probes each in 2.5 s; without the breaker
        # eight orders retrying would have sent many more.
        assert sent_while_down <= 3 * 2 + 2, g.psp_requests[sent_when_opened:]

        await g.set_faults(error_rate=0.0)
        reached = [(await until(stack, h, {"PAID", "DISPATCHING"}))[0] for h in handles]
        assert set(reached) <= {"PAID", "DISPATCHING"}, reached
        assert await g.breaker.state() == BreakerState.CLOSED
        final = {inp.order_id: await cancel(h) for inp, h in zip(inputs, handles, strict=True)}

        assert {v.status for v in final.values()} == {"CANCELLED"}
        await assert_money_reconciles(stack, final)
        for order_id in final:
            assert [k for k, _ in await stack.ledger(order_id)] == ["authorize", "void"]


def _refused() -> float:
    value = REGISTRY.get_sample_value("tradeflow_circuit_breaker_refused_total", {"breaker": "psp"})
    return value or 0.0


async def _until_breaker(breaker: CircuitBreaker, state: BreakerState, *, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (await breaker.snapshot()).state != state:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"breaker never {state.value}: {await breaker.snapshot()}")
        await asyncio.sleep(0.05)


# ------------------------------------------------------- one activity, breaker and limiter


@dataclass
class Guards:
    acts: PaymentActivities
    tight: PaymentActivities
    """The same, under a PSP call rate of one per two seconds, bursts of two."""
    breaker: CircuitBreaker
    psp: httpx.AsyncClient
    requests: list[str]


@pytest.fixture
async def guards(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Guards]:
    app = create_psp_app(tmp_path / "psp.db", webhook_url=None, webhook_secret="s", faults=Faults())
    transport = httpx.ASGITransport(app=app)
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"test:psp:{uuid.uuid4().hex}"
    engine = make_engine(sqlite_url)
    requests: list[str] = []

    async def note(request: httpx.Request) -> None:
        requests.append(request.url.path)

    breaker = CircuitBreaker(
        redis,
        name="psp",
        prefix=prefix,
        config=BreakerConfig(min_calls=4, failure_rate=0.5, open_s=30),
    )
    roomy = GcraLimiter(redis, rate_per_s=1000, burst=1000, prefix=f"{prefix}:roomy")
    tight = GcraLimiter(redis, rate_per_s=0.5, burst=2, prefix=f"{prefix}:tight")
    async with (
        httpx.AsyncClient(transport=transport, event_hooks={"request": [note]}) as http,
        httpx.AsyncClient(transport=transport, base_url="http://psp") as psp,
    ):
        sessions = make_sessionmaker(engine)
        acts, tight_acts = (
            PaymentActivities(
                http=http,
                sessionmaker=sessions,
                psp_url="http://psp",
                breaker=breaker,
                limiter=limiter,
            )
            for limiter in (roomy, tight)
        )
        yield Guards(acts, tight_acts, breaker, psp, requests)
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    await app.state.simulator.aclose()
    await engine.dispose()


def authorize(token: str = "tok_ok") -> AuthorizeInput:
    order_id = f"o-{uuid.uuid4().hex[:12]}"
    return AuthorizeInput(order_id, 1799, "USD", token, f"authorize:{order_id}")


async def test_calls_over_the_psp_rate_are_refused_with_a_retry_delay_and_never_sent(
    guards: Guards,
) -> None:
    env = ActivityEnvironment()
    for _ in range(2):  # the burst
        await env.run(guards.tight.authorize_payment, authorize())
    sent = len(guards.requests)

    with pytest.raises(ApplicationError) as refused:
        await env.run(guards.tight.authorize_payment, authorize())

    assert refused.value.type == RATE_LIMITED and not refused.value.non_retryable
    delay = refused.value.next_retry_delay
    assert delay is not None and 1.0 < delay.total_seconds() < 2.5  # one token per 2 s
    assert len(guards.requests) == sent


async def test_psp_failures_open_the_breaker_and_then_calls_fail_fast_unsent(
    guards: Guards,
) -> None:
    env = ActivityEnvironment()
    void = VoidInput("o-x", "pi_x", "void:o-x")
    await guards.psp.post("/v1/admin/faults", json={"error_rate": 1.0})
    for _ in range(3):  # fewer calls than min_calls: no verdict yet
        with pytest.raises(ApplicationError) as failed:
            await env.run(guards.acts.void_payment, void)
        assert failed.value.type == PSP_UNAVAILABLE
    assert await guards.breaker.state() == BreakerState.CLOSED
    with pytest.raises(ApplicationError):
        await env.run(guards.acts.void_payment, void)
    assert await guards.breaker.state() == BreakerState.OPEN
    sent = len(guards.requests)

    with pytest.raises(ApplicationError) as refused:
        await env.run(guards.acts.void_payment, VoidInput("o-x", "pi_x", "void:o-x"))

    assert refused.value.type == CIRCUIT_OPEN and not refused.value.non_retryable
    assert refused.value.next_retry_delay is None  # Temporal's backoff decides
    assert len(guards.requests) == sent


async def test_a_declined_card_is_a_healthy_psp_for_the_breaker(guards: Guards) -> None:
    env = ActivityEnvironment()
    result = await env.run(guards.acts.authorize_payment, authorize("tok_decline"))
    assert result.status == "DECLINED"
    snap = await guards.breaker.snapshot()
    assert (snap.calls, snap.failures) == (1, 0)


async def test_a_psp_down_past_the_payment_window_fails_the_order_once_it_recovers(
    ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    """Authorize retries stop at their schedule-to-close deadline with the last PSP error as
    the cause, not a timeout: the order must still fail cleanly, its stock returned, and the
    void compensation (which looks for an intent that may have landed) completes once the PSP
    answers again."""
    async with guarded_stack(ts_env.client, sqlite_url, tmp_path, Faults(error_rate=1.0)) as g:
        stack = g.stack
        await stack.seed_product("SKU-D", PRICE, 5)
        inp = stack.checkout([("SKU-D", 2, PRICE)], timeouts=TIMEOUTS)
        handle = await stack.start(inp)
        await wait_for_view(handle, lambda v: v.status == "RESERVED")
        await ts_env.sleep(180)  # well past the authorize window; the void is now retrying
        r = await stack.psp.post("/v1/admin/faults", json={"error_rate": 0.0})
        assert r.status_code == 200, r.text
        final: OrderView = await handle.result()

        assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_TIMEOUT"), final
        assert await stack.stock("SKU-D") == (5, 0, 0)
        assert await stack.ledger(inp.order_id) == []


async def test_a_psp_down_for_a_day_keeps_the_void_retrying_until_it_recovers(
    ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    """Nobody can tell whether an intent landed while the PSP is down, so the order cannot be
    called FAILED yet; nor is it handed to an operator for an outage: the void keeps trying
    (far past the old 20 attempts) and the order fails cleanly once the PSP answers."""
    async with guarded_stack(ts_env.client, sqlite_url, tmp_path, Faults(error_rate=1.0)) as g:
        stack = g.stack
        await stack.seed_product("SKU-D", PRICE, 5)
        inp = stack.checkout([("SKU-D", 2, PRICE)], timeouts=TIMEOUTS)
        handle = await stack.start(inp)
        await wait_for_view(handle, lambda v: v.status == "RESERVED")
        await ts_env.sleep(24 * 3600)
        desc = await handle.describe()
        pending = [a for a in desc.raw_description.pending_activities]
        assert [a.activity_type.name for a in pending] == ["void_payment"], pending
        assert pending[0].attempt > 20  # the old policy would have given up by now
        assert (await view_of(handle)).status == "RESERVED"  # neither FAILED nor parked

        r = await stack.psp.post("/v1/admin/faults", json={"error_rate": 0.0})
        assert r.status_code == 200, r.text
        final: OrderView = await handle.result()
        assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_TIMEOUT"), final
        assert await stack.stock("SKU-D") == (5, 0, 0)
        assert await stack.ledger(inp.order_id) == []
