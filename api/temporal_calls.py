"""Every call the API makes to Temporal, and the one table of what its failures mean.

=========================================  =======================================  ===============
what happened                              raised by the SDK                        the API answers
=========================================  =======================================  ===============
not connected to the server yet            (no client)                              503 (a)
the server cannot be reached               ``RuntimeError("Failed client connect``   503 (a)
                                           ...")`` from a lazily connecting client
the service failed or is overloaded        ``RPCError`` with a status in            503 (a)
                                           ``infra.temporal.UNAVAILABLE_STATUSES``
no answer in time                          ``RPCTimeoutOrCancelledError``,          503 (a)
                                           ``TimeoutError`` (our local deadline)
the workflow is not running (it closed,    ``RPCError(NOT_FOUND)``                  the caller's
or never started)                                                                   (b)
an update's validator or handler refused   ``WorkflowUpdateFailedError``            the caller's
                                                                                    (c)
start of a workflow that ran and closed    ``WorkflowAlreadyStartedError``          nothing to do
anything else (an ``RPCError`` saying the  propagates                               500
request itself is wrong, any other                                                  ``internal_error``
exception)                                                                          (a bug)
=========================================  =======================================  ===============

(a) ``temporal_unavailable`` with ``Retry-After``; the ``detail`` says what a retry does.
(b) :class:`WorkflowNotRunning`: the read model has the last word (409, or "ignored").
(c) :class:`UpdateRefused` with the ``ApplicationError`` type (``domain/errors.py``), which
    the caller maps to its problem code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import TEMPORAL_UNAVAILABLE, ApiProblem, unavailable
from api.state import AppState
from domain.messages import SagaStart
from infra.temporal import server_unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

START_TIMEOUT = timedelta(seconds=10)
QUERY_TIMEOUT = timedelta(seconds=5)
SIGNAL_TIMEOUT = timedelta(seconds=10)
UPDATE_TIMEOUT = timedelta(seconds=15)
GRACE_S = 1.0
"""Local deadline on top of the RPC timeout, in case the client retries internally."""

NOT_ANSWERING = "the workflow service did not answer"
NOT_CONNECTED = "not connected to the workflow service yet"


class WorkflowNotRunning(Exception):
    """The workflow has closed, or was never started."""


class UpdateRefused(Exception):
    """An update's validator (or handler) refused it with an ``ApplicationError``."""

    def __init__(self, error_type: str | None, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        """The ``ApplicationError`` type (``domain/errors.py``), None for another failure."""


def _application_error_type(exc: WorkflowUpdateFailedError) -> str | None:
    cause: BaseException | None = exc.cause
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause.type
        cause = cause.__cause__
    return None


class TemporalCalls:
    """Starts, queries, updates and signals, each under a deadline, failures per the table."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    def _client(self, unavailable_detail: str) -> Client:
        client = self._state.temporal.client
        if client is None:
            raise unavailable(TEMPORAL_UNAVAILABLE, unavailable_detail)
        return client

    async def _call(
        self,
        call: Callable[[Client], Awaitable[T]],
        *,
        rpc_timeout: timedelta,
        unavailable_detail: str,
    ) -> T:
        client = self._client(unavailable_detail)
        try:
            return await asyncio.wait_for(
                call(client), timeout=rpc_timeout.total_seconds() + GRACE_S
            )
        except WorkflowUpdateFailedError as exc:
            raise UpdateRefused(_application_error_type(exc), str(exc.cause)) from exc
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise WorkflowNotRunning(str(exc)) from exc
            if not server_unavailable(exc):
                raise
            log.error("workflow service failed: %s", exc)
            raise unavailable(TEMPORAL_UNAVAILABLE, unavailable_detail) from exc
        except ApiProblem:
            raise
        except Exception as exc:
            if not server_unavailable(exc):
                raise
            log.error("workflow service unavailable: %r", exc)
            raise unavailable(TEMPORAL_UNAVAILABLE, unavailable_detail) from exc

    async def start(
        self,
        saga: SagaStart,
        *,
        task_queue: str,
        unavailable_detail: str,
        search_attributes: TypedSearchAttributes | None = None,
    ) -> None:
        """Start the saga unless it runs or ran: safe to repeat (``USE_EXISTING`` while it
        runs, nothing once it has closed), so a retried request starts it at most once."""
        try:
            await self._call(
                lambda client: client.start_workflow(
                    saga.workflow,
                    saga.arg,
                    id=saga.workflow_id,
                    task_queue=task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    static_summary=saga.summary,
                    search_attributes=search_attributes,
                    rpc_timeout=START_TIMEOUT,
                ),
                rpc_timeout=START_TIMEOUT,
                unavailable_detail=unavailable_detail,
            )
        except WorkflowAlreadyStartedError:
            pass  # it ran already and closed: nothing to start

    async def query(self, workflow_id: str, query: str, result_type: type[T]) -> T:
        return await self._call(
            lambda client: client.get_workflow_handle(workflow_id).query(
                query, result_type=result_type, rpc_timeout=QUERY_TIMEOUT
            ),
            rpc_timeout=QUERY_TIMEOUT,
            unavailable_detail=NOT_ANSWERING,
        )

    async def update(
        self,
        workflow_id: str,
        update: str,
        arg: Any,
        result_type: type[T],
        *,
        rpc_timeout: timedelta = UPDATE_TIMEOUT,
        unavailable_detail: str = NOT_ANSWERING,
    ) -> T:
        return await self._call(
            lambda client: client.get_workflow_handle(workflow_id).execute_update(
                update, arg, result_type=result_type, rpc_timeout=rpc_timeout
            ),
            rpc_timeout=rpc_timeout,
            unavailable_detail=unavailable_detail,
        )

    async def signal(self, workflow_id: str, signal: str, arg: Any) -> None:
        await self._call(
            lambda client: client.get_workflow_handle(workflow_id).signal(
                signal, arg, rpc_timeout=SIGNAL_TIMEOUT
            ),
            rpc_timeout=SIGNAL_TIMEOUT,
            unavailable_detail=NOT_ANSWERING,
        )
