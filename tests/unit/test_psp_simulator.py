"""The PSP simulator, driven in-process (and over real HTTP where timing or signing matters)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from psp.app import create_app
from psp.faults import Faults
from psp.signing import sign, verify
from psp.testing import serve_in_background

SECRET = "whsec-test"


class RecordingSender:
    """Stands in for the merchant: records every webhook and answers with scripted statuses."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []
        self._statuses = list(statuses)

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.calls.append((url, body, dict(headers)))
        return self._statuses.pop(0) if self._statuses else 200

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.calls]


async def eventually(check: Callable[[], Any], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def new_order() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


def intent_body(order_id: str, token: str = "tok_ok", amount: int = 1000) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "amount_cents": amount,
        "currency": "USD",
        "token": token,
        "capture_method": "manual",
    }


class Psp:
    """A simulator app plus a client on it; closes both."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://psp")

    async def create(
        self, order_id: str, token: str = "tok_ok", amount: int = 1000, key: str | None = None
    ) -> httpx.Response:
        return await self.http.post(
            "/v1/payment_intents",
            json=intent_body(order_id, token, amount),
            headers={"Idempotency-Key": key or f"auth-{order_id}"},
        )

    async def capture(self, pi: str, key: str, amount: int | None = None) -> httpx.Response:
        body = {} if amount is None else {"amount_cents": amount}
        return await self.http.post(
            f"/v1/payment_intents/{pi}/capture", json=body, headers={"Idempotency-Key": key}
        )

    async def refund(self, pi: str, key: str, amount: int) -> httpx.Response:
        return await self.http.post(
            "/v1/refunds",
            json={"payment_id": pi, "amount_cents": amount},
            headers={"Idempotency-Key": key},
        )

    async def ledger(self, order_id: str | None = None) -> list[dict[str, Any]]:
        params = {"order_id": order_id} if order_id else {}
        response = await self.http.get("/v1/ledger", params=params)
        assert response.status_code == 200
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def kinds(self, order_id: str) -> list[tuple[str, int]]:
        return [(row["kind"], row["amount_cents"]) for row in await self.ledger(order_id)]

    async def intent(self, pi: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/payment_intents/{pi}")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.app.state.simulator.aclose()


@pytest.fixture
async def make_psp(tmp_path: Path) -> AsyncIterator[Callable[..., Psp]]:
    made: list[Psp] = []

    def make(**kwargs: Any) -> Psp:
        options: dict[str, Any] = {
            "webhook_url": None,
            "webhook_secret": SECRET,
            "action_delay_s": 60.0,
            "faults": Faults(),
            "seed": 7,
        }
        options.update(kwargs)
        psp = Psp(create_app(options.pop("db_path", tmp_path / "psp.db"), **options))
        made.append(psp)
        return psp

    yield make
    for psp in made:
        await psp.aclose()


@pytest.fixture
async def psp(make_psp: Callable[..., Psp]) -> Psp:
    return make_psp()


# ------------------------------------------------------------------------- authorization


async def test_tok_ok_is_authorized_at_once_and_recorded_as_one_authorize(psp: Psp) -> None:
    order = new_order()
    response = await psp.create(order, "tok_ok", 1299)

    assert response.status_code == 200
    intent = response.json()
    assert intent["id"].startswith("pi_")
    assert intent | {"id": None, "created_at": None} == {
        "id": None,
        "order_id": order,
        "amount_cents": 1299,
        "currency": "USD",
        "status": "requires_capture",
        "amount_capturable": 1299,
        "amount_authorized": 1299,
        "amount_received": 0,
        "amount_refunded": 0,
        "created_at": None,
        "last_error": None,
    }
    ledger = await psp.ledger(order)
    assert [(r["order_id"], r["payment_id"], r["kind"], r["amount_cents"]) for r in ledger] == [
        (order, intent["id"], "authorize", 1299)
    ]
    assert set(ledger[0]) == {"order_id", "payment_id", "kind", "amount_cents", "at"}


async def test_same_key_and_body_replays_the_first_response_without_moving_money_again(
    psp: Psp,
) -> None:
    order = new_order()
    first = await psp.create(order, key="k-1")
    second = await psp.create(order, key="k-1")

    assert second.status_code == first.status_code == 200
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert await psp.kinds(order) == [("authorize", 1000)]
    listed = await psp.http.get("/v1/payment_intents", params={"order_id": order})
    assert [i["id"] for i in listed.json()["items"]] == [first.json()["id"]]


async def test_same_key_with_different_parameters_is_refused(psp: Psp) -> None:
    order = new_order()
    await psp.create(order, amount=1000, key="k-2")
    response = await psp.create(order, amount=2000, key="k-2")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert await psp.kinds(order) == [("authorize", 1000)]


async def test_concurrent_calls_with_one_key_create_one_intent(psp: Psp) -> None:
    order = new_order()
    responses = await asyncio.gather(*(psp.create(order, key="k-race") for _ in range(40)))

    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await psp.kinds(order) == [("authorize", 1000)]


async def test_an_idempotency_key_is_required(psp: Psp) -> None:
    response = await psp.http.post("/v1/payment_intents", json=intent_body(new_order()))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "idempotency_key_missing"


@pytest.mark.parametrize(
    "patch",
    [{"amount_cents": 0}, {"amount_cents": 10.5}, {"amount_cents": "10"}, {"currency": "US"}],
)
async def test_malformed_intents_are_refused_with_400(psp: Psp, patch: dict[str, Any]) -> None:
    response = await psp.http.post(
        "/v1/payment_intents",
        json=intent_body(new_order()) | patch,
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


async def test_tok_decline_is_402_with_a_stored_declined_intent(psp: Psp) -> None:
    order = new_order()
    first = await psp.create(order, "tok_decline")
    again = await psp.create(order, "tok_decline")

    assert first.status_code == again.status_code == 402
    assert first.json()["error"]["code"] == "card_declined"
    assert first.json()["intent"]["status"] == "declined"
    assert again.json() == first.json()
    stored = await psp.intent(first.json()["intent"]["id"])
    assert stored["status"] == "declined"
    assert stored["amount_capturable"] == 0
    assert await psp.kinds(order) == []


async def test_an_unknown_token_is_invalid(psp: Psp) -> None:
    response = await psp.create(new_order(), "tok_nonsense")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_token"


async def test_tok_flaky_answers_503_twice_per_key_then_authorizes(psp: Psp) -> None:
    order = new_order()
    statuses = [(await psp.create(order, "tok_flaky")).status_code for _ in range(4)]

    assert statuses == [503, 503, 200, 200]
    assert await psp.kinds(order) == [("authorize", 1000)]
    # The count is per key: a new key starts failing again.
    assert (await psp.create(order, "tok_flaky", key="other")).status_code == 503


async def test_tok_slow_commits_the_intent_before_its_late_answer(
    make_psp: Callable[..., Psp],
) -> None:
    psp = make_psp(slow_s=1.0)
    order = new_order()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(psp.create(order, "tok_slow"), timeout=0.2)

    listed = (await psp.http.get("/v1/payment_intents", params={"order_id": order})).json()
    assert [i["status"] for i in listed["items"]] == ["requires_capture"]
    assert await psp.kinds(order) == [("authorize", 1000)]
    started = time.monotonic()
    replay = await psp.create(order, "tok_slow")
    assert time.monotonic() - started < 0.5, "a replay answers without the slow path"
    assert replay.json()["id"] == listed["items"][0]["id"]


async def test_decline_rate_one_declines_cards_that_would_pass(
    make_psp: Callable[..., Psp],
) -> None:
    psp = make_psp(faults=Faults(decline_rate=1.0))
    order = new_order()
    response = await psp.create(order, "tok_ok")

    assert response.status_code == 402
    assert response.json()["intent"]["status"] == "declined"
    assert await psp.kinds(order) == []


# -------------------------------------------------------------------- customer action


async def test_complete_sends_the_succeeded_webhook_and_authorizes(
    make_psp: Callable[..., Psp],
) -> None:
    sender = RecordingSender()
    psp = make_psp(webhook_url="http://api/v1/payments/webhook", webhook_sender=sender)
    order = new_order()
    created = await psp.create(order, "tok_action")
    pi = created.json()["id"]
    assert created.json()["status"] == "requires_action"
    assert await psp.kinds(order) == []

    completed = await psp.http.post(f"/v1/test/payment_intents/{pi}/complete")

    assert completed.status_code == 200
    assert completed.json()["status"] == "requires_capture"
    assert await psp.kinds(order) == [("authorize", 1000)]
    [event] = sender.events
    assert event | {"event_id": None} == {
        "event_id": None,
        "type": "payment_intent.succeeded",
        "payment_id": pi,
        "order_id": order,
        "amount_cents": 1000,
    }
    again = await psp.http.post(f"/v1/test/payment_intents/{pi}/complete")
    assert again.status_code == 409
    assert len(sender.calls) == 1


async def test_tok_action_fail_ends_declined_with_a_failed_webhook(
    make_psp: Callable[..., Psp],
) -> None:
    sender = RecordingSender()
    psp = make_psp(webhook_url="http://api/hook", webhook_sender=sender, action_delay_s=0.1)
    order = new_order()
    pi = (await psp.create(order, "tok_action_fail")).json()["id"]

    await eventually(lambda: sender.calls)

    assert [e["type"] for e in sender.events] == ["payment_intent.failed"]
    assert (await psp.intent(pi))["status"] == "declined"
    assert await psp.kinds(order) == []


async def test_tok_action_never_sends_no_webhook(make_psp: Callable[..., Psp]) -> None:
    sender = RecordingSender()
    psp = make_psp(webhook_url="http://api/hook", webhook_sender=sender, action_delay_s=0.05)
    pi = (await psp.create(new_order(), "tok_action_never")).json()["id"]

    await asyncio.sleep(0.3)

    assert sender.calls == []
    assert (await psp.intent(pi))["status"] == "requires_action"


async def test_complete_of_an_unknown_intent_is_404(psp: Psp) -> None:
    response = await psp.http.post("/v1/test/payment_intents/pi_missing/complete")

    assert response.status_code == 404


async def test_a_pending_action_is_resumed_by_the_next_process(
    tmp_path: Path, make_psp: Callable[..., Psp]
) -> None:
    first = make_psp(webhook_url="http://api/hook", action_delay_s=0.3)
    order = new_order()
    pi = (await first.create(order, "tok_action")).json()["id"]
    await first.aclose()  # "crash" before the action resolves

    sender = RecordingSender()
    second = make_psp(webhook_url="http://api/hook", webhook_sender=sender)
    await second.ledger()  # any request starts the simulator

    await eventually(lambda: sender.calls)
    assert sender.events[0]["payment_id"] == pi
    assert await second.kinds(order) == [("authorize", 1000)]


async def test_webhook_is_retried_with_backoff_until_accepted(
    make_psp: Callable[..., Psp],
) -> None:
    sender = RecordingSender(statuses=(500, 503))
    psp = make_psp(
        webhook_url="http://api/hook", webhook_sender=sender, webhook_backoff_s=(0.05, 0.05)
    )
    pi = (await psp.create(new_order(), "tok_action")).json()["id"]

    await psp.http.post(f"/v1/test/payment_intents/{pi}/complete")

    await eventually(lambda: len(sender.calls) == 3)
    assert len({e["event_id"] for e in sender.events}) == 1
    await asyncio.sleep(0.2)
    assert len(sender.calls) == 3


async def test_an_absent_merchant_does_not_break_the_simulator(
    make_psp: Callable[..., Psp],
) -> None:
    psp = make_psp(webhook_url="http://127.0.0.1:9/hook", webhook_backoff_s=(0.01,))
    pi = (await psp.create(new_order(), "tok_action")).json()["id"]

    completed = await psp.http.post(f"/v1/test/payment_intents/{pi}/complete")

    assert completed.status_code == 200
    assert completed.json()["status"] == "requires_capture"
    assert (await psp.http.get("/healthz")).json() == {"status": "ok"}


async def test_tok_action_webhook_is_sent_over_http_and_correctly_signed(
    make_psp: Callable[..., Psp],
) -> None:
    received: list[tuple[bytes, str | None]] = []
    merchant = FastAPI()

    @merchant.post("/v1/payments/webhook")
    async def webhook(request: Request) -> Response:
        received.append((await request.body(), request.headers.get("X-PSP-Signature")))
        return Response(status_code=200)

    async with serve_in_background(merchant) as merchant_url:
        psp = make_psp(webhook_url=f"{merchant_url}/v1/payments/webhook", action_delay_s=0.2)
        order = new_order()
        pi = (await psp.create(order, "tok_action", 2500)).json()["id"]
        await eventually(lambda: received)

    body, header = received[0]
    assert header is not None
    parts = dict(p.split("=", 1) for p in header.split(","))
    assert abs(int(parts["t"]) - time.time()) < 30
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(parts["v1"], expected.hexdigest())
    assert verify(SECRET, body, header)
    assert json.loads(body) | {"event_id": None} == {
        "event_id": None,
        "type": "payment_intent.succeeded",
        "payment_id": pi,
        "order_id": order,
        "amount_cents": 2500,
    }
    assert (await psp.intent(pi))["status"] == "requires_capture"
    assert await psp.kinds(order) == [("authorize", 2500)]


def test_signatures_refuse_tampering_other_secrets_and_stale_timestamps() -> None:
    body = b'{"event_id":"evt_1"}'
    header = sign(SECRET, body)

    assert verify(SECRET, body, header)
    assert not verify(SECRET, body + b" ", header)
    assert not verify("another-secret", body, header)
    assert not verify(SECRET, body, sign(SECRET, body, int(time.time()) - 301))
    assert not verify(SECRET, body, None)
    assert not verify(SECRET, body, "garbage")


# ------------------------------------------------------------------------------- capture


async def test_capture_happens_once_whatever_the_repeats(psp: Psp) -> None:
    order = new_order()
    pi = (await psp.create(order)).json()["id"]

    first = await psp.capture(pi, "cap-1")
    replay = await psp.capture(pi, "cap-1")
    other_key = await psp.capture(pi, "cap-2")

    assert first.status_code == replay.status_code == 200
    assert first.json()["status"] == "succeeded"
    assert first.json()["amount_received"] == 1000
    assert replay.json() == first.json()
    assert other_key.status_code == 409
    assert other_key.json()["error"]["code"] == "intent_not_capturable"
    assert await psp.kinds(order) == [("authorize", 1000), ("capture", 1000)]


async def test_concurrent_captures_with_different_keys_capture_once(psp: Psp) -> None:
    order = new_order()
    pi = (await psp.create(order)).json()["id"]

    responses = await asyncio.gather(*(psp.capture(pi, f"cap-{i}") for i in range(40)))

    assert sorted(r.status_code for r in responses) == [200] + [409] * 39
    assert await psp.kinds(order) == [("authorize", 1000), ("capture", 1000)]


async def test_capture_above_the_authorized_amount_is_refused(psp: Psp) -> None:
    order = new_order()
    pi = (await psp.create(order)).json()["id"]

    response = await psp.capture(pi, "cap-big", amount=1001)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "capture_exceeds_authorized"
    assert (await psp.intent(pi))["status"] == "requires_capture"
    assert await psp.kinds(order) == [("authorize", 1000)]


async def test_partial_capture_releases_the_rest_of_the_hold(psp: Psp) -> None:
    order = new_order()
    pi = (await psp.create(order)).json()["id"]

    response = await psp.capture(pi, "cap-part", amount=600)

    assert response.json()["amount_received"] == 600
    assert response.json()["amount_capturable"] == 0
    assert await psp.kinds(order) == [("authorize", 1000), ("capture", 600), ("void", 400)]


@pytest.mark.parametrize("token", ["tok_decline", "tok_action"])
async def test_only_an_authorized_intent_can_be_captured(psp: Psp, token: str) -> None:
    created = (await psp.create(new_order(), token)).json()
    pi = created.get("id") or created["intent"]["id"]

    response = await psp.capture(pi, "cap")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "intent_not_capturable"


async def test_capture_of_a_canceled_intent_is_refused(psp: Psp) -> None:
    pi = (await psp.create(new_order())).json()["id"]
    await psp.http.post(f"/v1/payment_intents/{pi}/cancel")

    response = await psp.capture(pi, "cap")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "intent_not_capturable"


async def test_capture_of_an_unknown_intent_is_404(psp: Psp) -> None:
    assert (await psp.capture("pi_missing", "cap")).status_code == 404


# ---------------------------------------------------------------------------------- void


async def test_void_releases_the_authorization_once(psp: Psp) -> None:
    order = new_order()
    pi = (await psp.create(order)).json()["id"]

    first = await psp.http.post(f"/v1/payment_intents/{pi}/cancel")
    again = await psp.http.post(f"/v1/payment_intents/{pi}/cancel")

    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "canceled"
    assert first.json()["amount_capturable"] == 0
    assert first.json()["amount_authorized"] == 1000  # what was held, after it is released
    assert await psp.kinds(order) == [("authorize", 1000), ("void", 1000)]


async def test_an_intent_says_what_it_authorized_whichever_way_it_was_authorized(
    psp: Psp,
) -> None:
    order = new_order()
    pi = (await psp.create(order, "tok_action")).json()["id"]
    assert (await psp.intent(pi))["amount_authorized"] == 0  # nothing held before the action

    await psp.http.post(f"/v1/test/payment_intents/{pi}/complete")
    assert (await psp.intent(pi))["amount_authorized"] == 1000
    captured = await psp.capture(pi, "cap", amount=600)
    assert (captured.json()["amount_authorized"], captured.json()["amount_received"]) == (1000, 600)

    never = (await psp.create(new_order(), "tok_action_never")).json()["id"]
    canceled = await psp.http.post(f"/v1/payment_intents/{never}/cancel")
    assert (canceled.json()["status"], canceled.json()["amount_authorized"]) == ("canceled", 0)


async def test_a_file_from_before_amount_authorized_is_upgraded_from_its_ledger(
    make_psp: Callable[..., Psp], tmp_path: Path
) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    psp = make_psp(db_path=db)
    order = new_order()
    held = (await psp.create(order)).json()["id"]
    waiting = (await psp.create(new_order(), "tok_action_never")).json()["id"]
    await psp.aclose()
    with sqlite3.connect(db) as conn:  # the file as the simulator wrote it before
        conn.execute("ALTER TABLE intents DROP COLUMN amount_authorized")

    reopened = make_psp(db_path=db)
    assert (await reopened.intent(held))["amount_authorized"] == 1000
    assert (await reopened.intent(waiting))["amount_authorized"] == 0


async def test_void_before_the_customer_acted_moves_no_money_and_stops_the_webhook(
    make_psp: Callable[..., Psp],
) -> None:
    sender = RecordingSender()
    psp = make_psp(webhook_url="http://api/hook", webhook_sender=sender, action_delay_s=0.2)
    order = new_order()
    pi = (await psp.create(order, "tok_action")).json()["id"]

    response = await psp.http.post(f"/v1/payment_intents/{pi}/cancel")
    await asyncio.sleep(0.4)

    assert response.json()["status"] == "canceled"
    assert await psp.kinds(order) == []
    assert sender.calls == []


async def test_a_captured_intent_cannot_be_voided(psp: Psp) -> None:
    pi = (await psp.create(new_order())).json()["id"]
    await psp.capture(pi, "cap")

    response = await psp.http.post(f"/v1/payment_intents/{pi}/cancel")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "intent_not_cancelable"


# ------------------------------------------------------------------------------- refunds


async def test_refunds_never_exceed_what_was_captured(psp: Psp) -> None:
    order = new_order()
    pi = (await psp.create(order)).json()["id"]
    await psp.capture(pi, "cap")

    first = await psp.refund(pi, "r-1", 600)
    too_much = await psp.refund(pi, "r-2", 500)
    rest = await psp.refund(pi, "r-3", 400)
    replay = await psp.refund(pi, "r-1", 600)

    assert first.status_code == rest.status_code == replay.status_code == 200
    assert first.json()["id"].startswith("re_")
    assert replay.json() == first.json()
    assert too_much.status_code == 422
    assert too_much.json()["error"]["code"] == "refund_exceeds_captured"
    assert (await psp.intent(pi))["amount_refunded"] == 1000
    assert await psp.kinds(order) == [
        ("authorize", 1000),
        ("capture", 1000),
        ("refund", 600),
        ("refund", 400),
    ]


async def test_nothing_can_be_refunded_before_capture(psp: Psp) -> None:
    pi = (await psp.create(new_order())).json()["id"]

    response = await psp.refund(pi, "r", 1)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "refund_exceeds_captured"


# -------------------------------------------------------------------- ledger and restart


async def test_the_ledger_filters_by_order_and_lists_every_order_without_a_filter(
    psp: Psp,
) -> None:
    a, b = new_order(), new_order()
    await psp.create(a, amount=100)
    await psp.create(b, amount=200)

    assert await psp.kinds(a) == [("authorize", 100)]
    every = [(r["order_id"], r["amount_cents"]) for r in await psp.ledger()]
    assert every == [(a, 100), (b, 200)]


async def test_state_survives_recreating_the_app_on_the_same_file(
    make_psp: Callable[..., Psp],
) -> None:
    first = make_psp()
    order = new_order()
    pi = (await first.create(order, key="auth-key")).json()["id"]
    await first.capture(pi, "cap-key")
    await first.aclose()

    second = make_psp()

    assert (await second.intent(pi))["status"] == "succeeded"
    assert await second.kinds(order) == [("authorize", 1000), ("capture", 1000)]
    assert (await second.create(order, key="auth-key")).json()["id"] == pi
    assert (await second.capture(pi, "cap-key")).status_code == 200
    assert await second.kinds(order) == [("authorize", 1000), ("capture", 1000)]


# -------------------------------------------------------------------------------- faults


async def test_error_rate_one_answers_503_before_doing_anything(psp: Psp) -> None:
    knobs = await psp.http.post("/v1/admin/faults", json={"error_rate": 1.0})
    assert knobs.json() == {
        "error_rate": 1.0,
        "latency_ms": 0,
        "decline_rate": 0.0,
        "webhook_duplicates": 0,
        "webhook_reorder_ms": 0,
        "authorize_latency_ms": 0,
    }
    order = new_order()

    response = await psp.create(order)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "psp_unavailable"
    assert await psp.ledger(order) == []
    await psp.http.post("/v1/admin/faults", json={"error_rate": 0.0})
    assert (await psp.create(order)).status_code == 200


async def test_fault_knobs_come_from_the_environment(
    make_psp: Callable[..., Psp], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PSP_ERROR_RATE", "0.25")
    monkeypatch.setenv("PSP_LATENCY_MS", "30")
    monkeypatch.setenv("PSP_DECLINE_RATE", "0.5")
    psp = make_psp(faults=None)

    knobs = (await psp.http.get("/v1/admin/faults")).json()

    assert knobs == {
        "error_rate": 0.25,
        "latency_ms": 30,
        "decline_rate": 0.5,
        "webhook_duplicates": 0,
        "webhook_reorder_ms": 0,
        "authorize_latency_ms": 0,
    }


async def test_added_latency_delays_payment_calls(make_psp: Callable[..., Psp]) -> None:
    psp = make_psp(faults=Faults(latency_ms=150))
    started = time.monotonic()

    await psp.create(new_order())

    assert time.monotonic() - started >= 0.15


async def test_fault_knobs_refuse_out_of_range_values(psp: Psp) -> None:
    response = await psp.http.post("/v1/admin/faults", json={"error_rate": 1.5})

    assert response.status_code == 400


async def test_healthz(psp: Psp) -> None:
    assert (await psp.http.get("/healthz")).json() == {"status": "ok"}
