"""The chaos harness: a real `tradeflow up` stack, a burst of mixed orders through its HTTP API,
faults injected into its processes at random moments, then proof that nothing was lost.

One ``ChaosStack`` is one launcher run on free ports with a private data dir, its own
``redis-server`` (started by the launcher, so a Redis restart is the launcher's own) and either
SQLite or a fresh PostgreSQL schema. ``Burst`` places orders as clients would (every PSP test
token, duplicate requests, cancels at random moments, refunds after delivery, clients that retry
503s after ``Retry-After`` with the same key and a few that give up), while ``CourierDriver``
plays the stack's couriers through the public API (accepting, declining, picking up,
delivering). Each ``Fault`` is injected ``times`` times at moments drawn from the round's seeded
random generator, so ``CHAOS_SEED`` reproduces the schedule, the order mix and every client
decision (the machine's timing still varies).

``Verdict`` gathers what a round proves: every order the API ever stored for the round's
customers reached a terminal state, no courier is bound to a finished order, no answer was a
5xx other than 503-with-``Retry-After``, and ``tradeflow check stock`` / ``check money`` pass for
the round's SKUs and orders. Every problem names the order (or SKU) it is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_launcher import ROOT, RunningStack, tradeflow_command

TERMINAL = frozenset({"DELIVERED", "CANCELLED", "FAILED", "NEEDS_ATTENTION"})
REFUND_TERMINAL = frozenset({"SUCCEEDED", "FAILED"})
TOKENS = (
    "tok_ok",
    "tok_decline",
    "tok_action",
    "tok_action_fail",
    "tok_action_never",
    "tok_flaky",
    "tok_slow",
)
#: How often each token is drawn: most orders can be delivered, every token shows up.
TOKEN_WEIGHTS = (6, 1, 2, 1, 1, 2, 1)
MAIN_LAT, MAIN_LNG = 31.2304, 121.4737
ORPHAN_WAIT_S = float(os.environ.get("CHAOS_ORPHAN_WAIT_S") or 45)
"""How long an order stored for a client that gave up (or placed by a fault) gets to reach a
terminal state on its own (a reconciler restarting it, a sweeper failing it)."""
CLIENT_PATIENCE_S = 90.0
"""How long a retrying client keeps retrying one request through 503s and dropped connections."""


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def chaos_seed() -> int:
    """``CHAOS_SEED`` (an integer), or a fresh one printed with every failure."""
    raw = os.environ.get("CHAOS_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(1, 2**31)


# ----------------------------------------------------------------------------------- stack


@dataclass
class ChaosStack:
    running: RunningStack
    env: dict[str, str]
    backend: str
    """``sqlite`` or ``postgres``."""
    pg_application_name: str | None = None
    """The ``application_name`` every connection of this stack carries (PostgreSQL only), so
    a fault can kill this stack's transactions and nobody else's."""
    pg_url: str | None = None
    events: list[str] = field(default_factory=list)
    probe_customers: list[str] = field(default_factory=list)
    """Customers of orders a fault placed itself (their orders are checked like the rest)."""
    courier_prefix: str = "x-"
    probe_sku: str = ""

    @property
    def api_url(self) -> str:
        return self.running.api_url

    @property
    def psp_url(self) -> str:
        return self.running.psp_url

    @property
    def admin(self) -> dict[str, str]:
        return {"X-Admin-Token": self.running.admin_token}

    def note(self, message: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {message}")

    def pid(self, name: str) -> int:
        """The current pid of the launcher's child ``name`` (it changes at each restart)."""
        data = json.loads((self.running.data_dir / "pids.json").read_text())
        return int(data["children"][name]["pid"])

    async def wait_restarted(self, name: str, old_pid: int, within: float = 60.0) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, KeyError, ValueError):
                pid = self.pid(name)
                if pid != old_pid:
                    return pid
            await asyncio.sleep(0.2)
        raise AssertionError(f"the launcher did not restart {name} within {within:.0f}s")

    def tradeflow(self, *args: str, timeout: float = 120.0) -> tuple[int, str]:
        proc = subprocess.run(
            [*tradeflow_command(), *args],
            cwd=ROOT,
            env={**self.env, "TRADEFLOW_PSP_URL": self.psp_url},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return proc.returncode, proc.stdout + proc.stderr

    def transcript(self) -> str:
        return self.running.transcript()


def database_env(backend: str, data_dir: Path) -> tuple[dict[str, str], str | None, str | None]:
    """(environment, application name, PostgreSQL URL) for a stack on ``backend``."""
    if backend == "sqlite":
        return {}, None, None
    from tests.conftest import new_postgres_schema

    schema, url = new_postgres_schema()
    app_name = f"chaos_{schema}"
    url = f"{url}&application_name={app_name}"
    (data_dir.parent / "pg_schema").write_text(schema)
    return {"DATABASE_URL": url}, app_name, url


# --------------------------------------------------------------------------------- clients


@dataclass
class Answer:
    status: int
    body: Any
    headers: httpx.Headers


@dataclass
class Traffic:
    """Every answer the API gave in a round, and what was wrong with any of them."""

    statuses: Counter[int] = field(default_factory=Counter)
    unavailable: int = 0
    """503s with ``Retry-After`` (what a client may get while something is down)."""
    dropped: int = 0
    """Requests whose connection failed or was cut (the API process was killed)."""
    bad: list[str] = field(default_factory=list)
    """5xx other than 503 with Retry-After, each with its request."""
    slowest_s: float = 0.0


class Api:
    """The public HTTP API as a well-behaved client uses it: a 503 or a dropped connection is
    retried after ``Retry-After`` (the same request, the same ``Idempotency-Key``)."""

    def __init__(self, stack: ChaosStack, traffic: Traffic) -> None:
        self.stack = stack
        self.traffic = traffic
        self.http = httpx.AsyncClient(
            base_url=stack.api_url,
            timeout=httpx.Timeout(30.0, connect=3.0),
            limits=httpx.Limits(max_connections=40, max_keepalive_connections=20),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def once(self, method: str, path: str, **kw: Any) -> Answer | None:
        """One attempt; None when the connection failed."""
        started = time.monotonic()
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.TransportError:
            self.traffic.dropped += 1
            return None
        finally:
            self.traffic.slowest_s = max(self.traffic.slowest_s, time.monotonic() - started)
        self.traffic.statuses[r.status_code] += 1
        if r.status_code >= 500:
            if r.status_code == 503 and r.headers.get("retry-after"):
                self.traffic.unavailable += 1
            else:
                self.traffic.bad.append(f"{method} {path} -> {r.status_code} {r.text[:300]}")
        try:
            body = r.json()
        except ValueError:
            body = r.text
        return Answer(r.status_code, body, r.headers)

    async def call(
        self, method: str, path: str, *, patience_s: float = CLIENT_PATIENCE_S, **kw: Any
    ) -> Answer | None:
        """Retry through 503s and dropped connections for up to ``patience_s``; the last
        answer (None if the API never answered)."""
        deadline = time.monotonic() + patience_s
        answer: Answer | None = None
        while True:
            answer = await self.once(method, path, **kw)
            if answer is not None and answer.status != 503:
                return answer
            if time.monotonic() > deadline:
                return answer
            wait = 0.5
            if answer is not None:
                with contextlib.suppress(ValueError):
                    wait = min(float(answer.headers.get("retry-after", "1")), 5.0)
            await asyncio.sleep(wait)


# ---------------------------------------------------------------------------------- orders


@dataclass
class PlannedOrder:
    key: str
    customer_id: str
    sku: str
    quantity: int
    token: str
    start_at: float
    """Seconds after the burst's start."""
    cancel: str | None
    """``early`` (right after placing), ``offered`` (racing the courier's accept), ``assigned``
    or None."""
    refund: str | None
    """After delivery: ``full``, ``partial`` (with restock), ``race`` (two at once) or None."""
    duplicate: bool
    """The client sends the same request twice at once."""
    impatient: bool
    """The client gives up after one 503 (the order row may be stored, its workflow not)."""
    order_id: str | None = None
    cancel_accepted: bool = False
    """The API answered 200 to the cancel: the order must end CANCELLED."""
    final: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "location_id": "main",
            "items": [{"sku": self.sku, "quantity": self.quantity}],
            "delivery": {"address": "1 Main St", "lat": MAIN_LAT + 0.005, "lng": MAIN_LNG},
            "payment": {"token": self.token},
        }


def plan_orders(
    rng: random.Random,
    *,
    tag: str,
    skus: list[str],
    count: int,
    spread_s: float,
    hot_sku: str | None = None,
) -> list[PlannedOrder]:
    """``count`` orders spread over ``spread_s`` seconds; with ``hot_sku`` half of them go to
    the flash sale (one unit each, mostly ``tok_ok``)."""
    customers = [f"c-{tag}-{i}" for i in range(max(4, count // 4))]
    plans: list[PlannedOrder] = []
    regular = 0
    for i in range(count):
        flash = hot_sku is not None and i % 2 == 0
        if flash:
            token = "tok_ok"
        else:  # every token at least once per round, then drawn by weight
            token = (
                TOKENS[regular] if regular < len(TOKENS) else rng.choices(TOKENS, TOKEN_WEIGHTS)[0]
            )
            regular += 1
        # The first order of each token is left alone (no cancel, no giving up), so every
        # round has each token's own path to its end, whatever else the dice say.
        sentinel = not flash and regular <= len(TOKENS)
        cancel = rng.choices([None, "early", "offered", "assigned"], [10, 2, 2, 2])[0]
        if sentinel:
            cancel = None
        refund = None
        if cancel is None and token in ("tok_ok", "tok_action", "tok_flaky", "tok_slow"):
            refund = rng.choices([None, "full", "partial", "race"], [6, 1, 2, 1])[0]
        plans.append(
            PlannedOrder(
                key=f"{tag}-{i}-{uuid.uuid4().hex[:8]}",
                customer_id=rng.choice(customers),
                sku=hot_sku if flash and hot_sku else rng.choice(skus),
                quantity=1 if flash else rng.randint(1, 3),
                token=token,
                start_at=rng.uniform(0, spread_s),
                cancel=cancel,
                refund=refund,
                duplicate=rng.random() < 0.15,
                impatient=not sentinel and rng.random() < 0.1,
            )
        )
    return plans


class Burst:
    """Drives every planned order to its end through the API, as its client would."""

    def __init__(self, api: Api, rng: random.Random, plans: list[PlannedOrder]) -> None:
        self.api = api
        self.rng = rng
        self.plans = plans

    async def run(self) -> None:
        await asyncio.gather(*(self._life(p) for p in self.plans))

    async def _life(self, p: PlannedOrder) -> None:
        await asyncio.sleep(p.start_at)
        if not await self._place(p):
            return
        assert p.order_id is not None
        if p.cancel is not None:
            await self._cancel_when(p)
        p.final = await self.wait_terminal(p.order_id)
        if p.final is None:
            return
        if p.final["status"] == "DELIVERED" and p.refund is not None:
            await self._refund(p)

    async def _place(self, p: PlannedOrder) -> bool:
        headers = {"Idempotency-Key": p.key}
        if p.impatient:
            answer = await self.api.once("POST", "/v1/orders", json=p.body(), headers=headers)
            if answer is None or answer.status == 503:
                return False  # gave up; the round's listing by customer still finds the row
        else:
            attempts = [self.api.call("POST", "/v1/orders", json=p.body(), headers=headers)]
            if p.duplicate:
                attempts.append(self.api.call("POST", "/v1/orders", json=p.body(), headers=headers))
            answers = await asyncio.gather(*attempts)
            ids = {a.body.get("order_id") for a in answers if a and a.status in (200, 202)}
            if len(ids) > 1:
                p.problems.append(f"the same key {p.key} placed {len(ids)} orders: {ids}")
            answer = next((a for a in answers if a and a.status in (200, 202)), answers[0])
        if answer is None or answer.status not in (200, 202):
            p.problems.append(
                f"order {p.key} not placed: "
                + ("no answer" if answer is None else f"{answer.status} {answer.body}")
            )
            return False
        p.order_id = answer.body["order_id"]
        return True

    async def _cancel_when(self, p: PlannedOrder) -> None:
        assert p.order_id is not None
        want = {"early": None, "offered": "offered", "assigned": "assigned"}[p.cancel or "early"]
        deadline = time.monotonic() + 30
        while want is not None and time.monotonic() < deadline:
            answer = await self.api.call("GET", f"/v1/orders/{p.order_id}")
            if answer is None or answer.status != 200:
                await asyncio.sleep(0.5)
                continue
            view = answer.body
            if view["status"] in TERMINAL or view["status"] == "OUT_FOR_DELIVERY":
                return
            delivery = view.get("delivery") or {}
            if want == "offered" and delivery.get("offered_to"):
                break
            if want == "assigned" and delivery.get("courier_id"):
                break
            await asyncio.sleep(0.2)
        else:
            if want is not None:
                return
        answer = await self.api.call(
            "POST", f"/v1/orders/{p.order_id}/cancel", json={"reason": f"chaos {p.cancel}"}
        )
        if answer is not None and answer.status not in (200, 409):
            p.problems.append(f"order {p.order_id}: cancel answered {answer.status} {answer.body}")
        if answer is not None and answer.status == 200:
            p.cancel_accepted = True

    async def wait_terminal(self, order_id: str, within: float = 240.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + within
        last: Any = None
        while time.monotonic() < deadline:
            answer = await self.api.call("GET", f"/v1/orders/{order_id}")
            if answer is not None and answer.status == 200:
                last = answer.body
                if last["status"] in TERMINAL:
                    return dict(last)
            await asyncio.sleep(self.rng.uniform(0.8, 1.6))
        return None

    async def _refund(self, p: PlannedOrder) -> None:
        assert p.order_id is not None and p.final is not None
        total = int(p.final["amounts"]["total_cents"])
        unit = int(p.final["items"][0]["unit_price_cents"])
        path = f"/v1/orders/{p.order_id}/refunds"
        headers = self.api.stack.admin
        if p.refund == "full":
            bodies = [{"amount_cents": total, "reason": "chaos full"}]
        elif p.refund == "partial":
            bodies = [
                {
                    "amount_cents": unit,
                    "reason": "chaos partial",
                    "restock": [{"sku": p.sku, "quantity": 1}],
                }
            ]
        else:  # two refunds racing for more than was captured: at most one may pass
            bodies = [
                {"amount_cents": total - 1, "reason": "chaos race a"},
                {"amount_cents": total - 1, "reason": "chaos race b"},
            ]
        answers = await asyncio.gather(
            *(
                self.api.call(
                    "POST",
                    path,
                    json=b,
                    headers={**headers, "Idempotency-Key": f"{p.key}-r{i}"},
                )
                for i, b in enumerate(bodies)
            )
        )
        for a in answers:
            if a is None:
                p.problems.append(f"order {p.order_id}: a refund request never got an answer")
            elif a.status in (200, 202):
                # 202 the first time; 200 when a 503 (Temporal paused: "the refund is stored;
                # retry with the same key") made call() repeat it and the repeat found it stored
                p.refunds.append(a.body["refund_id"])
            elif not (a.status == 422 and p.refund == "race"):
                p.problems.append(f"order {p.order_id}: refund answered {a.status} {a.body}")
        if p.refund == "race" and len(p.refunds) > 1:
            p.problems.append(f"order {p.order_id}: two racing refunds over the capture passed")
        for rid in p.refunds:
            deadline = time.monotonic() + 120
            status = None
            while time.monotonic() < deadline:
                a = await self.api.call("GET", f"{path}/{rid}")
                if a is not None and a.status == 200:
                    status = a.body["status"]
                    if status in REFUND_TERMINAL:
                        break
                await asyncio.sleep(1.0)
            if status != "SUCCEEDED":
                p.problems.append(f"order {p.order_id}: refund {rid} ended {status}")


# -------------------------------------------------------------------------------- couriers


class CourierDriver:
    """Plays the couriers ``<prefix>*`` through the public API like the courier app: polls
    ``GET /v1/couriers``, accepts or declines each offer (seeded), picks up, delivers."""

    def __init__(
        self, api: Api, rng: random.Random, prefix: str, *, decline_rate: float, step_s: float
    ) -> None:
        self.api = api
        self.rng = rng
        self.prefix = prefix
        self.decline_rate = decline_rate
        self.step_s = step_s
        self.handled: set[tuple[str, str]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.declined = 0

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                answer = await self.api.once("GET", "/v1/couriers", params={"limit": 1000})
                if answer is not None and answer.status == 200:
                    for c in answer.body["items"]:
                        self._consider(c)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.3)
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def _consider(self, c: dict[str, Any]) -> None:
        courier, order = c["courier_id"], c.get("current_order_id")
        if not courier.startswith(self.prefix) or not order or (courier, order) in self.handled:
            return
        self.handled.add((courier, order))
        if c.get("assignment") == "OFFERED":
            if self.rng.random() < self.decline_rate:
                steps = ["declined"]
            else:
                steps = ["accepted", "picked_up", "delivered"]
        else:
            steps = ["picked_up", "delivered"]
        task = asyncio.create_task(self._play(courier, order, steps))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _play(self, courier: str, order: str, steps: list[str]) -> None:
        for i, step in enumerate(steps):
            if i:
                await asyncio.sleep(self.step_s * self.rng.uniform(0.5, 1.5))
            answer = await self.api.call(
                "POST",
                f"/v1/deliveries/{order}/events",
                json={"courier_id": courier, "type": step},
                patience_s=60,
            )
            if step == "accepted":
                self.accepted += 1
            elif step == "declined":
                self.declined += 1
            if answer is not None and answer.status == 409 and step == "accepted":
                # Refused, or the answer to an accept that landed was lost (a 503 while
                # Temporal paused, then the repeat met a closed delivery): the next poll looks
                # at the courier's row again, as the courier app would.
                self.handled.discard((courier, order))
                return
            if answer is None or answer.status != 202:
                return  # refused (the order was cancelled, the offer lapsed): nothing to play


# ---------------------------------------------------------------------------------- faults


@dataclass
class Fault:
    name: str
    inject: Callable[[ChaosStack, random.Random, Api], Awaitable[str]]
    """One injection; returns what it did, for the round's log."""
    backends: tuple[str, ...] = ("sqlite", "postgres")
    flash_sale: bool = False


async def _kill_child(stack: ChaosStack, name: str) -> str:
    pid = stack.pid(name)
    os.kill(pid, signal.SIGKILL)
    new = await stack.wait_restarted(name, pid)
    return f"SIGKILL {name} pid {pid}; the launcher restarted it as {new}"


async def kill_worker(stack: ChaosStack, rng: random.Random, api: Api) -> str:
    return await _kill_child(stack, "worker")


async def kill_api(stack: ChaosStack, rng: random.Random, api: Api) -> str:
    return await _kill_child(stack, "api")


async def restart_redis(stack: ChaosStack, rng: random.Random, api: Api) -> str:
    return await _kill_child(stack, "redis")


async def stop_temporal(stack: ChaosStack, rng: random.Random, api: Api) -> str:
    """SIGSTOP the dev server for 5-10 s; meanwhile one impatient client places an order once
    and must get 503 with Retry-After (or its order), nothing in between."""
    pid = stack.pid("temporal")
    pause = rng.uniform(5.0, 10.0)
    os.kill(pid, signal.SIGSTOP)
    probe = ""
    try:
        await asyncio.sleep(min(1.0, pause / 3))
        body = {
            "customer_id": f"c-probe-{uuid.uuid4().hex[:6]}",
            "location_id": "main",
            "items": [{"sku": stack.probe_sku, "quantity": 1}],
            "delivery": {"address": "1 Main St", "lat": MAIN_LAT, "lng": MAIN_LNG},
            "payment": {"token": "tok_ok"},
        }
        stack.probe_customers.append(body["customer_id"])
        started = time.monotonic()
        answer = await api.once(
            "POST", "/v1/orders", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        took = time.monotonic() - started
        probe = f"; an order placed meanwhile got {answer.status if answer else 'no answer'}"
        probe += f" in {took:.1f}s"
        await asyncio.sleep(max(0.0, pause - (time.monotonic() - started) - 1.0))
    finally:
        os.kill(pid, signal.SIGCONT)
    return f"SIGSTOP temporal pid {pid} for {pause:.1f}s{probe}"


async def psp_outage(stack: ChaosStack, rng: random.Random, api: Api) -> str:
    """Every PSP call answers 503 for a while (``CHAOS_PSP_OUTAGE_S``, default 6-11 s: longer
    than the breaker's open time and the forward steps' first backoffs), then healed."""
    low = float(os.environ.get("CHAOS_PSP_OUTAGE_S", "6"))
    length = rng.uniform(low, low * 1.8)
    async with httpx.AsyncClient(base_url=stack.psp_url, timeout=10) as psp:
        (await psp.post("/v1/admin/faults", json={"error_rate": 1.0})).raise_for_status()
        try:
            await asyncio.sleep(length)
        finally:
            (await psp.post("/v1/admin/faults", json={"error_rate": 0.0})).raise_for_status()
    return f"PSP at 100% errors for {length:.1f}s, then healed"


async def kill_pg_transactions(stack: ChaosStack, rng: random.Random, api: Api) -> str:
    """For 1-3 s, pg_terminate_backend every connection of this stack that is inside a
    transaction."""
    import psycopg

    assert stack.pg_url is not None and stack.pg_application_name is not None
    plain = stack.pg_url.replace("postgresql+psycopg://", "postgresql://").split("?")[0]
    length = rng.uniform(1.0, 3.0)
    killed = 0
    deadline = time.monotonic() + length
    async with await psycopg.AsyncConnection.connect(plain, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND xact_start IS NOT NULL AND pid <> pg_backend_pid()",
                (stack.pg_application_name,),
            )
            row = await cur.fetchone()
            killed += int(row[0]) if row else 0
            await asyncio.sleep(0.02)
    return f"pg_terminate_backend on {killed} connections mid-transaction over {length:.1f}s"


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("worker_sigkill", kill_worker),
        Fault("api_sigkill", kill_api),
        Fault("temporal_sigstop", stop_temporal),
        Fault("redis_restart_flash_sale", restart_redis, flash_sale=True),
        Fault("psp_outage", psp_outage),
        Fault("pg_terminate_backend", kill_pg_transactions, backends=("postgres",)),
    )
}


async def inject_at_random(
    fault: Fault,
    stack: ChaosStack,
    rng: random.Random,
    api: Api,
    *,
    times: int,
    window_s: float,
    log: list[str],
) -> None:
    """``times`` injections at random moments within ``window_s`` (one after the other)."""
    offsets = sorted(rng.uniform(0.5, window_s) for _ in range(times))
    started = time.monotonic()
    for offset in offsets:
        await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
        at = time.monotonic() - started
        what = await fault.inject(stack, rng, api)
        log.append(f"t+{at:.1f}s {what}")
        stack.note(f"{fault.name}: {what}")


# --------------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    fault: str
    backend: str
    seed: int
    orders: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    refunds: int = 0
    injections: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    traffic: Traffic | None = None
    seconds: float = 0.0
    couriers: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        t = self.traffic or Traffic()
        return {
            "fault": self.fault,
            "backend": self.backend,
            "seed": self.seed,
            "injections": len(self.injections),
            "orders": self.orders,
            "terminal": dict(self.statuses),
            "failure_reasons": dict(self.failure_reasons),
            "refunds": self.refunds,
            "couriers": self.couriers,
            "http": {str(k): v for k, v in sorted(t.statuses.items())},
            "dropped_connections": t.dropped,
            "slowest_answer_s": round(t.slowest_s, 1),
            "checks": self.checks,
            "problems": len(self.problems),
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }

    def explain(self) -> str:
        lines = [
            f"chaos round {self.fault} on {self.backend} found {len(self.problems)} problems"
            f" (reproduce with CHAOS_SEED={self.seed}):",
            *(f"  - {p}" for p in self.problems),
            "faults injected:",
            *(f"  {i}" for i in self.injections),
            f"summary: {json.dumps(self.summary())}",
        ]
        return "\n".join(lines)


def relevant_lines(output: str, names: set[str]) -> list[str]:
    """The FAIL lines of a check's output that name one of ``names`` (orders or SKUs)."""
    return [
        line
        for line in output.splitlines()
        if line.startswith("FAIL") and any(n in line for n in names)
    ]


@contextlib.contextmanager
def timed(verdict: Verdict) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        verdict.seconds = time.monotonic() - started


# ----------------------------------------------------------------------------------- round


@dataclass
class RoundConfig:
    orders: int = 16
    """Orders per round (``CHAOS_ORDERS``)."""
    times: int = 3
    """Injections of the fault per round."""
    spread_s: float = 8.0
    """Orders start over this many seconds, and the faults strike within them."""
    settle_s: float = 150.0
    """How long orders get to reach a terminal state once the burst is placed."""

    @classmethod
    def from_env(cls) -> RoundConfig:
        return cls(
            orders=env_int("CHAOS_ORDERS", cls.orders),
            times=max(3, env_int("CHAOS_TIMES", cls.times)),
            spread_s=float(os.environ.get("CHAOS_SPREAD_S") or cls.spread_s),
        )


async def seed_catalogue(
    stack: ChaosStack, api: Api, tag: str, *, flash_sale: bool, flash_units: int
) -> tuple[list[str], str | None]:
    """Three SKUs of the round with plenty of stock, and with ``flash_sale`` a hot one with
    ``flash_units`` units."""
    skus = [f"CH-{tag}-{i}".upper() for i in range(3)]
    hot = f"CH-{tag}-HOT".upper() if flash_sale else None
    for i, sku in enumerate([*skus, *([hot] if hot else [])]):
        is_hot = sku == hot
        for path, body in (
            (
                f"/v1/admin/products/{sku}",
                {
                    "name": f"chaos {sku}",
                    "price_cents": 700 + 150 * i,
                    "currency": "USD",
                    "hot": is_hot,
                },
            ),
            (
                f"/v1/admin/inventory/{sku}",
                {"location_id": "main", "available": flash_units if is_hot else 500},
            ),
        ):
            answer = await api.call("PUT", path, json=body, headers=stack.admin)
            assert answer is not None and answer.status == 200, (path, answer)
    return skus, hot


async def list_orders(api: Api, customer_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"customer_id": customer_id, "limit": 100}
        if cursor:
            params["cursor"] = cursor
        answer = await api.call("GET", "/v1/orders", params=params)
        assert answer is not None and answer.status == 200, answer
        items += answer.body["items"]
        cursor = answer.body.get("next_cursor")
        if not cursor:
            return items


async def run_round(
    stack: ChaosStack, fault: Fault, *, seed: int, round_no: int, cfg: RoundConfig
) -> Verdict:
    """One burst under ``fault`` and everything it must prove afterwards."""
    rng = random.Random(f"{seed}/{fault.name}/{stack.backend}/{round_no}")
    verdict = Verdict(fault=fault.name, backend=stack.backend, seed=seed)
    traffic = Traffic()
    verdict.traffic = traffic
    api = Api(stack, traffic)
    tag = f"{fault.name.split('_')[0][:5]}{round_no}{rng.randrange(16**4):04x}"
    with timed(verdict):
        try:
            await _round(stack, fault, rng, api, verdict, tag, cfg)
        finally:
            await api.aclose()
    return verdict


async def _round(
    stack: ChaosStack,
    fault: Fault,
    rng: random.Random,
    api: Api,
    verdict: Verdict,
    tag: str,
    cfg: RoundConfig,
) -> None:
    flash_units = max(4, cfg.orders // 4)
    skus, hot = await seed_catalogue(
        stack, api, tag, flash_sale=fault.flash_sale, flash_units=flash_units
    )
    stack.probe_sku = skus[0]
    probes_before = len(stack.probe_customers)
    plans = plan_orders(
        rng, tag=tag, skus=skus, count=cfg.orders, spread_s=cfg.spread_s, hot_sku=hot
    )
    driver = CourierDriver(api, rng, stack.courier_prefix, decline_rate=0.25, step_s=0.8)
    stop = asyncio.Event()
    driver_task = asyncio.create_task(driver.run(stop))
    try:
        await asyncio.gather(
            Burst(api, rng, plans).run(),
            inject_at_random(
                fault,
                stack,
                rng,
                api,
                times=cfg.times,
                window_s=cfg.spread_s,
                log=verdict.injections,
            ),
        )
        # Every order the API stored for the round's customers, also those whose client gave
        # up on a 503 and those a fault placed: each must reach a terminal state.
        customers = {p.customer_id for p in plans} | set(stack.probe_customers[probes_before:])
        known = {p.order_id: p for p in plans if p.order_id}
        listed: dict[str, dict[str, Any]] = {}
        for c in sorted(customers):
            for o in await list_orders(api, c):
                listed[o["order_id"]] = o
        burst = Burst(api, rng, [])
        settle_until = time.monotonic() + ORPHAN_WAIT_S
        for order_id, view in sorted(listed.items()):
            if order_id in known and known[order_id].final is not None:
                continue
            if view["status"] not in TERMINAL:
                left = max(5.0, settle_until - time.monotonic())
                final = await burst.wait_terminal(order_id, within=left)
                listed[order_id] = final or (await _view(api, order_id)) or view
    finally:
        stop.set()
        await driver_task
    verdict.couriers = {"accepted": driver.accepted, "declined": driver.declined}

    for p in plans:
        verdict.problems += p.problems
        verdict.refunds += len(p.refunds)
    for order_id, view in sorted(listed.items()):
        plan = known.get(order_id)
        if plan is not None and plan.final is not None:
            view = plan.final
        what = _describe(plan, view)
        verdict.orders += 1
        verdict.statuses[view["status"]] += 1
        if view.get("failure_reason"):
            verdict.failure_reasons[view["failure_reason"]] += 1
        if view["status"] not in TERMINAL:
            verdict.problems.append(f"order {order_id} ({what}) never reached a terminal state")
        elif view["status"] == "NEEDS_ATTENTION":
            verdict.problems.append(f"order {order_id} ({what}) parked in NEEDS_ATTENTION")
        if plan is not None and plan.cancel_accepted and view["status"] != "CANCELLED":
            verdict.problems.append(
                f"order {order_id} ({what}): the API accepted its cancel, it ended"
                f" {view['status']}/{view.get('failure_reason')}"
            )
    verdict.problems += api.traffic.bad

    # Couriers: none bound to an order that has finished.
    answer = await api.call("GET", "/v1/couriers", params={"limit": 1000})
    assert answer is not None and answer.status == 200, answer
    for c in answer.body["items"]:
        order_id = c.get("current_order_id")
        if not c["courier_id"].startswith(stack.courier_prefix) or not order_id:
            continue
        view = listed.get(order_id) or await _view(api, order_id)
        if view is not None and view["status"] in TERMINAL:
            verdict.problems.append(
                f"courier {c['courier_id']} is still {c.get('assignment')} to order {order_id}"
                f" ({_describe(known.get(order_id), view)})"
            )

    names = set(listed) | set(skus) | ({hot} if hot else set())
    for check in ("stock", "money"):
        rc, out = await asyncio.to_thread(stack.tradeflow, "check", check)
        mine = relevant_lines(out, names)
        if mine and all("[hot_counter]" in line for line in mine):
            # A lost Redis may leave a flash-sale counter behind the database until the
            # inventory sweeper reconciles it (docs/inventory.md): judge after one sweep.
            verdict.notes.append(f"before a sweep: {mine}")
            await asyncio.sleep(float(stack.env["TRADEFLOW_SWEEP_INTERVAL_S"]) + 5)
            rc, out = await asyncio.to_thread(stack.tradeflow, "check", check)
            mine = relevant_lines(out, names)
        if rc not in (0, 1):
            verdict.problems.append(f"tradeflow check {check} could not run (exit {rc}): {out}")
        for line in mine:
            order = next((o for o in listed if o in line), None)
            extra = f" [{_describe(known.get(order), listed[order])}]" if order else ""
            verdict.problems.append(f"check {check}: {line}{extra}")
        verdict.checks[check] = (
            "OK"
            if rc == 0
            else ("FAILED on this round's orders" if mine else "OK for this round (others failed)")
        )


async def _view(api: Api, order_id: str) -> dict[str, Any] | None:
    answer = await api.call("GET", f"/v1/orders/{order_id}")
    return dict(answer.body) if answer is not None and answer.status == 200 else None


def _describe(plan: PlannedOrder | None, view: dict[str, Any]) -> str:
    state = f"{view['status']}/{view.get('failure_reason')}"
    if plan is None:
        return f"{state}, placed by a client that gave up or by the fault"
    flags = [plan.token, f"cancel={plan.cancel}", f"refund={plan.refund}"]
    if plan.duplicate:
        flags.append("duplicate")
    timeline = ">".join(t["status"] for t in view.get("timeline", []))
    return f"{state}, {' '.join(flags)}, timeline {timeline}"
