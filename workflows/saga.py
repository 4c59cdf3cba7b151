"""A small saga helper: compensations registered only for steps that ran, run in reverse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

Compensation = Callable[[], Awaitable[object]]


@dataclass
class _Step:
    name: str
    undo: Compensation


class Saga:
    def __init__(self) -> None:
        self._steps: list[_Step] = []

    def add(self, name: str, undo: Compensation) -> None:
        """Register ``undo`` for a step that is about to run (or has run)."""
        self._steps.append(_Step(name, undo))

    def replace(self, name: str, undo: Compensation) -> None:
        """Swap the compensation of step ``name`` (e.g. cancel -> return once confirmed)."""
        for step in self._steps:
            if step.name == name:
                step.undo = undo
                return
        self.add(name, undo)

    def discard(self, name: str) -> None:
        self._steps = [s for s in self._steps if s.name != name]

    def discard_prefix(self, prefix: str) -> None:
        """Forget every step whose name starts with ``prefix`` (e.g. all stock lines)."""
        self._steps = [s for s in self._steps if not s.name.startswith(prefix)]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._steps]

    async def compensate(self) -> list[str]:
        """Run every compensation in reverse order, shielded from workflow cancellation.

        Returns the names of compensations that failed for good; the caller decides what that
        means for the business object (tradeflow parks the order in NEEDS_ATTENTION). Those
        stay registered, so a later ``compensate()`` (an operator's repair) tries them again.
        """
        return await asyncio.shield(asyncio.ensure_future(self._run_all()))

    async def _run_all(self) -> list[str]:
        failed: list[_Step] = []
        while self._steps:
            step = self._steps.pop()
            try:
                await step.undo()
            except (ActivityError, ChildWorkflowError, ApplicationError) as e:
                workflow.logger.error("compensation %s failed for good: %s", step.name, e)
                failed.append(step)
        self._steps = list(reversed(failed))
        return [s.name for s in failed]
