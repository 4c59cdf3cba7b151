"""The event loop the worker and the API run on: uvloop where it is installed, else asyncio.

``TRADEFLOW_EVENT_LOOP``: ``auto`` (the default: uvloop when importable), ``uvloop`` (refuse
to start without it) or ``asyncio``. The API hands the same value to uvicorn, whose ``loop``
option has these three names and meanings. Measured in docs/benchmarks.md ("Worker tuning").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopName = Literal["auto", "uvloop", "asyncio"]


def loop_factory(name: LoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``name``; None means asyncio's own loop."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise RuntimeError(
                "TRADEFLOW_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], name: LoopName) -> T:
    """``asyncio.run(main)`` on the loop ``name`` selects."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def loop_in_use() -> str:
    """The running loop's kind, for the start-up log line."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
