"""Free TCP ports for the processes a test starts.

``bind(("127.0.0.1", 0))`` asks the kernel for a free port, but the port is free again the moment
the probe socket closes, and a launcher that is handed several such ports binds them one at a time
over seconds: the kernel may give the same number to two callers in between (CI saw the Temporal
UI and a test's redis-server both handed 55935). So ports are drawn at random from a range below
the kernel's ephemeral range (no outgoing connection takes them either), each is probed, and a
process never hands out the same port twice.
"""

from __future__ import annotations

import os
import random
import socket
import threading

_LOW, _HIGH = 20000, 32000  # below /proc/sys/net/ipv4/ip_local_port_range (32768-60999 here)


def _slice_of_this_process(low: int, high: int) -> tuple[int, int]:
    """Under pytest-xdist, worker ``gwN`` of ``W`` draws from the N-th of W equal slices only:
    two workers probing the same free port at once would otherwise both be handed it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return low, high
    index, width = int(worker[2:]), (high - low) // max(int(count), 1)
    if index >= int(count) or width < 100:
        return low, high
    return low + index * width, low + (index + 1) * width


_LOW, _HIGH = _slice_of_this_process(_LOW, _HIGH)
_given: set[int] = set()
_lock = threading.Lock()
_rng = random.SystemRandom()


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, never returned before by this process."""
    with _lock:
        for _ in range(1000):
            port = _rng.randrange(_LOW, _HIGH)
            if port not in _given and _bindable(port, host):
                _given.add(port)
                return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH} after 1000 tries")
