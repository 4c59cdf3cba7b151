"""``StopSignals`` under a flood: a process that waits on it keeps running and stops cleanly
however many SIGTERMs land, wherever they land (inside a wait, inside a print, inside the
handling of the one before)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

WAITER = """
import sys, time
from cli.procs import StopSignals
with StopSignals() as stop:
    print("ready", flush=True)
    while not stop.wait(0.01):
        print("waiting", flush=True)  # signals land inside prints too
    print(f"stopping on {stop.received.name}", flush=True)
    until = time.monotonic() + 1.0
    while time.monotonic() < until:  # the flood goes on while it stops
        stop.wait(0.001)
        print("still stopping", flush=True)
print("stopped", flush=True)
"""


def test_a_flood_of_stop_signals_is_one_request_to_stop_and_never_a_hang() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    sent = 0
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < 1.5:
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        try:
            os.kill(proc.pid, sigs[sent % 3])
        except ProcessLookupError:
            break
        sent += 1
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    stopping = [line for line in lines if line.startswith("stopping on ")]
    assert lines[-1] == "stopped" and len(stopping) == 1, (out[-500:], err)
    assert "Traceback" not in err, err
    assert "race condition" not in err, err  # a signal that found SIG_IGN mid-swap
    assert sent > 1000
