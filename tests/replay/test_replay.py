"""Histories recorded off real runs (``tradeflow history record``) replay on today's code.

A change to workflow code that would make a running order take a different path on replay
(a new activity, a reordered await, a timer where there was none) fails here before it reaches
a worker that has such orders in flight. See docs/replay.md.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from cli.history import REPLAY_WORKFLOWS, load_history
from domain import names
from domain.messages import (
    CheckoutInput,
    DeliveryInput,
    DeliveryProgress,
    DeliveryResult,
    OrderView,
    PaymentResult,
    ReservationKey,
    ReservationResult,
)
from tests.support import scenarios
from tests.support.scenarios import SCENARIOS
from worker import WORKFLOWS_BY_QUEUE
from workflows import options
from workflows.checkout import OrderWorkflow
from workflows.delivery import DeliveryWorkflow
from workflows.payment import PaymentWorkflow

HISTORIES = Path(__file__).parent / "histories"
FILES = sorted(HISTORIES.glob("*.json"))
"""What ``tradeflow history record`` wrote: one per scenario and workflow type."""
REPLAYED = sorted(HISTORIES.rglob("*.json"))
"""Those and the ``pinned/`` ones, kept from before a ``workflow.patched()`` change."""
RE_RECORD = "re-record with `.venv/bin/tradeflow history record` (docs/replay.md)"


@pytest.mark.parametrize(
    "path", REPLAYED, ids=[str(p.relative_to(HISTORIES).with_suffix("")) for p in REPLAYED]
)
async def test_recorded_history_replays_on_todays_workflow_code(path: Path) -> None:
    await Replayer(workflows=REPLAY_WORKFLOWS).replay_workflow(load_history(path))


def test_every_scenario_has_a_history_for_each_workflow_it_runs() -> None:
    expected = {f"{s.name}.{w}.json" for s in SCENARIOS.values() for w in s.workflows}
    recorded = {p.name for p in FILES}
    assert sorted(expected - recorded) == [], f"histories missing: {RE_RECORD}"
    assert sorted(recorded - expected) == [], f"histories of no current scenario: {RE_RECORD}"


def test_every_scenario_function_is_registered() -> None:
    """A path added to tests/support/scenarios.py without @scenario would never be recorded."""
    drivers = {
        name
        for name, fn in inspect.getmembers(scenarios, inspect.iscoroutinefunction)
        if fn.__module__ == scenarios.__name__
        and [p.annotation for p in inspect.signature(fn).parameters.values()]
        in (["Stack"], [scenarios.Stack])
    }
    assert drivers == set(SCENARIOS)


def _workflow_type(cls: type) -> str:
    defn = workflow._Definition.from_class(cls)
    assert defn is not None and defn.name is not None, cls
    return defn.name


def test_every_workflow_the_workers_run_has_a_recorded_history() -> None:
    """A workflow added to worker.WORKFLOWS_BY_QUEUE without a scenario has no replay net."""
    served = {_workflow_type(w) for ws in WORKFLOWS_BY_QUEUE.values() for w in ws}
    declared = {w for s in SCENARIOS.values() for w in s.workflows}
    recorded = {p.name.split(".")[-2] for p in FILES}
    assert sorted(served - declared) == [], "no scenario runs these workflows"
    assert sorted(served - recorded) == [], f"no history of these workflows: {RE_RECORD}"
    assert {_workflow_type(w) for w in REPLAY_WORKFLOWS} == served


# ------------------------------------------------------------- the replay tests can fail


@workflow.defn(name=names.ORDER_WORKFLOW, sandboxed=False)
class _ReserveFirstOrderWorkflow(OrderWorkflow):
    """Today's saga with one careless edit: stock is reserved before the order is recorded."""

    @workflow.run
    async def run(self, inp: CheckoutInput) -> OrderView:
        return await super().run(inp)

    async def _write_read_model(self) -> None:
        if self._seq == 0:  # before the first write, i.e. before recording the order
            line = self._inp.lines[0]
            await workflow.execute_activity(
                names.ACT_TRY_RESERVE,
                ReservationKey(self._inp.order_id, self._inp.location_id, line.sku, line.quantity),
                result_type=ReservationResult,
                start_to_close_timeout=options.SHORT,
            )
        await super()._write_read_model()


async def test_replay_detects_a_non_deterministic_change() -> None:
    # A run started before the local-steps patch: it recorded the order first.
    history = load_history(
        HISTORIES / "pinned" / "happy_path.before-local-steps.OrderWorkflow.json"
    )
    replayer = Replayer(workflows=[_ReserveFirstOrderWorkflow, PaymentWorkflow, DeliveryWorkflow])

    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)

    assert isinstance(result.replay_failure, NondeterminismError)
    assert names.ACT_TRY_RESERVE in str(result.replay_failure)


@workflow.defn(name=names.ORDER_WORKFLOW, sandboxed=False)
class _RevertedLocalStepsOrderWorkflow(OrderWorkflow):
    """Today's saga with one careless edit: the stock steps are regular activities again, on
    runs that took the ``local-steps`` branch (the patch reverted in place, not retired)."""

    @workflow.run
    async def run(self, inp: CheckoutInput) -> OrderView:
        return await super().run(inp)

    async def _on_every_line(  # type: ignore[no-untyped-def]
        self, activity, keys: list[ReservationKey]
    ) -> list[ReservationResult | BaseException]:
        return await asyncio.gather(
            *(
                workflow.execute_activity_method(
                    activity, key, start_to_close_timeout=options.SHORT
                )
                for key in keys
            ),
            return_exceptions=True,
        )


async def nondeterminism(history: str, *workflows: type) -> str:
    """Replay today's ``history`` file on ``workflows`` (one of them carelessly edited):
    it must fail with a ``NondeterminismError``, whose text this returns."""
    replayer = Replayer(workflows=list(workflows))
    result = await replayer.replay_workflow(
        load_history(HISTORIES / history), raise_on_replay_failure=False
    )
    assert isinstance(result.replay_failure, NondeterminismError), result.replay_failure
    return str(result.replay_failure)


async def test_replay_detects_a_step_moved_back_from_local_to_regular_activity() -> None:
    failure = await nondeterminism(
        "happy_path.OrderWorkflow.json",
        _RevertedLocalStepsOrderWorkflow,
        PaymentWorkflow,
        DeliveryWorkflow,
    )
    # The history's marker for the local try has no local activity to match it.
    assert "LocalActivity" in failure


@workflow.defn(name=names.DELIVERY_WORKFLOW, sandboxed=False)
class _RevertedLocalDispatchStepsWorkflow(DeliveryWorkflow):
    """Today's dispatch with one careless edit: its short steps are regular activities
    again on runs that took the ``local-dispatch-steps`` branch (reverted in place)."""

    @workflow.run
    async def run(self, inp: DeliveryInput) -> DeliveryResult:
        return await super().run(inp)

    @property  # type: ignore[override]
    def _local(self) -> bool:
        return False  # whatever the patch says

    @_local.setter
    def _local(self, patched: bool) -> None:
        pass


async def test_replay_detects_dispatch_steps_moved_back_from_local_to_regular() -> None:
    failure = await nondeterminism(
        "happy_path.DeliveryWorkflow.json", OrderWorkflow, _RevertedLocalDispatchStepsWorkflow
    )
    assert "LocalActivity" in failure, failure


@workflow.defn(name=names.ORDER_WORKFLOW, sandboxed=False)
class _PaymentChildAgainOrderWorkflow(OrderWorkflow):
    """Today's saga with one careless edit: the payment goes back into a child workflow on
    runs that took the ``inline-payment`` branch (the patch reverted in place, not retired)."""

    @workflow.run
    async def run(self, inp: CheckoutInput) -> OrderView:
        return await super().run(inp)

    async def _authorize_inline(self) -> PaymentResult:
        return await self._authorize()


async def test_replay_detects_the_payment_moved_back_into_a_child_workflow() -> None:
    failure = await nondeterminism(
        "happy_path.OrderWorkflow.json",
        _PaymentChildAgainOrderWorkflow,
        PaymentWorkflow,
        DeliveryWorkflow,
    )
    # The child workflow the edit starts meets the authorize activity the history scheduled.
    assert "child workflow" in failure.lower() and names.ACT_AUTHORIZE_PAYMENT in failure, failure


@workflow.defn(name=names.ORDER_WORKFLOW, sandboxed=False)
class _ReservedOnItsOwnAgainOrderWorkflow(OrderWorkflow):
    """Today's saga with one careless edit: every status is written on its own again (and
    its search attribute set) on runs that took the ``lean-history`` branch."""

    @workflow.run
    async def run(self, inp: CheckoutInput) -> OrderView:
        return await super().run(inp)

    async def _transition(  # type: ignore[no-untyped-def]
        self, status, reason=None, *, write: bool = True
    ) -> None:
        lean, self._lean = self._lean, False
        try:
            await super()._transition(status, reason, write=write or lean)
        finally:
            self._lean = lean


async def test_replay_detects_reserved_written_on_its_own_again() -> None:
    failure = await nondeterminism(
        "happy_path.OrderWorkflow.json",
        _ReservedOnItsOwnAgainOrderWorkflow,
        PaymentWorkflow,
        DeliveryWorkflow,
    )
    assert "UpsertWorkflowSearchAttributes" in failure or "LocalActivity" in failure, failure


@workflow.defn(name=names.DELIVERY_WORKFLOW, sandboxed=False)
class _ChattyDeliveryWorkflow(DeliveryWorkflow):
    """Today's dispatch with one careless edit: it signals every offer again on runs that
    took the ``quiet-dispatch`` branch."""

    @workflow.run
    async def run(self, inp: DeliveryInput) -> DeliveryResult:
        return await super().run(inp)

    async def _tell_parent_unless_quiet(self, progress: DeliveryProgress) -> None:
        await self._tell_parent(progress)


async def test_replay_detects_offers_signalled_to_a_quiet_parent_again() -> None:
    failure = await nondeterminism(
        "happy_path.DeliveryWorkflow.json", OrderWorkflow, _ChattyDeliveryWorkflow
    )
    assert "SignalExternal" in failure or "signal" in failure.lower(), failure


async def test_a_payment_child_of_an_order_from_before_inline_payment_still_replays() -> None:
    """Orders in flight at the deploy: their history has the child, and the child's own."""
    pinned = HISTORIES / "pinned"
    for name in ("payment_after_customer_action", "cancel_awaiting_payment"):
        for kind in ("OrderWorkflow", "PaymentWorkflow"):
            history = load_history(pinned / f"{name}.before-inline-payment.{kind}.json")
            await Replayer(workflows=REPLAY_WORKFLOWS).replay_workflow(history)


async def test_history_replay_command_exits_1_when_a_history_no_longer_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.history import replay

    good = HISTORIES / "payment_declined.OrderWorkflow.json"
    (tmp_path / good.name).write_text(good.read_text())
    # The same run, as if the workflow had once called another activity first.
    tampered = good.read_text().replace(
        f'"name": "{names.ACT_AUTHORIZE_PAYMENT}"', f'"name": "{names.ACT_VOID_PAYMENT}"'
    )
    assert tampered != good.read_text()
    (tmp_path / "tampered.OrderWorkflow.json").write_text(tampered)

    assert await replay(tmp_path) == 1
    out = capsys.readouterr().out
    assert f"ok    {good.name}" in out
    assert "FAIL  tampered.OrderWorkflow.json" in out
