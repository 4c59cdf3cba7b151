"""What a Temporal client failure says about the server: unavailable (503, retry later) or not
(a bug, 500). The table in ``infra.temporal`` that the API's Temporal calls answer by."""

from __future__ import annotations

import pytest
from temporalio.client import RPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from infra.temporal import server_unavailable


@pytest.mark.parametrize(
    "exc",
    [
        RPCError("down", RPCStatusCode.UNAVAILABLE, b""),
        RPCError("slow", RPCStatusCode.DEADLINE_EXCEEDED, b""),
        RPCError("busy", RPCStatusCode.RESOURCE_EXHAUSTED, b""),
        RPCTimeoutOrCancelledError("no answer"),
        TimeoutError(),
        RuntimeError("Failed client connect: Server connection error: tcp connect error"),
    ],
)
def test_an_unreachable_failing_or_silent_server_is_unavailable(exc: BaseException) -> None:
    assert server_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RPCError("bad request", RPCStatusCode.INVALID_ARGUMENT, b""),
        RPCError("no such rpc", RPCStatusCode.UNIMPLEMENTED, b""),
        RuntimeError("a bug"),
        KeyError("a bug"),
        ValueError("a bug"),
    ],
)
def test_a_wrong_request_or_a_bug_is_not_unavailable(exc: BaseException) -> None:
    assert not server_unavailable(exc)
