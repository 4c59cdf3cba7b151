"""Process supervision for the launcher: start children in their own process groups, watch
them, stop exactly those groups, and remember their pids in case the launcher itself dies.

Every child gets its own session (``start_new_session=True``) so that a Ctrl-C in the terminal
reaches only the launcher, which then stops the children in an order it chooses, and so that
``killpg`` reaches a child's own helpers without touching anything the launcher did not start.
Each runs under ``cli.parent_guard``, so it also dies when the launcher is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from cli.parent_guard import guarded


def say(message: str) -> None:
    """Launcher output: one line on stdout, flushed (the caller may be reading a pipe)."""
    print(message, flush=True)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """``"127.0.0.1:7233"`` -> ``("127.0.0.1", 7233)``; ``"[::1]:7233"`` works too."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address.strip("[]"), default_port
    return host.strip("[]"), int(port)


def connect_host(bind_host: str) -> str:
    """Where to reach a server bound to ``bind_host`` from this machine."""
    return "127.0.0.1" if bind_host in {"", "0.0.0.0", "::", "[::]"} else bind_host


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as a request to stop, taken safely however many arrive.

    A Python signal handler runs in the main thread between two bytecodes of whatever it
    interrupted, and again inside itself when the next signal comes during it. One that takes
    a lock deadlocks when it lands while that lock is held (``threading.Event.set`` inside
    ``Event.wait``, or inside a first ``Event.set``); one that prints raises "reentrant call";
    a burst of them nests until ``RecursionError``. So the handler here is a C builtin, the
    ``__setitem__`` of the dict that records which signals came: it runs no bytecode, so
    nothing can interrupt it, and takes no lock. The wake-up comes from
    ``signal.set_wakeup_fd``: the C-level handler writes a byte to a pipe the moment a signal
    lands, and ``wait`` is a ``select`` on that pipe.

    Use it as a context manager, in the main thread. On leaving, these signals are ignored
    rather than handed back to their earlier handlers: the caller has stopped by then and only
    exits, and a default SIGTERM landing in that last moment would turn its clean exit into a
    kill.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._received: dict[int, FrameType | None] = {}
        self._read_fd = -1
        self._write_fd = -1
        self._previous_wakeup_fd = -1

    def __enter__(self) -> StopSignals:
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._received.__setitem__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # With the signals blocked, none can land between the C-level trip and the Python
        # handler's run: one tripped before the block runs (its handler is still ours) when
        # pthread_sigmask returns, and one that comes during the swap stays pending in the
        # kernel and is discarded at the unblock, since by then it is ignored. Swapped
        # unblocked, a signal that trips the C handler just before signal.signal() installs
        # SIG_IGN finds SIG_IGN when Python runs it, and CPython prints "Signal 2 ignored due
        # to race condition" to stderr.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            for sig in self.SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    @property
    def received(self) -> signal.Signals | None:
        """The stop signal handled first, or None. (Signals that land together are handled in
        the order of their numbers, so this may not be the one sent first.)"""
        came = list(self._received)  # one C call: a handler cannot run in the middle of it
        return signal.Signals(came[0]) if came else None

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, less when a stop signal comes; True once one came."""
        if self.received is None:
            try:
                select.select([self._read_fd], [], [], timeout_s)
            except InterruptedError:  # only where PEP 475 does not retry; a signal came
                pass
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass
        return self.received is not None


@dataclass
class Child:
    """One process the launcher started (or will start), with its own process group."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    """Restarts since the child last stayed up for a while (see ``Supervisor``)."""
    restart_at: float | None = None
    """When a crashed child is due to be started again."""
    stopping: bool = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"\n=== {stamp} tradeflow up: starting {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                guarded(os.getpid(), self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.restart_at = None
        self.stopping = False

    def poll(self) -> int | None:
        """The exit code once the main process has exited, else None."""
        return self.popen.poll() if self.popen else None

    def group_alive(self) -> bool:
        """True while any process of the child's group is left (the leader or its helpers)."""
        if self.popen is None:
            return False
        self.popen.poll()  # reap the leader if it has exited, so a zombie does not count
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_children(
    children: Sequence[Child], *, grace_s: float, report: Callable[[str], None] = say
) -> None:
    """SIGTERM every group in reverse start order, wait up to ``grace_s``, SIGKILL what is left."""
    running = [c for c in children if c.group_alive()]
    for child in reversed(running):
        child.stopping = True
        report(f"stopping {child.name} (pid {child.pid})")
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(c.group_alive() for c in running):
        time.sleep(0.1)
    for child in running:
        if child.group_alive():
            report(f"{child.name} did not stop within {grace_s:.0f}s; killing it")
            child.signal_group(signal.SIGKILL)
    for child in running:
        if child.popen is not None:
            try:
                child.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                report(f"{child.name} (pid {child.pid}) is still there after SIGKILL")


@dataclass
class PidFile:
    """``<data>/pids.json``: the launcher's pid and each child's pid and command line.

    Tests read it to check that every child is gone after shutdown, and the next launcher reads
    it to stop leftovers of a launcher that was killed without a chance to clean up.
    """

    path: Path
    launcher_pid: int = field(default_factory=os.getpid)

    def write(self, children: Iterable[Child]) -> None:
        data = {
            "launcher": self.launcher_pid,
            "children": {
                c.name: {"pid": c.pid, "started": process_start_time(c.pid), "argv": c.argv}
                for c in children
                if c.pid is not None
            },
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def stop_leftovers(self, *, report: Callable[[str], None] = say) -> None:
        """Stop children a previous launcher on this data dir left behind.

        Only a process whose pid and kernel start time both match the record is touched, so a
        recycled pid never gets a signal.
        """
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return
        leftovers: list[tuple[str, int]] = []
        for name, info in (data.get("children") or {}).items():
            pid = info.get("pid")
            started = info.get("started")
            if isinstance(pid, int) and started is not None and process_start_time(pid) == started:
                leftovers.append((name, pid))
        for name, pid in leftovers:
            report(f"stopping {name} (pid {pid}) left over from a previous run")
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 10
        while leftovers and time.monotonic() < deadline:
            leftovers = [(n, p) for n, p in leftovers if _group_exists(p)]
            time.sleep(0.1)
        for _name, pid in leftovers:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.remove()


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None without /proc."""
    if not sys.platform.startswith("linux"):
        return None  # no /proc: never guess
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are plain numbers.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19])  # field 22 overall
