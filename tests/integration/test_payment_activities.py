"""Payment activities against a migrated database (SQLite and PostgreSQL) and the PSP simulator.

Retries are simulated the way Temporal runs them: the same input again with ``attempt`` > 1.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payments import (
    ALREADY_CAPTURED,
    PAYMENT_NOT_CAPTURABLE,
    PSP_UNAVAILABLE,
    PSP_UNKNOWN_OUTCOME,
    PaymentActivities,
)
from domain import errors
from domain.messages import AuthorizeInput, CaptureInput, VoidInput
from psp.app import create_app
from psp.faults import Faults
from psp.testing import serve_in_background
from store.db import make_engine, make_sessionmaker
from store.models import Payment
from store.schema import migrate

PG_URL = os.environ.get(
    "TRADEFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# ------------------------------------------------------------------------------ databases


def _postgres_schema_url(tmp_schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{tmp_schema}"


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('payments') / 't.db'}"
        migrate(url)
        yield url
        return
    libpq_url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        admin = psycopg.connect(libpq_url, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL does not answer at {PG_URL}: {exc}")
    schema = f"t_payments_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = _postgres_schema_url(schema)
        migrate(url)
        yield url
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


# ---------------------------------------------------------------------------------- world


@dataclass
class World:
    acts: PaymentActivities
    psp: httpx.AsyncClient
    """Straight to the simulator (ledger, test hooks), not through the activities."""
    sessions: async_sessionmaker[AsyncSession]
    requests: list[tuple[str, str]] = field(default_factory=list)
    """Every request the activities sent: (method, path)."""

    async def ledger(self, order_id: str) -> list[tuple[str, int]]:
        response = await self.psp.get("/v1/ledger", params={"order_id": order_id})
        return [(r["kind"], r["amount_cents"]) for r in response.json()["items"]]

    async def payment_row(self, order_id: str) -> Payment | None:
        async with self.sessions() as session:
            return await session.get(Payment, order_id)


async def run(fn: Any, arg: Any, *, attempt: int = 1) -> Any:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return await env.run(fn, arg)


def _recording_client(world_requests: list[tuple[str, str]], **kwargs: Any) -> httpx.AsyncClient:
    async def record(request: httpx.Request) -> None:
        world_requests.append((request.method, request.url.path))

    return httpx.AsyncClient(event_hooks={"request": [record]}, **kwargs)


@pytest.fixture
async def world(tmp_path: Path, sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[World]:
    app = create_app(
        tmp_path / "psp.db", webhook_url=None, webhook_secret="s", faults=Faults(), seed=1
    )
    requests: list[tuple[str, str]] = []
    transport = httpx.ASGITransport(app=app)
    async with (
        _recording_client(requests, transport=transport) as http,
        httpx.AsyncClient(transport=transport, base_url="http://psp") as psp,
    ):
        acts = PaymentActivities(http=http, sessionmaker=sessions, psp_url="http://psp")
        yield World(acts=acts, psp=psp, sessions=sessions, requests=requests)
    await app.state.simulator.aclose()


def authorize_input(token: str = "tok_ok", amount: int = 3098) -> AuthorizeInput:
    order_id = f"o-{uuid.uuid4().hex[:12]}"
    return AuthorizeInput(
        order_id=order_id,
        amount_cents=amount,
        currency="USD",
        token=token,
        idempotency_key=f"authorize-{order_id}",
    )


def capture_input(auth: AuthorizeInput, payment_id: str, amount: int | None = None) -> CaptureInput:
    return CaptureInput(
        order_id=auth.order_id,
        payment_id=payment_id,
        amount_cents=auth.amount_cents if amount is None else amount,
        idempotency_key=f"capture-{auth.order_id}",
    )


def void_input(auth: AuthorizeInput, payment_id: str | None) -> VoidInput:
    return VoidInput(
        order_id=auth.order_id, payment_id=payment_id, idempotency_key=f"void-{auth.order_id}"
    )


# ----------------------------------------------------------------------------- authorize


async def test_authorize_records_the_payment_and_authorizes_tok_ok(world: World) -> None:
    inp = authorize_input("tok_ok", 3098)

    result = await run(world.acts.authorize_payment, inp)

    assert result.status == "AUTHORIZED"
    assert result.payment_id.startswith("pi_")
    assert result.authorized_cents == 3098
    row = await world.payment_row(inp.order_id)
    assert row is not None
    assert (row.payment_id, row.status, row.authorized_cents) == (
        result.payment_id,
        "AUTHORIZED",
        3098,
    )
    assert (row.amount_cents, row.currency, row.idempotency_key) == (
        3098,
        "USD",
        inp.idempotency_key,
    )
    assert await world.ledger(inp.order_id) == [("authorize", 3098)]


async def test_an_authorize_retry_reuses_the_intent_and_authorizes_once(world: World) -> None:
    inp = authorize_input()

    first = await run(world.acts.authorize_payment, inp)
    world.requests.clear()
    retry = await run(world.acts.authorize_payment, inp, attempt=2)

    assert retry == first
    assert world.requests == [("GET", "/v1/payment_intents")], "looked up, did not post again"
    assert await world.ledger(inp.order_id) == [("authorize", inp.amount_cents)]


async def test_a_decline_is_returned_as_an_outcome_not_raised(world: World) -> None:
    inp = authorize_input("tok_decline")

    result = await run(world.acts.authorize_payment, inp)

    assert result.status == "DECLINED"
    assert result.payment_id.startswith("pi_")
    assert result.authorized_cents == 0
    assert result.detail == "card_declined"
    row = await world.payment_row(inp.order_id)
    assert row is not None and row.status == "DECLINED"
    assert await world.ledger(inp.order_id) == []


async def test_a_card_needing_action_leaves_the_payment_requiring_action(world: World) -> None:
    inp = authorize_input("tok_action")

    result = await run(world.acts.authorize_payment, inp)

    assert result.status == "REQUIRES_ACTION"
    row = await world.payment_row(inp.order_id)
    assert row is not None and (row.status, row.payment_id) == (
        "REQUIRES_ACTION",
        result.payment_id,
    )


async def test_an_invalid_token_fails_for_good(world: World) -> None:
    inp = authorize_input("tok_bogus")

    with pytest.raises(ApplicationError) as caught:
        await run(world.acts.authorize_payment, inp)

    assert caught.value.type == errors.PAYMENT_INVALID
    assert caught.value.non_retryable
    row = await world.payment_row(inp.order_id)
    assert row is not None and row.status == "PENDING", "recorded before the PSP call"


async def test_a_flaky_psp_is_retried_until_it_authorizes_once(world: World) -> None:
    inp = authorize_input("tok_flaky")

    for attempt in (1, 2):
        with pytest.raises(ApplicationError) as caught:
            await run(world.acts.authorize_payment, inp, attempt=attempt)
        assert caught.value.type == PSP_UNAVAILABLE
        assert not caught.value.non_retryable
    result = await run(world.acts.authorize_payment, inp, attempt=3)

    assert result.status == "AUTHORIZED"
    assert await world.ledger(inp.order_id) == [("authorize", inp.amount_cents)]


async def test_an_unreachable_psp_is_a_retryable_failure(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with httpx.AsyncClient() as http:
        acts = PaymentActivities(
            http=http, sessionmaker=sessions, psp_url="http://127.0.0.1:9", timeout_s=1
        )
        with pytest.raises(ApplicationError) as caught:
            await run(acts.authorize_payment, authorize_input())

    assert caught.value.type == PSP_UNAVAILABLE
    assert not caught.value.non_retryable


async def test_a_slow_psp_is_an_unknown_outcome_resolved_by_lookup_with_one_charge(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession]
) -> None:
    app = create_app(
        tmp_path / "psp.db", webhook_url=None, webhook_secret="s", faults=Faults(), slow_s=1.5
    )
    requests: list[tuple[str, str]] = []
    async with (
        serve_in_background(app) as psp_url,
        _recording_client(requests) as http,
        httpx.AsyncClient(base_url=psp_url) as psp,
    ):
        acts = PaymentActivities(http=http, sessionmaker=sessions, psp_url=psp_url, timeout_s=0.3)
        inp = authorize_input("tok_slow", 4200)

        with pytest.raises(ApplicationError) as caught:
            await run(acts.authorize_payment, inp)
        assert caught.value.type == PSP_UNKNOWN_OUTCOME
        assert not caught.value.non_retryable

        requests.clear()
        result = await run(acts.authorize_payment, inp, attempt=2)
        assert result.status == "AUTHORIZED"
        assert requests == [("GET", "/v1/payment_intents")]

        cap = capture_input(inp, result.payment_id)
        captured = await run(acts.capture_payment, cap)
        captured_again = await run(acts.capture_payment, cap, attempt=2)

        ledger = (await psp.get("/v1/ledger", params={"order_id": inp.order_id})).json()
    assert captured == captured_again
    assert captured.captured_cents == 4200
    assert [(r["kind"], r["amount_cents"]) for r in ledger["items"]] == [
        ("authorize", 4200),
        ("capture", 4200),
    ]
    async with sessions() as session:
        row = await session.get(Payment, inp.order_id)
    assert row is not None
    assert (row.status, row.authorized_cents, row.captured_cents) == ("CAPTURED", 4200, 4200)


# ------------------------------------------------------------------------------- capture


async def test_capture_moves_money_once_however_often_it_runs(world: World) -> None:
    inp = authorize_input()
    auth = await run(world.acts.authorize_payment, inp)
    cap = capture_input(inp, auth.payment_id)

    results = [
        await run(world.acts.capture_payment, cap),
        await run(world.acts.capture_payment, cap, attempt=2),
        await run(world.acts.capture_payment, cap),
        await run(world.acts.capture_payment, dataclasses.replace(cap, idempotency_key="other")),
    ]

    assert {(r.payment_id, r.captured_cents) for r in results} == {
        (auth.payment_id, inp.amount_cents)
    }
    assert await world.ledger(inp.order_id) == [
        ("authorize", inp.amount_cents),
        ("capture", inp.amount_cents),
    ]
    row = await world.payment_row(inp.order_id)
    assert row is not None and (row.status, row.captured_cents) == ("CAPTURED", inp.amount_cents)


async def test_a_late_authorize_retry_does_not_move_a_captured_payment_back(
    world: World,
) -> None:
    inp = authorize_input()
    auth = await run(world.acts.authorize_payment, inp)
    await run(world.acts.capture_payment, capture_input(inp, auth.payment_id))

    await run(world.acts.authorize_payment, inp, attempt=5)

    row = await world.payment_row(inp.order_id)
    assert row is not None and row.status == "CAPTURED"


async def test_a_declined_payment_cannot_be_captured(world: World) -> None:
    inp = authorize_input("tok_decline")
    auth = await run(world.acts.authorize_payment, inp)

    with pytest.raises(ApplicationError) as caught:
        await run(world.acts.capture_payment, capture_input(inp, auth.payment_id))

    assert caught.value.type == PAYMENT_NOT_CAPTURABLE
    assert caught.value.non_retryable


# ---------------------------------------------------------------------------------- void


async def test_void_releases_the_authorization_once(world: World) -> None:
    inp = authorize_input()
    auth = await run(world.acts.authorize_payment, inp)

    first = await run(world.acts.void_payment, void_input(inp, auth.payment_id))
    again = await run(world.acts.void_payment, void_input(inp, auth.payment_id), attempt=2)

    assert first.voided and again.voided
    assert first.payment_id == again.payment_id == auth.payment_id
    assert await world.ledger(inp.order_id) == [
        ("authorize", inp.amount_cents),
        ("void", inp.amount_cents),
    ]
    row = await world.payment_row(inp.order_id)
    assert row is not None and row.status == "VOIDED"


async def test_void_without_a_payment_id_finds_the_intent_by_order(world: World) -> None:
    inp = authorize_input()
    auth = await run(world.acts.authorize_payment, inp)

    result = await run(world.acts.void_payment, void_input(inp, None))

    assert (result.payment_id, result.voided) == (auth.payment_id, True)
    assert await world.ledger(inp.order_id) == [
        ("authorize", inp.amount_cents),
        ("void", inp.amount_cents),
    ]


async def test_void_with_nothing_at_the_psp_is_an_empty_rollback(world: World) -> None:
    inp = authorize_input()

    result = await run(world.acts.void_payment, void_input(inp, None))

    assert (result.payment_id, result.voided) == (None, False)
    assert await world.ledger(inp.order_id) == []


async def test_void_of_a_declined_payment_voids_nothing(world: World) -> None:
    inp = authorize_input("tok_decline")
    auth = await run(world.acts.authorize_payment, inp)

    result = await run(world.acts.void_payment, void_input(inp, auth.payment_id))

    assert (result.payment_id, result.voided) == (auth.payment_id, False)
    row = await world.payment_row(inp.order_id)
    assert row is not None and row.status == "DECLINED"


async def test_void_before_the_customer_acted_cancels_without_moving_money(
    world: World,
) -> None:
    inp = authorize_input("tok_action_never")
    auth = await run(world.acts.authorize_payment, inp)

    result = await run(world.acts.void_payment, void_input(inp, auth.payment_id))

    assert result.voided
    assert await world.ledger(inp.order_id) == []
    row = await world.payment_row(inp.order_id)
    assert row is not None and row.status == "VOIDED"


async def test_a_captured_payment_cannot_be_voided(world: World) -> None:
    inp = authorize_input()
    auth = await run(world.acts.authorize_payment, inp)
    await run(world.acts.capture_payment, capture_input(inp, auth.payment_id))

    with pytest.raises(ApplicationError) as caught:
        await run(world.acts.void_payment, void_input(inp, auth.payment_id))

    assert caught.value.type == ALREADY_CAPTURED
    assert caught.value.non_retryable
    row = await world.payment_row(inp.order_id)
    assert row is not None and row.status == "CAPTURED"


async def test_the_payment_row_is_written_once_per_order(world: World) -> None:
    inp = authorize_input()

    await run(world.acts.authorize_payment, inp)
    await run(world.acts.authorize_payment, inp, attempt=2)

    async with world.sessions() as session:
        rows = (
            await session.exec(select(Payment).where(col(Payment.order_id) == inp.order_id))
        ).all()
    assert len(rows) == 1
