"""Versioned deploys (issue 10 part 5) on a stack from `tradeflow up` with Worker Deployment
Versioning on, against the bundled Temporal dev server: a rollout to v2 while an order waits on
v1, a worker drained by SIGTERM with activities in flight, and a rollback to v1 — with the
`temporal worker deployment` commands docs/operations.md gives."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType, VersioningBehavior
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from tests.integration.test_launcher import (
    ROOT,
    RunningStack,
    launched,
    launcher_env,
    launcher_redis_url,
)

pytestmark = pytest.mark.slow

TEMPORAL_CLI = Path(sys.executable).parent / "temporal"
GRACE_S = 8.0
ADDRESS = {"address": "1 Rollout Street", "lat": 31.2330, "lng": 121.4760}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningStack, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("deploys") / "data"
    redis_url = launcher_redis_url(fallback_db=13)
    env = launcher_env(
        data_dir,
        REDIS_URL=redis_url,
        TRADEFLOW_WORKER_VERSIONING="on",
        TRADEFLOW_BUILD_ID="v1",
        TRADEFLOW_WORKER_GRACE_S=str(GRACE_S),
    )
    with launched(env) as running:
        yield running, env


class WorkerProcess:
    """`python worker.py --build-id <id>` against the stack, as a deploy starts it."""

    def __init__(self, env: dict[str, str], build_id: str, log: Path) -> None:
        self.build_id, self.log = build_id, log
        self.env = {**env, "TRADEFLOW_PROMOTE_ON_START": "off", "TRADEFLOW_BUILD_ID": ""}
        fh = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py"), "--build-id", build_id],
            cwd=ROOT,
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        fh.close()

    @property
    def identity_prefix(self) -> str:
        return f"{self.proc.pid}@"

    def terminate(self, within_s: float) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(within_s)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def set_current(address: str, build_id: str, within_s: float = 60) -> None:
    """The operator's step: `temporal worker deployment set-current-version`."""
    argv = [str(TEMPORAL_CLI), "worker", "deployment", "set-current-version", "--address"]
    argv += [address, "--deployment-name", "tradeflow", "--build-id", build_id, "--yes"]
    deadline = time.monotonic() + within_s
    while True:  # a version exists once its workers have polled
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(1)


async def place(http: httpx.AsyncClient, token: str = "tok_ok") -> str:
    r = await http.post(
        "/v1/orders",
        json={
            "customer_id": f"c-{uuid.uuid4().hex[:6]}",
            "location_id": "main",
            "items": [{"sku": "SKU-2", "quantity": 1}],
            "delivery": ADDRESS,
            "payment": {"token": token},
        },
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code in (200, 201, 202), r.text
    return str(r.json()["order_id"])


async def wait_status(
    http: httpx.AsyncClient, order_id: str, wanted: str, within_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        view = (await http.get(f"/v1/orders/{order_id}")).json()
        if view["status"] == wanted:
            return dict(view)
        assert time.monotonic() < deadline, f"{order_id} is {view['status']}, not {wanted}"
        await asyncio.sleep(0.3)


async def pinned_build(client: Client, workflow_id: str) -> str:
    desc = await client.get_workflow_handle(workflow_id).describe()
    info = desc.raw_description.workflow_execution_info.versioning_info
    assert info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED, info
    return str(info.deployment_version.build_id)


async def task_builds(client: Client, workflow_id: str) -> list[str]:
    """Build id of each workflow task completion, in history order."""
    builds = []
    async for e in client.get_workflow_handle(workflow_id).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            builds.append(e.workflow_task_completed_event_attributes.deployment_version.build_id)
    return builds


async def authorize_in_flight(client: Client, order_id: str) -> bool:
    try:
        desc = await client.get_workflow_handle(f"order-{order_id}").describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return False  # the order has not started yet
        raise
    return any(
        a.activity_type.name == "authorize_payment" and a.state == 2  # STARTED
        for a in desc.raw_description.pending_activities
    )


async def authorize_attempts(client: Client, order_id: str) -> list[tuple[int, str, str]]:
    """(attempt, worker identity, outcome) of the order's authorize activity."""
    handle = client.get_workflow_handle(f"order-{order_id}")
    scheduled: set[int] = set()
    started: dict[int, tuple[int, str]] = {}
    out = []
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if e.activity_task_scheduled_event_attributes.activity_type.name == "authorize_payment":
                scheduled.add(e.event_id)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            if a.scheduled_event_id in scheduled:
                started[e.event_id] = (a.attempt, a.identity)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sid = e.activity_task_completed_event_attributes.started_event_id
            if sid in started:
                out.append((*started[sid], "completed"))
        elif e.event_type in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
        ):
            out.append((0, "", "failed or timed out"))
    return out


async def test_rollout_drain_and_rollback(
    stack: tuple[RunningStack, dict[str, str]], tmp_path: Path
) -> None:
    running, env = stack
    address = running.temporal_address
    client = await Client.connect(address)
    v2: WorkerProcess | None = None
    async with (
        httpx.AsyncClient(base_url=running.api_url, timeout=10) as http,
        httpx.AsyncClient(base_url=running.psp_url, timeout=10) as psp,
    ):
        try:
            # v1 is current (the first versioned worker promoted itself): order A waits on it.
            a = await place(http, token="tok_action_never")
            view_a = await wait_status(http, a, "AWAITING_PAYMENT", 60)
            assert await pinned_build(client, f"order-{a}") == "v1"

            # Rollout: v2 workers start beside v1, then v2 becomes current.
            v2 = WorkerProcess(env, "v2", tmp_path / "worker-v2.log")
            await asyncio.to_thread(set_current, address, "v2")
            b = await place(http)
            await wait_status(http, b, "DELIVERED", 120)
            assert await pinned_build(client, f"order-{b}") == "v2"
            assert set(await task_builds(client, f"order-{b}")) == {"v2"}

            # Drain: a slow PSP keeps authorizations in flight on v2 when it gets SIGTERM.
            (await psp.post("/v1/admin/faults", json={"latency_ms": 2000})).raise_for_status()
            drained = [await place(http) for _ in range(3)]
            deadline = time.monotonic() + 30
            while not all([await authorize_in_flight(client, o) for o in drained]):
                assert time.monotonic() < deadline, "authorizations never in flight together"
                await asyncio.sleep(0.1)
            first_v2 = v2.identity_prefix
            code, took = await asyncio.to_thread(v2.terminate, GRACE_S + 10)
            assert code == 0, v2.log.read_text()[-3000:]
            assert took < GRACE_S + 5, f"drain took {took:.1f}s"
            print(f"drain: SIGTERM to exit {code} in {took:.2f}s (grace {GRACE_S:.0f}s)")
            (await psp.post("/v1/admin/faults", json={"latency_ms": 0})).raise_for_status()
            for o in drained:
                # Finished on the draining worker, first attempt: nothing retried, nothing lost.
                attempts = await authorize_attempts(client, o)
                assert len(attempts) == 1 and attempts[0][0] == 1, (
                    attempts,
                    v2.log.read_text()[-3000:],
                )
                assert attempts[0][1].startswith(first_v2) and attempts[0][2] == "completed"
            v2 = WorkerProcess(env, "v2", tmp_path / "worker-v2b.log")  # the rest of them
            for o in drained:
                await wait_status(http, o, "DELIVERED", 120)
                assert await pinned_build(client, f"order-{o}") == "v2"

            # A, pinned to v1, completes on v1 although v2 is current.
            r = await psp.post(
                f"/v1/test/payment_intents/{view_a['payment']['payment_id']}/complete",
                json={"outcome": "succeeded"},
            )
            r.raise_for_status()
            await wait_status(http, a, "DELIVERED", 120)
            assert await pinned_build(client, f"order-{a}") == "v1"
            assert set(await task_builds(client, f"order-{a}")) == {"v1"}

            # Rollback: v1 current again; new orders run on v1.
            await asyncio.to_thread(set_current, address, "v1")
            c = await place(http)
            await wait_status(http, c, "DELIVERED", 120)
            assert await pinned_build(client, f"order-{c}") == "v1"
            code, _ = await asyncio.to_thread(v2.terminate, GRACE_S + 10)
            assert code == 0
        finally:
            if v2 is not None:
                v2.kill()
