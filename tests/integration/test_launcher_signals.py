"""`tradeflow up` under the signals an operator's tools really send: bursts of SIGTERM to the
whole process group (GNU make forwards one, a supervisor sends another), SIGINT and SIGTERM
back to back (Ctrl-C, then a kill), and SIGKILL, after which nothing it started may linger.

Each test starts its own stack (demo data and couriers off, to start quickly) and checks every
child recorded in ``pids.json`` by process group."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_launcher import (
    STOP_TIMEOUT_S,
    RunningStack,
    free_port,
    launched,
    launcher_env,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PDEATHSIG"),
]

ORPHAN_TIMEOUT_S = 5.0
"""How long a child may outlive a SIGKILLed launcher."""
STREAM_S = 3.0
"""How long signals keep coming (the launcher needs a second or two to stop its children)."""


def quick_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    test_redis = os.environ.get("TRADEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    options = {
        "REDIS_URL": test_redis,
        "TRADEFLOW_DEMO": "off",
        "TRADEFLOW_COURIER_SIMULATOR": "off",
    }
    options.update(overrides)
    return launcher_env(data_dir, **options)


def stop_with_bursts(stack: RunningStack, signals: list[signal.Signals]) -> tuple[int, float]:
    """``signals`` to the launcher's whole process group, one after another as fast as the
    kernel takes them, for ``STREAM_S`` or until the launcher exits: the first starts the
    stop, the rest land while it handles the one before, while it stops its children, and
    after. Its exit code (-9: it hung and was killed) and how long it took."""
    pgid = os.getpgid(stack.process.pid)
    started = time.monotonic()
    sent = 0
    while stack.process.poll() is None and time.monotonic() - started < STREAM_S:
        try:
            os.killpg(pgid, signals[sent % len(signals)])
        except ProcessLookupError:
            break  # the launcher is gone
        sent += 1
        if sent % 64 == 0:
            time.sleep(0)  # let the launcher run on a loaded machine
    try:
        code = stack.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stack.process.kill()
        stack.process.wait()
        code = -9
    return code, time.monotonic() - started


def running_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run. An exited one whose new parent (init, once
    the launcher is gone) has not reaped it yet is a zombie: gone, though ``kill(0)`` still
    finds it."""
    running = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            running.append(int(entry.name))
    return running


def assert_every_child_gone(stack: RunningStack, within_s: float = 0.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        left = {n: p for n, p in stack.children.items() if running_in_group(p)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert not left, f"still running: {left}\n{stack.transcript()}"


def test_bursts_of_sigterm_to_the_whole_group_stop_the_launcher_and_every_child(
    tmp_path: Path,
) -> None:
    with launched(quick_env(tmp_path / "data")) as stack:
        code, took = stop_with_bursts(stack, [signal.SIGTERM])
        assert code == 0, f"hung or failed after {took:.1f}s\n{stack.transcript()}"
        assert took < STOP_TIMEOUT_S
        assert_every_child_gone(stack)
        assert sum("SIGTERM received; stopping" in line for line in stack.output) == 1
        assert not (tmp_path / "data" / "pids.json").exists()


def test_sigint_and_sigterm_back_to_back_stop_the_launcher_and_every_child(
    tmp_path: Path,
) -> None:
    with launched(quick_env(tmp_path / "data")) as stack:
        code, took = stop_with_bursts(stack, [signal.SIGINT, signal.SIGTERM])
        assert code == 0, f"hung or failed after {took:.1f}s\n{stack.transcript()}"
        assert_every_child_gone(stack)
        assert sum("received; stopping" in line for line in stack.output) == 1


def test_children_do_not_outlive_a_sigkilled_launcher(tmp_path: Path) -> None:
    overrides = {}
    if shutil.which("redis-server"):  # the launcher's own Redis must go too
        overrides["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    with launched(quick_env(tmp_path / "data", **overrides)) as stack:
        expected = {"temporal", "psp", "worker", "api"} | ({"redis"} if overrides else set())
        assert expected <= set(stack.children), stack.children
        stack.process.kill()
        stack.process.wait()
        assert_every_child_gone(stack, within_s=ORPHAN_TIMEOUT_S)
