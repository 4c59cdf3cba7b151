"""Workflow histories for the replay tests: record them off real runs, replay them.

    tradeflow history record [--out DIR] [--only NAME ...]
    tradeflow history replay [DIR]

``record`` runs every scenario on a throwaway Temporal dev server and writes each workflow's
history to ``DIR/<scenario>.<WorkflowType>.json``; it is dev tooling, like the scenarios it
runs (tests/support/record.py), so it runs from a source checkout only. ``replay`` replays
every ``*.json`` under DIR (``pinned/`` too) against today's workflow code and exits 1 if any
history no longer replays (a non-deterministic change). See docs/replay.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from cli.main import action_parsers, command_parser
from cli.procs import say
from worker import WORKFLOWS_BY_QUEUE

DEFAULT_DIR = Path("tests/replay/histories")
REPLAY_WORKFLOWS: list[type] = [w for ws in WORKFLOWS_BY_QUEUE.values() for w in ws]
"""Every workflow the workers run: a history of any of them replays."""
CHECKOUT = Path(__file__).resolve().parents[1]
"""The source checkout this package runs from (site-packages, once installed from a wheel)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    what = "record workflow histories off real runs, or replay them"
    actions = action_parsers(
        command_parser(subparsers, "history", help=what, doc=__doc__), "history"
    )
    record = actions.add_parser(
        "record", help="run every scenario on a throwaway dev server and keep the histories"
    )
    record.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_DIR,
        help="directory for the JSON histories (default: %(default)s)",
    )
    record.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="record only these scenarios (names as in tests/support/scenarios.py)",
    )
    replay = actions.add_parser("replay", help="replay recorded histories on today's code")
    replay.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=DEFAULT_DIR,
        help="directory of JSON histories (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    if args.history_command == "record":
        recorder = _recorder()
        if recorder is None:
            say(
                f"history record runs the scenarios of a source checkout (tests/support), "
                f"and {CHECKOUT} is not one"
            )
            return 2
        return int(asyncio.run(recorder.record(args.out, args.only)))
    return asyncio.run(replay(args.dir))


def _recorder() -> ModuleType | None:
    """tests/support/record.py of the checkout, or None when tradeflow runs from a wheel (which
    ships the product, not its dev tooling)."""
    if not (CHECKOUT / "tests" / "support" / "record.py").is_file():
        return None
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))  # an editable install maps only the product packages
    return importlib.import_module("tests.support.record")


# --------------------------------------------------------------------------------- replay


def load_history(path: Path) -> WorkflowHistory:
    """A history file written by ``record`` (or by the Temporal CLI or UI)."""
    data = json.loads(path.read_text())
    started = data["events"][0].get("workflowExecutionStartedEventAttributes", {})
    # The workflow id is not part of a history's JSON; newer servers put it in the first event.
    return WorkflowHistory.from_json(started.get("workflowId") or f"replay-{path.stem}", data)


def _load_all(directory: Path) -> tuple[list[tuple[Path, WorkflowHistory]], list[str]]:
    """Every history under ``directory``, including ``pinned/`` (kept from before a
    ``workflow.patched()`` change; ``record`` never touches subdirectories)."""
    loaded, unreadable = [], []
    for path in sorted(directory.rglob("*.json")):
        try:
            loaded.append((path.relative_to(directory), load_history(path)))
        except (ValueError, KeyError, IndexError) as e:
            unreadable.append(f"FAIL  {path.relative_to(directory)}: unreadable: {e}")
    return loaded, unreadable


async def replay(directory: Path) -> int:
    loaded, unreadable = _load_all(directory)
    total, failures = len(loaded) + len(unreadable), len(unreadable)
    if not total:
        say(f"no histories in {directory}")
        return 1
    for line in unreadable:
        say(line)

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for _, history in loaded:
            yield history

    replayer = Replayer(workflows=REPLAY_WORKFLOWS)
    async with replayer.workflow_replay_iterator(histories()) as results:
        i = 0
        async for result in results:
            name = loaded[i][0]
            i += 1
            if result.replay_failure is None:
                say(f"ok    {name}")
            else:
                failures += 1
                say(f"FAIL  {name}: {result.replay_failure}")
    say(f"{total - failures}/{total} histories replay on today's code")
    return 1 if failures else 0
