"""Orders per second to PAID, against a same-shape null baseline on the same Temporal.

    .venv/bin/python -m bench.orders --orders 120 --concurrency 20 --rounds 3

Starts its own stack with ``tradeflow up`` (free ports, a throwaway data dir, no demo data, no
courier simulator), or uses the one at ``--api`` / ``--temporal-address``. First (unless
``--no-history``) it delivers one order, playing a courier it seeds through the admin API and
the courier events API, and counts the history events of the order workflow and its children
against the null shape's. After the warm-up, ``--serial`` orders go one at a time, interleaved
with as many null shapes one at a time (POST to PAID in the timeline vs start to close). Then
each round runs:

1. **baseline**: C starters start N workflows ``BenchNullOrder`` on the stack's Temporal
   server: the null shape of the path to PAID, 5 sequential no-op activities with a child
   workflow ``BenchNullPayment`` (one no-op activity) after the third. A worker process of
   its own serves them on its own task queue (``python -m bench.orders --serve-noop-worker``)
   with the settings of tradeflow's ``worker.py`` (sandboxed, 100 activity slots, bytecode
   written at start) on plain asyncio; each workflow counts when the server closes it.
   ``--worker-processes N``: N such processes, and N ``worker.py`` in the started stack
   (``TRADEFLOW_WORKER_PROCESSES``), their CPU summed as "worker";
2. **tradeflow**: ``tradeflow load`` places N orders through the API, C at a time; each order
   counts when its timeline says ``PAID`` (record, reserve stock, payment child workflow that
   authorizes at the PSP simulator, confirm stock, record).

Both are open loop (everything is submitted as fast as C submitters can, then the run waits for
the last one), timed from the first submission to the server-side event, so the ratios compare
like with like. Each phase starts once the machine has been nearly idle for a few seconds (the
previous phase's tail, or other work on the machine, would otherwise land in it), and every
other round runs the two sides the other way round. Values are medians over ``--rounds``; a
ratio is the median of the per-round ratios. Printed: one JSON line per figure,
``{"name", "value", "unit", "ratio_to_baseline"}``; progress goes to stderr.

While orders wait for a courier after PAID they must not load the machine: the stack this
starts has no couriers and ``TRADEFLOW_OFFER_TIMEOUT_S=3600``, so each order's dispatch makes
one courier search and then sleeps on a timer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

# Imported lazily, inside functions: this module holds a workflow, and the sandbox re-imports
# a workflow's module for every run; the baseline must not pay for httpx or the API client.

READY_LINE = re.compile(r"^tradeflow ready: api=(http://\S+) ui=(http://\S+)$")
READY_TIMEOUT_S = 180.0
QUIET_WAIT_S = 120.0
"""How long a phase waits for a quiet machine before it measures anyway (``--quiet-wait-s``)."""
_quiet_wait_s = [QUIET_WAIT_S]
"""This run's value of it (set by ``main``)."""


# -- the baseline workflow ----------------------------------------------------------------


@dataclass(frozen=True)
class NoopInput:
    n: int


@dataclass(frozen=True)
class NoopOutput:
    n: int


NULL_PARENT_STEPS_BEFORE_CHILD = 3
NULL_PARENT_STEPS_AFTER_CHILD = 2
"""The null shape: as many activities as tradeflow's path to PAID runs in the order workflow
(5: record, price, reserve before the payment; confirm, record after it), sequential, with the
payment's child workflow (one activity, the PSP call) between them."""

ACTIVITY_TIMEOUT = timedelta(seconds=30)


@activity.defn(name="bench_noop")
async def noop(inp: NoopInput) -> NoopOutput:
    return NoopOutput(inp.n)


@workflow.defn(name="BenchNullPayment")
class NullPaymentWorkflow:
    """The payment child of the null shape: one no-op activity."""

    @workflow.run
    async def run(self, inp: NoopInput) -> NoopOutput:
        return await workflow.execute_activity(noop, inp, start_to_close_timeout=ACTIVITY_TIMEOUT)


@workflow.defn(name="BenchNullOrder")
class NullOrderWorkflow:
    """The null shape of the path to PAID: 5 sequential no-op activities with a child workflow
    of one no-op activity after the third."""

    @workflow.run
    async def run(self, inp: NoopInput) -> NoopOutput:
        for _ in range(NULL_PARENT_STEPS_BEFORE_CHILD):
            await workflow.execute_activity(noop, inp, start_to_close_timeout=ACTIVITY_TIMEOUT)
        await workflow.execute_child_workflow(
            NullPaymentWorkflow.run, inp, id=f"{workflow.info().workflow_id}-payment"
        )
        for _ in range(NULL_PARENT_STEPS_AFTER_CHILD):
            await workflow.execute_activity(noop, inp, start_to_close_timeout=ACTIVITY_TIMEOUT)
        return NoopOutput(inp.n)


@dataclass
class Figures:
    """One run of either side, in the same shape."""

    submitted_per_s: float
    completed_per_s: float
    submit_latencies_s: list[float] = field(repr=False)
    complete_latencies_s: list[float] = field(repr=False)
    complete: int
    n: int
    cpu_s: dict[str, float] | None = None
    """CPU seconds each server process spent on this run, through to the machine being quiet
    again (so an order's dispatch start counts too); None when the pids are not known."""


async def run_baseline(
    address: str,
    namespace: str,
    task_queue: str,
    *,
    n: int,
    concurrency: int,
    report: Callable[[str], None],
) -> Figures:
    """Start ``n`` null shapes (BenchNullOrder) from ``concurrency`` starters; wait until all closed."""
    from temporalio.client import Client, WorkflowHandle

    client = await Client.connect(address, namespace=namespace)
    run = uuid.uuid4().hex[:8]
    handles: list[tuple[float, WorkflowHandle[Any, Any]]] = []
    submit_latencies: list[float] = []
    next_n = 0

    async def starter() -> None:
        nonlocal next_n
        while next_n < n:
            i = next_n
            next_n += 1
            sent = time.time()
            t0 = time.perf_counter()
            handle = await client.start_workflow(
                NullOrderWorkflow.run,
                NoopInput(i),
                id=f"bench-null-{run}-{i}",
                task_queue=task_queue,
            )
            submit_latencies.append(time.perf_counter() - t0)
            handles.append((sent, handle))

    started = time.time()
    await asyncio.gather(*(starter() for _ in range(concurrency)))
    submit_s = time.time() - started
    await asyncio.gather(*(h.result() for _, h in handles))
    # Completion as the server recorded it, like the PAID entry of an order's timeline.
    closes = await asyncio.gather(*(h.describe() for _, h in handles))
    complete_latencies = []
    last = started
    for (sent, _), desc in zip(handles, closes, strict=True):
        assert desc.close_time is not None
        closed = desc.close_time.timestamp()
        complete_latencies.append(max(closed - sent, 0.0))
        last = max(last, closed)
    report(f"baseline: {n} workflows in {last - started:.1f}s")
    return Figures(
        submitted_per_s=n / submit_s,
        completed_per_s=n / (last - started),
        submit_latencies_s=submit_latencies,
        complete_latencies_s=complete_latencies,
        complete=n,
        n=n,
    )


async def serve_noop_worker(address: str, namespace: str, task_queue: str) -> None:
    """The baseline's worker, in a process of its own like tradeflow's ``worker.py``, with its
    settings (``worker.build_workers``): sandboxed workflows, 100 activity slots, the workflow
    module's bytecode written at start (``infra.bytecode``)."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    from infra.bytecode import ensure_bytecode

    # As worker.py does for tradeflow's workflows: this module's bytecode, written once.
    ensure_bytecode([NullOrderWorkflow, NullPaymentWorkflow])
    client = await Client.connect(address, namespace=namespace)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[NullOrderWorkflow, NullPaymentWorkflow],
        activities=[noop],
        max_concurrent_activities=100,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(worker.run())
    print("noop worker ready", flush=True)
    await stop.wait()
    await worker.shutdown()
    await running


@contextmanager
def noop_worker(address: str, namespace: str, task_queue: str) -> Iterator[int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.orders",
            "--serve-noop-worker",
            task_queue,
            "--temporal-address",
            address,
            "--namespace",
            namespace,
        ],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "noop worker ready":
            raise SystemExit(f"the baseline worker did not start (exit {process.wait()})")
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_orders(
    api_url: str,
    admin_token: str,
    *,
    n: int,
    concurrency: int,
    report: Callable[[str], None],
) -> Figures:
    from cli.load import LoadConfig, run_load

    config = LoadConfig(
        api_url=api_url,
        orders=n,
        concurrency=concurrency,
        admin_token=admin_token,
        seed=True,
        couriers=0,
        timeout_s=600,
    )
    result = await run_load(config, report=lambda line: report(f"tradeflow: {line}"))
    if not result.ok:
        report(f"tradeflow: not every order reached PAID: {result.summary()}")
    return Figures(
        submitted_per_s=result.accepted_per_s,
        completed_per_s=result.paid_per_s,
        submit_latencies_s=result.checkout_latencies_s,
        complete_latencies_s=result.paid_latencies_s,
        complete=result.paid,
        n=n,
    )


async def serial_latencies(
    stack: Stack, task_queue: str, *, n: int, report: Callable[[str], None]
) -> tuple[list[float], list[float]]:
    """One at a time, ``n`` times each, interleaved (what loads the machine loads both): a null
    shape from ``start_workflow`` to its close, and one order from ``POST /v1/orders`` to the
    PAID entry of its timeline, nothing else in flight."""
    from temporalio.client import Client

    from cli.load import LoadConfig, run_load

    client = await Client.connect(stack.temporal_address, namespace=stack.namespace)
    run = uuid.uuid4().hex[:8]
    null: list[float] = []
    orders: list[float] = []
    for i in range(n):
        sent = time.time()
        handle = await client.start_workflow(
            NullOrderWorkflow.run,
            NoopInput(i),
            id=f"bench-null-serial-{run}-{i}",
            task_queue=task_queue,
        )
        await handle.result()
        desc = await handle.describe()
        assert desc.close_time is not None
        null.append(max(desc.close_time.timestamp() - sent, 0.0))
        config = LoadConfig(
            api_url=stack.api_url,
            orders=1,
            concurrency=1,
            admin_token=stack.admin_token,
            seed=True,  # its unit of stock (the rounds use up what they seed)
            couriers=0,
            timeout_s=120,
            poll_interval_s=0.05,
        )
        result = await run_load(config)
        if not result.ok:
            raise SystemExit(f"serial order {i + 1} did not reach PAID: {result.summary()}")
        orders.extend(result.paid_latencies_s)
    report(
        f"serial: null shape p50 {median(null) * 1000:.0f} ms, "
        f"order to PAID p50 {median(orders) * 1000:.0f} ms ({n} each)"
    )
    return null, orders


async def history_counts(client: Any, workflow_id: str) -> dict[str, Any]:
    """Events in ``workflow_id``'s history and in its child workflows' (recursively), and the
    activities it ran by type: regular ones (``ActivityTaskScheduled``) and local ones (the
    ``core_local_activity`` marker, one per completed local activity), as ``local:<type>``."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    activities: dict[str, int] = {}
    children: list[str] = []
    for event in history.events:
        name = ""
        if event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.HasField("marker_recorded_event_attributes"):
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity" and "data" in marker.details:
                data = json.loads(marker.details["data"].payloads[0].data)
                name = f"local:{data['activity_type']}"
        if name:
            activities[name] = activities.get(name, 0) + 1
        if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
            children.append(
                event.start_child_workflow_execution_initiated_event_attributes.workflow_id
            )
    out: dict[str, Any] = {
        "workflow_id": workflow_id,
        "events": len(history.events),
        "activities": activities,
        "children": [await history_counts(client, c) for c in children],
    }
    out["total_events"] = out["events"] + sum(c["total_events"] for c in out["children"])
    return out


async def delivered_order_history(
    stack: Stack, task_queue: str, *, report: Callable[[str], None], timeout_s: float = 120.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """History events of one delivered order (order workflow and its children: payment,
    delivery) and of one null shape (workflow and child).

    The bench stack has no couriers: this seeds one (``k-bench-<run>``) next to the store
    through the admin API, places one order, and plays the courier through the courier events
    API (accepted, picked_up, delivered), then takes the courier off duty again. Run before the
    rounds, while no other order waits for a courier."""
    import httpx
    from temporalio.client import Client

    from cli.load import MAIN_LAT, MAIN_LNG, LoadConfig, customer_auth, seed
    from domain.names import order_workflow_id

    run = uuid.uuid4().hex[:8]
    courier = f"k-bench-{run}"
    customer = f"bench-history-{run}"
    admin = {"X-Admin-Token": stack.admin_token}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        await seed(
            http,
            LoadConfig(
                api_url=stack.api_url, orders=1, concurrency=1, admin_token=stack.admin_token
            ),
        )
        spot = {"lat": MAIN_LAT, "lng": MAIN_LNG}
        r = await http.put(
            f"/v1/admin/couriers/{courier}", json={**spot, "available": True}, headers=admin
        )
        r.raise_for_status()
        r = await http.post(f"/v1/admin/couriers/{courier}/tokens", headers=admin)
        r.raise_for_status()
        courier_auth = {"Authorization": f"Bearer {r.json()['token']}"}
        body = {
            "customer_id": customer,
            "location_id": "main",
            "items": [{"sku": "BENCH-1", "quantity": 1}],
            "delivery": {"address": "1 Bench St", **spot},
            "payment": {"token": "tok_ok"},
        }
        r = await http.post(
            "/v1/orders",
            json=body,
            headers={"Idempotency-Key": customer, **customer_auth(customer)},
        )
        r.raise_for_status()
        order_id = r.json()["order_id"]

        async def until(done: Callable[[dict[str, Any]], bool], what: str) -> None:
            deadline = time.monotonic() + timeout_s
            while True:
                r = await http.get(f"/v1/orders/{order_id}", headers=customer_auth(customer))
                if r.status_code == 200 and done(r.json()):
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"order {order_id}: no {what} in {timeout_s:.0f}s: {r.text}")
                await asyncio.sleep(0.2)

        await until(lambda o: (o.get("delivery") or {}).get("offered_to") == courier, "offer")
        steps = (
            ("accepted", lambda o: o["delivery"]["status"] == "ASSIGNED"),
            ("picked_up", lambda o: o["delivery"]["status"] == "PICKED_UP"),
            ("delivered", lambda o: o["status"] == "DELIVERED"),
        )
        for event, done in steps:
            r = await http.post(
                f"/v1/deliveries/{order_id}/events",
                json={"courier_id": courier, "type": event},
                headers=courier_auth,
            )
            if r.status_code != 202:
                raise SystemExit(f"courier event {event}: HTTP {r.status_code} {r.text[:300]}")
            await until(done, event)
        await http.put(
            f"/v1/admin/couriers/{courier}", json={**spot, "available": False}, headers=admin
        )
    client = await Client.connect(stack.temporal_address, namespace=stack.namespace)
    # The workflows' last tasks after DELIVERED (read model, notification) land in a moment.
    await asyncio.sleep(2)
    order = await history_counts(client, order_workflow_id(order_id))
    null_id = f"bench-null-history-{run}"
    await client.execute_workflow(
        NullOrderWorkflow.run, NoopInput(0), id=null_id, task_queue=task_queue
    )
    null = await history_counts(client, null_id)
    report(
        f"history: delivered order {order_id} {order['total_events']} events "
        f"(order {order['events']}, children "
        + ", ".join(f"{c['workflow_id']} {c['events']}" for c in order["children"])
        + f"; activities {order['activities']}); null shape {null['total_events']} events"
    )
    return null, order


# -- the stack ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    api_url: str
    admin_token: str
    temporal_address: str
    namespace: str = "default"
    redis_url: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    """The stack's server processes (from ``pids.json``), when this benchmark started it."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def launched_stack(
    report: Callable[[str], None], keep: bool, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """``tradeflow up`` on free ports with a throwaway data dir; stopped (SIGTERM) after.
    ``extra_env`` adds to (or overrides) the stack's environment."""
    from infra.settings import Settings

    ours = set(Settings.variables().values())
    data_dir = Path(tempfile.mkdtemp(prefix="tradeflow-bench-"))
    env = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    temporal_address = f"127.0.0.1:{_free_port()}"
    env.update(
        TRADEFLOW_DATA_DIR=str(data_dir),
        TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_UI_PORT=str(_free_port()),
        API_PORT=str(_free_port()),
        PSP_PORT=str(_free_port()),
        REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0",
        TRADEFLOW_DEMO="off",
        TRADEFLOW_COURIER_SIMULATOR="off",
        TRADEFLOW_OFFER_TIMEOUT_S="3600",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    script = Path(sys.executable).parent / "tradeflow"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    report(f"starting the stack: tradeflow up (data dir {data_dir})")
    process = subprocess.Popen(
        [*argv, "up"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "webhook secret:" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("tradeflow up did not get ready:\n" + "\n".join(lines))
        match = next(m for m in map(READY_LINE.match, lines) if m)
        token = next(line.split()[2] for line in lines if "admin token:" in line)
        report(f"stack ready: api={match.group(1)} temporal={temporal_address}")
        children = json.loads((data_dir / "pids.json").read_text())["children"]
        yield Stack(
            api_url=match.group(1),
            admin_token=token,
            temporal_address=temporal_address,
            redis_url=env["REDIS_URL"],
            pids={name: int(info["pid"]) for name, info in children.items()},
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)
        if keep:
            report(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


# -- figures --------------------------------------------------------------------------------


def cpu_busy_fraction(interval_s: float = 1.0) -> float | None:
    """Share of the machine's CPU time that was busy over ``interval_s`` (Linux only)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


async def quiesce(
    report: Callable[[str], None],
    *,
    busy_below: float = 0.25,
    quiet_s: int = 3,
    max_wait_s: float | None = None,
) -> None:
    """Wait until the machine has been nearly idle for ``quiet_s`` seconds in a row.

    Each phase must start on a quiet machine: orders keep the worker busy for a few seconds
    after their PAID (dispatch starts), and that tail must not land in the next baseline."""
    deadline = time.monotonic() + (_quiet_wait_s[0] if max_wait_s is None else max_wait_s)
    quiet = 0
    busy: float | None = None
    while quiet < quiet_s:
        busy = await asyncio.to_thread(cpu_busy_fraction, 1.0)
        if busy is None:  # not Linux: a fixed pause instead
            await asyncio.sleep(5)
            return
        quiet = quiet + 1 if busy < busy_below else 0
        if time.monotonic() > deadline:
            report(f"warning: the machine is still {busy:.0%} busy; measuring anyway")
            return


def cpu_seconds(pids: dict[str, int]) -> dict[str, float] | None:
    """User + system CPU seconds of each process so far (Linux ``/proc``); None elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        for name, pid in pids.items():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    return out


def load_average() -> str:
    """The machine's load average: other work on it skews both sides of the comparison."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def figures_lines(baselines: list[Figures], orders: list[Figures]) -> list[dict[str, Any]]:
    from cli.load import percentile

    def med(runs: list[Figures], get: Callable[[Figures], float]) -> float:
        return median([get(r) for r in runs])

    def pct(p: float) -> Callable[[Figures], float]:
        return lambda r: percentile(r.submit_latencies_s, p) * 1000

    def pct_done(p: float) -> Callable[[Figures], float]:
        return lambda r: percentile(r.complete_latencies_s, p) * 1000

    pairs: list[tuple[str, str, str, Callable[[Figures], float]]] = [
        ("started_per_s", "orders_accepted_per_s", "per_s", lambda r: r.submitted_per_s),
        ("completed_per_s", "orders_paid_per_s", "per_s", lambda r: r.completed_per_s),
        ("start_latency_p50_ms", "checkout_latency_p50_ms", "ms", pct(50)),
        ("start_latency_p95_ms", "checkout_latency_p95_ms", "ms", pct(95)),
        ("time_to_complete_p50_ms", "time_to_paid_p50_ms", "ms", pct_done(50)),
        ("time_to_complete_p95_ms", "time_to_paid_p95_ms", "ms", pct_done(95)),
    ]
    if all(f.cpu_s for f in baselines + orders):
        pairs += [
            ("cpu_ms", "order_cpu_ms", "cpu_ms", cpu_ms),
            ("temporal_cpu_ms", "order_temporal_cpu_ms", "cpu_ms", lambda f: cpu_ms(f, "temporal")),
            ("worker_cpu_ms", "order_worker_cpu_ms", "cpu_ms", lambda f: cpu_ms(f, "worker")),
        ]
    out: list[dict[str, Any]] = []
    for base_name, name, unit, get in pairs:
        base = med(baselines, get)
        value = med(orders, get)
        # The median of per-round ratios: what loads the machine during a round loads both
        # of its sides.
        ratios = [get(o) / get(b) for b, o in zip(baselines, orders, strict=True) if get(b)]
        out.append(
            {
                "name": f"baseline_null_shape_{base_name}",
                "value": round(base, 2),
                "unit": {"per_s": "workflows/s", "cpu_ms": "CPU ms/workflow"}.get(unit, unit),
                "ratio_to_baseline": 1.0,
            }
        )
        out.append(
            {
                "name": name,
                "value": round(value, 2),
                "unit": {"per_s": "orders/s", "cpu_ms": "CPU ms/order"}.get(unit, unit),
                "ratio_to_baseline": round(median(ratios), 3) if ratios else None,
            }
        )
    return out


def _line(name: str, value: float, unit: str, ratio: float | None) -> dict[str, Any]:
    return {
        "name": name,
        "value": round(value, 2),
        "unit": unit,
        "ratio_to_baseline": None if ratio is None else round(ratio, 3),
    }


def serial_lines(null: list[float], orders: list[float]) -> list[dict[str, Any]]:
    """One order alone, POST to PAID, against the null shape's serial end-to-end (p50, p95)."""
    from cli.load import percentile

    out = []
    for p in (50, 95):
        base = percentile(null, p) * 1000
        value = percentile(orders, p) * 1000
        out.append(_line(f"baseline_null_shape_serial_p{p}_ms", base, "ms", 1.0))
        out.append(_line(f"order_alone_to_paid_p{p}_ms", value, "ms", value / base))
    return out


def history_lines(null: dict[str, Any], order: dict[str, Any]) -> list[dict[str, Any]]:
    """History events of a delivered order (with its child workflows) against the null
    shape's (which stops at its PAID: it has no delivery)."""
    base = null["total_events"]
    out = [
        _line("baseline_null_shape_history_events", base, "events/workflow", 1.0),
        _line(
            "delivered_order_history_events",
            order["total_events"],
            "events/order",
            order["total_events"] / base,
        ),
        _line("delivered_order_workflow_history_events", order["events"], "events", None),
    ]
    for child in order["children"]:
        kind = child["workflow_id"].split("-", 1)[0]
        out.append(
            _line(f"delivered_order_{kind}_child_history_events", child["events"], "events", None)
        )
    for name, count in sorted(order["activities"].items()):
        out.append(_line(f"delivered_order_activity_{name.replace(':', '_')}", count, "run", None))
    return out


async def measure(
    stack: Stack,
    task_queue: str,
    worker_pids: list[int],
    *,
    n: int,
    concurrency: int,
    rounds: int,
    warmup: int,
    serial: int = 0,
    report: Callable[[str], None],
) -> tuple[list[Figures], list[Figures], tuple[list[float], list[float]]]:
    # The processes each side keeps busy: Temporal serves both; the baseline's worker is ours.
    from cli.up import worker_names

    server = {k: v for k, v in stack.pids.items() if k == "temporal"}
    sides = {
        "baseline": {
            **server,
            **dict(zip(worker_names(len(worker_pids)), worker_pids, strict=True)),
        }
        if server
        else {},
        "tradeflow": dict(stack.pids),
    }

    async def phase(side: str, count: int) -> Figures:
        pids = sides[side]
        before = cpu_seconds(pids) if pids else None
        if side == "baseline":
            figures = await run_baseline(
                stack.temporal_address,
                stack.namespace,
                task_queue,
                n=count,
                concurrency=concurrency,
                report=report,
            )
        else:
            figures = await run_orders(
                stack.api_url, stack.admin_token, n=count, concurrency=concurrency, report=report
            )
        await quiesce(report)  # the work the run set off, to its end
        after = cpu_seconds(pids) if pids else None
        if before is not None and after is not None:
            figures.cpu_s = {}
            for k in before:  # worker-2, worker-3, ... count as "worker"
                group = "worker" if k.startswith("worker") else k
                figures.cpu_s[group] = figures.cpu_s.get(group, 0.0) + after[k] - before[k]
        return figures

    if warmup:
        report(f"warm-up: {warmup} workflows and {warmup} orders (not counted)")
        await phase("baseline", warmup)
        await phase("tradeflow", warmup)
    serial_figures: tuple[list[float], list[float]] = ([], [])
    if serial:
        await quiesce(report)
        report(f"serial: {serial} null shapes and {serial} orders, one at a time, interleaved")
        serial_figures = await serial_latencies(stack, task_queue, n=serial, report=report)
        await quiesce(report)
    baselines: list[Figures] = []
    orders: list[Figures] = []
    for r in range(1, rounds + 1):
        # Every other round the other way round, so neither side always runs first.
        for side in ("baseline", "tradeflow") if r % 2 else ("tradeflow", "baseline"):
            what = "workflows" if side == "baseline" else "orders"
            report(f"round {r}/{rounds}: {side}, {n} {what} at concurrency {concurrency}")
            (baselines if side == "baseline" else orders).append(await phase(side, n))
        b, o = baselines[-1], orders[-1]
        report(
            f"round {r}/{rounds}: baseline {b.completed_per_s:.2f} workflows/s completed, "
            f"tradeflow {o.completed_per_s:.2f} orders/s to PAID "
            f"(ratio {o.completed_per_s / b.completed_per_s:.3f})"
            + (
                f"; CPU ms per item {cpu_ms(b):.1f} vs {cpu_ms(o):.1f} "
                f"(ratio {cpu_ms(o) / cpu_ms(b):.2f})"
                if b.cpu_s and o.cpu_s
                else ""
            )
            + f"; {load_average()}"
        )
    return baselines, orders, serial_figures


def cpu_ms(f: Figures, only: str | None = None) -> float:
    """CPU milliseconds per workflow / order, of every server process or of ``only``."""
    assert f.cpu_s is not None
    spent = f.cpu_s.get(only, 0.0) if only else sum(f.cpu_s.values())
    return spent * 1000 / f.n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.orders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--orders", "-n", type=int, default=200, help="per round [200]")
    parser.add_argument("--concurrency", "-c", type=int, default=20, help="submitters [20]")
    parser.add_argument("--rounds", type=int, default=1, help="baseline + tradeflow rounds [1]")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted runs first [20]")
    parser.add_argument("--api", help="use the stack at this API URL instead of starting one")
    parser.add_argument("--admin-token", help="with --api [TRADEFLOW_ADMIN_TOKEN]")
    parser.add_argument(
        "--temporal-address", help="with --api [TEMPORAL_ADDRESS, else 127.0.0.1:7233]"
    )
    parser.add_argument("--namespace", default=os.environ.get("TEMPORAL_NAMESPACE", "default"))
    parser.add_argument(
        "--serial", type=int, default=15, help="orders (and null shapes) one at a time [15]"
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="skip the delivered order's history count (it seeds a courier)",
    )
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=QUIET_WAIT_S,
        help=f"longest wait for a quiet machine before each phase [{QUIET_WAIT_S:.0f}]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the started stack's data dir")
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        choices=range(1, 9),
        metavar="N",
        help="worker processes on each side: the stack's worker.py (TRADEFLOW_WORKER_PROCESSES) "
        "and the baseline's null-shape workers [1]",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the started stack's DATABASE_URL (an empty PostgreSQL database, say) [its SQLite]",
    )
    parser.add_argument("--serve-noop-worker", metavar="TASK_QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop_worker:
        address = args.temporal_address or os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233")
        asyncio.run(serve_noop_worker(address, args.namespace, args.serve_noop_worker))
        # Skip interpreter finalisation: the SDK's core threads may still be winding down,
        # and Python can abort (PyGILState_Release) if they touch it while it finalises.
        sys.stdout.flush()
        os._exit(0)

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    _quiet_wait_s[0] = args.quiet_wait_s
    report(
        f"bench.orders: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, {load_average()}"
    )

    extra: list[dict[str, Any]] = []

    async def both(stack: Stack, task_queue: str, worker_pids: list[int]) -> Any:
        if not args.no_history:
            null, order = await delivered_order_history(stack, task_queue, report=report)
            extra.extend(history_lines(null, order))
        baselines, orders, (null_serial, order_serial) = await measure(
            stack,
            task_queue,
            worker_pids,
            n=args.orders,
            concurrency=args.concurrency,
            rounds=args.rounds,
            warmup=args.warmup,
            serial=args.serial,
            report=report,
        )
        if null_serial and order_serial:
            extra.extend(serial_lines(null_serial, order_serial))
        return baselines, orders

    def go(stack: Stack) -> tuple[list[Figures], list[Figures]]:
        task_queue = f"bench-null-{uuid.uuid4().hex[:8]}"
        with ExitStack() as workers:
            worker_pids = [
                workers.enter_context(
                    noop_worker(stack.temporal_address, stack.namespace, task_queue)
                )
                for _ in range(args.worker_processes)
            ]
            result: tuple[list[Figures], list[Figures]] = asyncio.run(
                both(stack, task_queue, worker_pids)
            )
            return result

    if args.api:
        from cli.load import default_admin_token

        token = args.admin_token or default_admin_token()
        if not token:
            parser.error("--api needs --admin-token (or TRADEFLOW_ADMIN_TOKEN)")
        stack = Stack(
            api_url=args.api.rstrip("/"),
            admin_token=token,
            temporal_address=args.temporal_address
            or os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            namespace=args.namespace,
        )
        baselines, orders = go(stack)
    else:
        processes = {"TRADEFLOW_WORKER_PROCESSES": str(args.worker_processes)}
        if args.database_url:
            processes["DATABASE_URL"] = args.database_url
        with launched_stack(report, keep=args.keep, extra_env=processes) as stack:
            baselines, orders = go(stack)

    report(f"done: {load_average()}")
    for side, runs in (("baseline, per workflow", baselines), ("tradeflow, per order", orders)):
        if runs and all(f.cpu_s for f in runs):
            names = sorted(runs[0].cpu_s or {})
            split = ", ".join(f"{k} {median([cpu_ms(f, k) for f in runs]):.1f}" for k in names)
            report(f"CPU ms {side}: {split}")
    lines = figures_lines(baselines, orders) if baselines and orders else []
    for line in lines + extra:
        print(json.dumps(line), flush=True)
    incomplete = [f for f in orders if f.complete < f.n]
    if incomplete:
        report(f"warning: {len(incomplete)} round(s) had orders that did not reach PAID")
        return 1
    return 0


if __name__ == "__main__":
    # Through the importable module, so that the workflow's module is bench.orders (which the
    # sandbox can re-import), not __main__.
    from bench.orders import main as bench_main

    raise SystemExit(bench_main())
