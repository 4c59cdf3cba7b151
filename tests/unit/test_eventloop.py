"""infra.eventloop: TRADEFLOW_EVENT_LOOP picks the loop the worker (and uvicorn) run on."""

from __future__ import annotations

import sys

import pytest

from infra import eventloop


async def _kind() -> str:
    return eventloop.loop_in_use()


def test_auto_runs_on_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run(_kind(), "auto") == "uvloop"
    assert eventloop.run(_kind(), "uvloop") == "uvloop"


def test_asyncio_runs_on_asyncio() -> None:
    assert eventloop.loop_factory("asyncio") is None
    assert eventloop.run(_kind(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert eventloop.run(_kind(), "auto") == "asyncio"
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        eventloop.loop_factory("uvloop")
