"""Run a command that dies with the launcher: ``python -m cli.parent_guard <pid> -- <argv...>``.

The launcher starts every child in a session of its own (so a Ctrl-C reaches only the
launcher, which stops them in order), so nothing stops them when the launcher itself is
SIGKILLed. On Linux this sets ``PR_SET_PDEATHSIG`` and then ``exec``s the command: the kernel
sends it SIGKILL the moment its parent dies, however it dies, and the setting survives the
``exec``, so it works for the Temporal and Redis binaries as for the Python processes.

It is a separate step instead of ``subprocess.Popen(preexec_fn=...)`` because ``preexec_fn``
runs Python in the forked child, which can deadlock when the launcher has other threads (the
Temporal client's runtime threads live on after the first connection).

The signal is SIGKILL. A SIGKILLed launcher is already a crash, and nobody is left to
escalate: with SIGTERM, a worker in its graceful shutdown lives up to its 10 s timeout (3 s
measured with nothing in flight, its Temporal going down at the same moment) and a child
stuck in its SIGTERM handler would live on for good. Everything the children keep is built
to survive a kill (Temporal retries the activities of a killed worker, the databases commit
or roll back whole transactions, Redis is a cache), which is also what the chaos suite's
"SIGKILL a worker" fault relies on. An orderly stop is SIGTERM to the launcher.

The kernel sends the signal when the *thread* that forked the child ends, so the launcher
starts children from its main thread only. Elsewhere than Linux the command just runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
DEATH_SIGNAL = signal.SIGKILL


def guarded(parent_pid: int, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` under this guard."""
    return [sys.executable, "-m", "cli.parent_guard", str(parent_pid), "--", *argv]


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print(
            "usage: python -m cli.parent_guard <parent pid> -- <command> [args...]", file=sys.stderr
        )
        return 2
    parent, argv = int(args[0]), args[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            print(f"parent_guard: prctl failed: {os.strerror(err)}", file=sys.stderr)
            return 1
        if os.getppid() != parent:
            # The launcher died before the guard was set: nobody is left to die with.
            print(
                f"parent_guard: launcher {parent} is gone; not starting {argv[0]}", file=sys.stderr
            )
            return 1
    # Python ignores SIGPIPE and SIGXFSZ for itself; ``exec`` would pass that on, so give the
    # command the defaults, as ``subprocess`` does (``restore_signals``).
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
