"""An order's life through HTTP alone, against the stack `tradeflow up` starts.

One stack serves the whole module, because starting one is the expensive part (Temporal, Redis,
migrations, four processes). It is started like ``TRADEFLOW_COURIER_SIMULATOR=off make up``
with the demo catalogue and couriers, so that the README story (``scripts/story.sh``) can play
courier ``me-1`` by hand. The tests that need couriers to deliver run the courier simulator next
to the stack, with the command the launcher itself uses when the simulator is on
(``python -m cli.courier_sim``); it plays only the demo couriers ``k-*``.

Each test uses a SKU of its own (created through the admin API), so the demo orders the seed
places, and the story's order, do not move the stock figures a test asserts on.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx
import pytest

from tests.integration.test_launcher import (
    ROOT,
    RunningStack,
    launched,
    launcher_env,
    launcher_redis_url,
)

STORY = ROOT / "scripts" / "story.sh"
README = ROOT / "README.md"
COURIER_STEP_S = "0.3"
ORDER_TIMEOUT_S = 60.0
HAPPY_PATH = [
    "PENDING",
    "RESERVED",
    "PAID",
    "DISPATCHING",
    "COURIER_ASSIGNED",
    "OUT_FOR_DELIVERY",
    "DELIVERED",
]
TERMINAL = {"DELIVERED", "CANCELLED", "FAILED", "NEEDS_ATTENTION"}
DELIVERY_FEE_CENTS = 500
MAIN_LAT, MAIN_LNG = 31.2304, 121.4737


# ---------------------------------------------------------------------------------- stack


@dataclass
class Stack:
    running: RunningStack
    env: dict[str, str]
    http: httpx.Client
    """Talks to the API."""

    @property
    def admin(self) -> dict[str, str]:
        return {"X-Admin-Token": self.running.admin_token}

    def fail(self, message: str) -> NoReturn:
        pytest.fail(f"{message}\n{self.running.transcript()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    redis_url = launcher_redis_url()
    env = launcher_env(
        data_dir,
        REDIS_URL=redis_url,
        TRADEFLOW_DEMO="on",
        TRADEFLOW_COURIER_SIMULATOR="off",
        TRADEFLOW_COURIER_STEP_S=COURIER_STEP_S,
        # The demo tok_action order gets its webhook at once, so it is past dispatch (holding
        # an offer) before the story clocks me-1 in.
        TRADEFLOW_PSP_ACTION_DELAY_S="0",
    )
    with launched(env) as running, httpx.Client(base_url=running.api_url, timeout=30) as http:
        yield Stack(running=running, env=env, http=http)


@pytest.fixture(scope="module")
def couriers_on(stack: Stack) -> Iterator[None]:
    """The courier simulator, started as `tradeflow up` starts it when the simulator is on."""
    log = (stack.running.data_dir / "logs" / "courier-sim.log").open("a")
    env = {
        **stack.env,
        "TRADEFLOW_API_URL": stack.running.api_url,
        "TRADEFLOW_COURIER_STEP_S": COURIER_STEP_S,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.courier_sim"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -------------------------------------------------------------------------------- helpers


def order_body(sku: str, quantity: int, token: str, customer_id: str) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "location_id": "main",
        "items": [{"sku": sku, "quantity": quantity}],
        "delivery": {"address": "1 Main St", "lat": 31.23, "lng": 121.47},
        "payment": {"token": token},
    }


def new_product(stack: Stack, *, price_cents: int, stock: int) -> str:
    """A SKU only the calling test orders, with ``stock`` units at ``main``."""
    sku = f"E2E-{uuid.uuid4().hex[:8].upper()}"
    r = stack.http.put(
        f"/v1/admin/products/{sku}",
        json={"name": f"end-to-end {sku}", "price_cents": price_cents, "currency": "USD"},
        headers=stack.admin,
    )
    assert r.status_code == 200, r.text
    r = stack.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "main", "available": stock},
        headers=stack.admin,
    )
    assert r.status_code == 200, r.text
    return sku


def stock(stack: Stack, sku: str) -> dict[str, int]:
    r = stack.http.get(f"/v1/inventory/{sku}", params={"location_id": "main"})
    assert r.status_code == 200, r.text
    return {k: r.json()[k] for k in ("available", "reserved", "sold")}


def get_order(stack: Stack, order_id: str) -> dict[str, Any]:
    r = stack.http.get(f"/v1/orders/{order_id}")
    assert r.status_code == 200, r.text
    order: dict[str, Any] = r.json()
    return order


def wait_for(
    stack: Stack,
    order_id: str,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = ORDER_TIMEOUT_S,
) -> dict[str, Any]:
    """Poll GET /v1/orders/{id} until ``done(order)``; fail with the last answer otherwise."""
    deadline = time.monotonic() + timeout_s
    order = get_order(stack, order_id)
    while not done(order):
        if time.monotonic() > deadline:
            stack.fail(f"order {order_id} not {what} within {timeout_s:.0f}s: {order}")
        if order["status"] in TERMINAL:
            stack.fail(f"order {order_id} ended {order['status']} instead of {what}: {order}")
        time.sleep(0.2)
        order = get_order(stack, order_id)
    return order


def ledger(stack: Stack, order_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.running.psp_url}/v1/ledger", params={"order_id": order_id}, timeout=10)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def money_moves(stack: Stack, order_id: str) -> list[tuple[str, int]]:
    return sorted((e["kind"], e["amount_cents"]) for e in ledger(stack, order_id))


# ------------------------------------------------------------------ the README story, run


def wait_until_demo_orders_hold_their_couriers(stack: Stack) -> None:
    """The seed's demo orders are dispatched right after start-up. One that looks for a courier
    after me-1 clocks in would take me-1 (it is the nearest), so let them settle first: each
    holds an offer (nobody plays k-* yet), is further on, or waits for a payment that is not
    coming (then it will not look for a courier during the story either)."""
    r = stack.http.get("/v1/orders", params={"customer_id": "demo-customer"})
    assert r.status_code == 200, r.text
    ids = [o["order_id"] for o in r.json()["items"]]
    assert ids, "the seed places demo orders"
    deadline = time.monotonic() + 30
    pending = set(ids)
    while pending:
        for order_id in list(pending):
            o = get_order(stack, order_id)
            past_dispatch = o["status"] in TERMINAL | {"COURIER_ASSIGNED", "OUT_FOR_DELIVERY"}
            holds_offer = o["status"] == "DISPATCHING" and o["delivery"]["offered_to"]
            stuck_waiting = o["status"] == "AWAITING_PAYMENT" and age_s(o) > 5
            if past_dispatch or holds_offer or stuck_waiting:
                pending.discard(order_id)
        if time.monotonic() > deadline:
            stack.fail(f"demo orders {pending} did not reach a courier in 30 s")
        time.sleep(0.2)


def age_s(order: dict[str, Any]) -> float:
    """Seconds since the order's last transition."""
    at = datetime.fromisoformat(order["timeline"][-1]["at"].replace("Z", "+00:00"))
    return (datetime.now(UTC) - at).total_seconds()


@pytest.mark.slow
def test_the_story_script_plays_courier_me_1_from_order_to_delivered(stack: Stack) -> None:
    wait_until_demo_orders_hold_their_couriers(stack)
    env = {
        **os.environ,
        "TRADEFLOW_API_URL": stack.running.api_url,
        "TRADEFLOW_ADMIN_TOKEN": stack.running.admin_token,
        "STORY_TIMEOUT_S": "60",
    }
    try:
        done = subprocess.run(
            ["bash", str(STORY)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        # me-1 stays nearest to the store; clock it out so later orders go to couriers k-*.
        stack.http.put(
            "/v1/admin/couriers/me-1",
            json={"lat": MAIN_LAT, "lng": MAIN_LNG, "available": False},
            headers=stack.admin,
        )
    transcript = f"--- story.sh exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    if done.returncode != 0:
        stack.fail(transcript)
    found = re.search(r"story: order (\S+) DELIVERED", done.stdout)
    assert found, transcript
    order = get_order(stack, found.group(1))
    assert order["status"] == "DELIVERED"
    assert order["delivery"]["courier_id"] == "me-1"
    assert [t["status"] for t in order["timeline"]] == HAPPY_PATH
    assert order["amounts"]["captured_cents"] == order["amounts"]["total_cents"]


def readme_story_commands() -> list[str]:
    """Every curl command in the README's story section, whitespace-normalised."""
    text = README.read_text()
    section = text.split("## The story, with curl", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\"):
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # a quote spans lines
                continue
            if "curl " in pending:
                command = pending[pending.index("curl ") :]
                commands.append(" ".join(command.replace("\\\n", " ").split()))
            pending = ""
    return commands


def test_the_readme_story_shows_the_commands_the_script_runs() -> None:
    commands = readme_story_commands()
    assert len(commands) >= 4, commands  # courier, order, order again, events
    script = " ".join(STORY.read_text().replace("\\\n", " ").split())
    for command in commands:
        assert command in script, f"README command not in scripts/story.sh: {command}"


# --------------------------------------------------------------------------- happy path


@dataclass(frozen=True)
class Delivered:
    order: dict[str, Any]
    body: dict[str, Any]
    key: str
    quantity: int
    stock_before: dict[str, int]


@pytest.fixture(scope="module")
def delivered(stack: Stack, couriers_on: None) -> Delivered:
    """One order placed with curl's eyes (POST, then GET until DELIVERED), couriers simulated."""
    quantity = 3
    sku = new_product(stack, price_cents=1250, stock=20)
    before = stock(stack, sku)
    body = order_body(sku, quantity, "tok_ok", customer_id=f"e2e-{uuid.uuid4().hex[:8]}")
    key = f"e2e-happy-{uuid.uuid4().hex}"
    r = stack.http.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 202, r.text
    order_id = r.json()["order_id"]
    assert r.headers["Location"] == f"/v1/orders/{order_id}"
    assert r.json()["status"] == "PENDING"
    order = wait_for(stack, order_id, lambda o: o["status"] == "DELIVERED", "DELIVERED")
    return Delivered(order=order, body=body, key=key, quantity=quantity, stock_before=before)


@pytest.mark.slow
def test_an_order_goes_through_every_happy_path_status_in_order(delivered: Delivered) -> None:
    order = delivered.order
    assert [t["status"] for t in order["timeline"]] == HAPPY_PATH
    stamps = [t["at"] for t in order["timeline"]]
    assert stamps == sorted(stamps)
    assert order["delivery"]["status"] == "DELIVERED"
    assert order["delivery"]["courier_id"].startswith("k-")
    assert order["failure_reason"] is None


@pytest.mark.slow
def test_a_delivered_order_captured_its_total_once_at_the_psp(
    stack: Stack, delivered: Delivered
) -> None:
    order = delivered.order
    total = 1250 * delivered.quantity + DELIVERY_FEE_CENTS
    assert order["amounts"]["total_cents"] == total
    assert order["amounts"]["authorized_cents"] == total
    assert order["amounts"]["captured_cents"] == total
    assert order["amounts"]["refunded_cents"] == 0
    assert order["payment"]["status"] == "CAPTURED"
    assert money_moves(stack, order["order_id"]) == [("authorize", total), ("capture", total)]


@pytest.mark.slow
def test_a_delivered_order_sold_its_units(stack: Stack, delivered: Delivered) -> None:
    sku = delivered.order["items"][0]["sku"]
    before, after = delivered.stock_before, stock(stack, sku)
    assert after["sold"] == before["sold"] + delivered.quantity
    assert after["available"] == before["available"] - delivered.quantity
    assert after["reserved"] == before["reserved"] == 0


@pytest.mark.slow
def test_the_same_request_again_answers_200_with_the_same_order(
    stack: Stack, delivered: Delivered
) -> None:
    r = stack.http.post(
        "/v1/orders", json=delivered.body, headers={"Idempotency-Key": delivered.key}
    )
    assert r.status_code == 200, r.text
    assert r.json()["order_id"] == delivered.order["order_id"]
    assert r.json()["status"] == "DELIVERED"
    assert len(ledger(stack, delivered.order["order_id"])) == 2, "no second charge"


@pytest.mark.slow
def test_the_same_key_with_another_body_is_refused(stack: Stack, delivered: Delivered) -> None:
    other = {**delivered.body, "items": [{**delivered.body["items"][0], "quantity": 1}]}
    r = stack.http.post("/v1/orders", json=other, headers={"Idempotency-Key": delivered.key})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "idempotency_key_reused"


@pytest.mark.slow
def test_a_delivered_order_cannot_be_cancelled(stack: Stack, delivered: Delivered) -> None:
    order_id = delivered.order["order_id"]
    r = stack.http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "too late"})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "not_cancellable"
    assert get_order(stack, order_id)["status"] == "DELIVERED"
    assert money_moves(stack, order_id) == [
        ("authorize", delivered.order["amounts"]["total_cents"]),
        ("capture", delivered.order["amounts"]["total_cents"]),
    ]


# ------------------------------------------------------------------------------- cancel


@pytest.mark.slow
def test_cancel_while_awaiting_payment_returns_the_stock_and_charges_nothing(
    stack: Stack,
) -> None:
    sku = new_product(stack, price_cents=800, stock=10)
    before = stock(stack, sku)
    body = order_body(sku, 4, "tok_action_never", customer_id=f"e2e-{uuid.uuid4().hex[:8]}")
    r = stack.http.post(
        "/v1/orders", json=body, headers={"Idempotency-Key": f"e2e-cancel-{uuid.uuid4().hex}"}
    )
    assert r.status_code == 202, r.text
    order_id = r.json()["order_id"]
    waiting = wait_for(
        stack, order_id, lambda o: o["status"] == "AWAITING_PAYMENT", "AWAITING_PAYMENT"
    )
    assert waiting["payment"]["status"] == "REQUIRES_ACTION"
    assert stock(stack, sku) == {**before, "available": before["available"] - 4, "reserved": 4}

    r = stack.http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200, r.text
    assert r.json()["order_id"] == order_id
    assert r.json()["status"] in ("AWAITING_PAYMENT", "CANCELLED")  # accepted, on its way

    order = wait_for(stack, order_id, lambda o: o["status"] == "CANCELLED", "CANCELLED")
    assert [t["status"] for t in order["timeline"]] == [
        "PENDING",
        "RESERVED",
        "AWAITING_PAYMENT",
        "CANCELLED",
    ]
    assert stock(stack, sku) == before
    assert order["amounts"]["captured_cents"] == 0
    assert not [e for e in ledger(stack, order_id) if e["kind"] == "capture"]

    again = stack.http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "twice"})
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "CANCELLED"
