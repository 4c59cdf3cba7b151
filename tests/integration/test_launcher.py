"""`tradeflow up` as an operator runs it: a subprocess on free ports with its own data dir.

``running_stack`` (module-scoped) is the whole stack started by the launcher with the courier
simulator on, as ``make up`` runs it. ``launched`` and ``launcher_env`` start other stacks:
``test_end_to_end.py`` uses them for its own (simulator off, for the README story).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from domain.names import SEARCH_ATTRIBUTE_TYPES
from infra.settings import Settings
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
READY_LINE = re.compile(r"^tradeflow ready: api=(http://\S+) ui=(http://\S+)$")
CONFIG_VARIABLES = set(Settings.variables().values())


def launcher_redis_url(fallback_db: int = 9) -> str:
    """REDIS_URL for a launched stack: a free port, so that `tradeflow up` starts (and a test
    may kill) its own redis-server; without redis-server installed, a db of the shared one."""
    if shutil.which("redis-server"):
        return f"redis://127.0.0.1:{free_port()}/0"
    return f"redis://127.0.0.1:6379/{fallback_db}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class RunningStack:
    """A `tradeflow up` that printed its ready line."""

    api_url: str
    ui_url: str
    psp_url: str
    temporal_address: str
    admin_token: str
    webhook_secret: str
    data_dir: Path
    process: subprocess.Popen[str]
    output: list[str] = field(repr=False)
    children: dict[str, int] = field(repr=False)
    """Process name -> pid, from ``<data>/pids.json``."""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the launcher; its exit code (killed and -9 if it overstays ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9

    def transcript(self) -> str:
        logs = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            logs.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]))
        return "\n".join(["--- launcher", *self.output, *logs])


def launcher_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """The caller's environment without tradeflow's settings, plus free ports and ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in CONFIG_VARIABLES}
    env.update(
        TRADEFLOW_DATA_DIR=str(data_dir),
        TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        TEMPORAL_UI_PORT=str(free_port()),
        API_PORT=str(free_port()),
        PSP_PORT=str(free_port()),
        TRADEFLOW_COURIER_STEP_S="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def tradeflow_command() -> list[str]:
    script = Path(sys.executable).parent / "tradeflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


@contextmanager
def launched(env: dict[str, str]) -> Iterator[RunningStack]:
    """Start `tradeflow up`, wait for its ready line, yield, and make sure it is gone after."""
    data_dir = Path(env["TRADEFLOW_DATA_DIR"])
    process = subprocess.Popen(
        [*tradeflow_command(), "up"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a Ctrl-C on the test run must not reach it directly
    )
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            if READY_LINE.match(output[-1]):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            break
    stack = None
    try:
        if not ready.is_set():
            reason = (
                f"exited with code {process.returncode}"
                if process.poll() is not None
                else f"not ready within {READY_TIMEOUT_S:.0f}s"
            )
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-3000:]}"
                for p in sorted((data_dir / "logs").glob("*.log"))
            )
            pytest.fail(f"`tradeflow up` {reason}:\n" + "\n".join(output) + "\n" + logs)
        ready_match = next(m for m in map(READY_LINE.match, output) if m)
        # The rest of the banner (tokens, secret, auth, codec, ...) follows the ready line and
        # ends with the "stop:" line; tests read any of it, so wait for all of it.
        deadline = time.monotonic() + 10
        while not any(line.strip().startswith("stop:") for line in output):
            assert time.monotonic() < deadline, "\n".join(output)
            time.sleep(0.05)
        text = "\n".join(output)
        token = re.search(r"admin token:\s+(\S+)", text)
        secret = re.search(r"webhook secret:\s+(\S+)", text)
        assert token and secret, text
        pids = json.loads((data_dir / "pids.json").read_text())
        stack = RunningStack(
            api_url=ready_match.group(1),
            ui_url=ready_match.group(2),
            psp_url=f"http://127.0.0.1:{env['PSP_PORT']}",
            temporal_address=env["TEMPORAL_ADDRESS"],
            admin_token=token.group(1),
            webhook_secret=secret.group(1),
            data_dir=data_dir,
            process=process,
            output=output,
            children={name: info["pid"] for name, info in pids["children"].items()},
        )
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if stack is not None:  # whatever happened, leave no process of the stack behind
            for pid in stack.children.values():
                if group_alive(pid):
                    os.killpg(pid, signal.SIGKILL)
        reader.join(timeout=5)


@contextmanager
def outside_redis() -> Iterator[str]:
    """A redis-server the launcher did not start (so it must leave it running)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers("127.0.0.1", port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def registered_search_attributes(address: str) -> dict[str, str]:
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.client import Client

    async def fetch() -> dict[str, str]:
        client = await Client.connect(address)
        resp = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        return {
            name: IndexedValueType.Name(kind).removeprefix("INDEXED_VALUE_TYPE_").title()
            for name, kind in resp.custom_attributes.items()
        }

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The whole stack from `tradeflow up`: Temporal, Redis and every process started by the
    launcher on free ports, demo catalogue seeded, simulated couriers on, two worker
    processes (TRADEFLOW_WORKER_PROCESSES) serving the same task queues."""
    data_dir = tmp_path_factory.mktemp("stack") / "data"
    # A Redis of its own (started by the launcher on a free port) keeps hot-SKU counters and
    # other keys of earlier runs out of the way; without redis-server use db 9 of the local one.
    redis_url = launcher_redis_url()
    env = launcher_env(data_dir, REDIS_URL=redis_url, TRADEFLOW_WORKER_PROCESSES="2")
    with launched(env) as stack:
        yield stack


def test_up_prints_where_the_stack_answers_and_every_part_answers(
    running_stack: RunningStack,
) -> None:
    stack = running_stack
    ready = [line for line in stack.output if line.startswith("tradeflow ready:")]
    assert len(ready) == 1, stack.transcript()
    assert (stack.data_dir / "admin_token").read_text().strip() == stack.admin_token
    assert (stack.data_dir / "webhook_secret").read_text().strip() == stack.webhook_secret

    with httpx.Client(timeout=5) as http:
        assert http.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
        assert http.get(f"{stack.api_url}/readyz").status_code == 200
        assert http.get(f"{stack.psp_url}/healthz").status_code == 200
        assert http.get(stack.ui_url).status_code == 200, "Temporal web UI"

    apps = {"temporal", "redis", "psp", "worker", "worker-2", "api", "courier-sim"}
    assert apps <= set(stack.children)
    for name, pid in stack.children.items():
        assert alive(pid), f"{name} is not running\n{stack.transcript()}"
    for name in apps:
        assert (stack.data_dir / "logs" / f"{name}.log").exists(), name
    for worker in ("worker", "worker-2"):  # both poll: each logged that it serves
        deadline = time.monotonic() + 30
        log = stack.data_dir / "logs" / f"{worker}.log"
        while "worker serving orders, dispatch" not in log.read_text():
            assert time.monotonic() < deadline, f"{worker} never served\n{log.read_text()}"
            time.sleep(0.2)

    registered = registered_search_attributes(stack.temporal_address)
    for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
        assert registered.get(name) == kind, registered


def test_demo_catalogue_couriers_and_stock_are_seeded(running_stack: RunningStack) -> None:
    with httpx.Client(base_url=running_stack.api_url, timeout=5) as http:
        product = http.get("/v1/products/SKU-1")
        assert product.status_code == 200, product.text
        assert product.json()["price_cents"] == 1299
        assert any(p["hot"] for p in http.get("/v1/products").json()["items"])
        stock = http.get("/v1/inventory/SKU-1", params={"location_id": "main"}).json()
        assert stock["available"] + stock["reserved"] + stock["sold"] == 100
        ids = {c["courier_id"] for c in http.get("/v1/couriers").json()["items"]}
        assert {"k-1", "k-2", "k-3", "k-4", "k-5"} <= ids
    assert (running_stack.data_dir / ".seeded").exists()


def test_sigterm_stops_exactly_what_up_started_and_a_second_up_keeps_the_data(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with outside_redis() as redis_url:
        env = launcher_env(data_dir, REDIS_URL=redis_url, TRADEFLOW_COURIER_SIMULATOR="off")
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])

        with launched(env) as first:
            assert "redis" not in first.children, "a Redis that answers is used, not replaced"
            assert "courier-sim" not in first.children
            assert "temporal" in first.children
            started = time.monotonic()
            code = first.stop()
            assert code == 0, first.transcript()
            assert time.monotonic() - started < STOP_TIMEOUT_S
            for name, pid in first.children.items():
                assert not group_alive(pid), f"{name} (pid {pid}) survived the launcher"
            assert not (data_dir / "pids.json").exists()
            assert _answers("127.0.0.1", redis_port), "the outside Redis must keep running"
        assert (data_dir / "temporal.db").exists() and (data_dir / "tradeflow.db").exists()

        # Same data dir again: Temporal restarts on its file (search attributes passed again),
        # the secrets and the seeded catalogue stay.
        with launched(env) as second:
            assert second.admin_token == first.admin_token
            assert any("already seeded" in line for line in second.output), second.transcript()
            registered = registered_search_attributes(second.temporal_address)
            assert set(SEARCH_ATTRIBUTE_TYPES) <= set(registered)
            assert second.stop() == 0, second.transcript()
            for pid in second.children.values():
                assert not group_alive(pid)


def test_load_generator_places_orders_that_all_reach_paid(running_stack: RunningStack) -> None:
    """`tradeflow load` against the launcher's stack: its own SKU and customers, so the other
    tests' figures do not move."""
    done = subprocess.run(
        [
            *tradeflow_command(),
            "load",
            "--api",
            running_stack.api_url,
            f"--admin-token={running_stack.admin_token}",  # a token may begin with "-"
            "--seed",
            "--couriers",
            "0",
            "--sku",
            "LOAD-SMOKE",
            "--orders",
            "12",
            "--concurrency",
            "4",
            "--timeout-s",
            "60",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{running_stack.transcript()}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["accepted"] == result["paid"] == 12, result
    assert result["rejected"] == {} and result["failed"] == {} and result["unfinished"] == 0
    assert result["accepted_per_s"] > 0 and result["paid_per_s"] > 0
    assert 0 < result["checkout_p50_ms"] <= result["checkout_p95_ms"]
    assert "accepted 12/12" in done.stderr, "progress goes to stderr"
    with httpx.Client(base_url=running_stack.api_url, timeout=5) as http:
        stock = http.get("/v1/inventory/LOAD-SMOKE", params={"location_id": "main"}).json()
    assert stock["reserved"] + stock["sold"] == 12


def test_load_report_writes_json_and_png_plots_per_status(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    """`tradeflow load --report DIR`: load.json with every status the orders reached (counts,
    latency percentiles, series over time) and the two plots as real PNG files."""
    out = tmp_path / "report"
    done = subprocess.run(
        [
            *tradeflow_command(),
            "load",
            "--api",
            running_stack.api_url,
            f"--admin-token={running_stack.admin_token}",  # a token may begin with "-"
            "--seed",
            "--couriers",
            "0",
            "--sku",
            "LOAD-REPORT",
            "--orders",
            "6",
            "--concurrency",
            "3",
            "--timeout-s",
            "60",
            "--json",
            "--report",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{running_stack.transcript()}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["paid"] == 6, summary
    assert "PAID" in done.stderr and "6/6" in done.stderr, "the progress bar goes to stderr"
    report = json.loads((out / "load.json").read_text())
    assert report["summary"] == summary
    assert report["orders"] == 6 and report["bucket_s"] >= 1
    statuses = report["statuses"]
    names = list(statuses)
    assert names[0] == "ACCEPTED" and names[-1] == "PAID", names
    for status in ("ACCEPTED", "PAID"):
        data = statuses[status]
        assert data["count"] == 6, (status, data)
        assert 0 < data["p50_ms"] <= data["p95_ms"] <= data["p99_ms"]
        assert sum(b["count"] for b in data["series"]) == 6
        times = [b["t_s"] for b in data["series"]]
        assert times == sorted(times) and times[0] == 0
    # PAID comes after the 202, for the same orders.
    assert statuses["PAID"]["p50_ms"] > statuses["ACCEPTED"]["p50_ms"]
    for name in report["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    assert {"throughput.png", "latency.png"} <= set(report["plots"])
