"""Temporal client factory shared by the API, the worker and the CLI, and what the client's
failures say about the server (``server_unavailable``).

Every client made here carries, unless told otherwise:

- the payload encryption codec (``data_converter``, infra/codec.py). A worker runs with its
  client's converter, so the workers are covered by the same call;
- Temporal's OpenTelemetry ``TracingInterceptor`` (it is a worker interceptor too, so workers
  built on the client trace workflows and activities), continuing the caller's trace into
  ``StartWorkflow`` → ``RunWorkflow`` → ``StartActivity`` → ``RunActivity``;
- ``OriginLinker``: a request that signals or updates a workflow (the PSP webhook, a courier
  event, a cancel) runs in a trace of its own; its span gets a link to the trace the workflow
  was started in, so the webhook of an order joins that order's trace. (Inside the workflow
  the ``HandleSignal``/``HandleUpdate`` span is in the order's trace and links back.)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import SpanContext
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    RPCTimeoutOrCancelledError,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
    SignalWorkflowInput,
    StartWorkflowUpdateInput,
    WorkflowExecutionDescription,
    WorkflowUpdateHandle,
)
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter, PayloadConverter
from temporalio.service import RPCError, RPCStatusCode

from infra.settings import Settings

log = logging.getLogger(__name__)

TRACE_HEADER = "_tracer-data"
"""Where ``TracingInterceptor`` puts the W3C trace context in a workflow's headers."""
ORIGIN_CACHE_SIZE = 4096
ORIGIN_LOOKUP_TIMEOUT_S = 2.0


def data_converter(settings: Settings) -> DataConverter:
    """The payload encryption codec (``TRADEFLOW_CODEC``, key ring in the data dir) or, with
    it off, Temporal's default converter."""
    if not settings.codec:
        return DataConverter.default
    from infra import codec

    return codec.data_converter(codec.codec_for(settings.resolved_codec_key_file))


class OriginLinker(Interceptor):
    """Links the current span to the trace a signalled or updated workflow started in.

    The origin is the trace context in the workflow's start event headers (written by
    ``TracingInterceptor``), read once per workflow id with a one-event history fetch and
    cached; nothing is fetched when the current span is not recorded.
    """

    def __init__(self) -> None:
        self.client: Client | None = None
        self._origins: OrderedDict[str, SpanContext | None] = OrderedDict()

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _LinkingOutbound(next, self)

    async def link(self, workflow_id: str) -> None:
        span = trace.get_current_span()
        if not span.is_recording() or self.client is None:
            return
        origin = await self._origin(self.client, workflow_id)
        if origin is not None and origin.trace_id != span.get_span_context().trace_id:
            span.add_link(origin, {"temporal.workflow_id": workflow_id, "link.type": "origin"})

    async def _origin(self, client: Client, workflow_id: str) -> SpanContext | None:
        if workflow_id in self._origins:
            self._origins.move_to_end(workflow_id)
            return self._origins[workflow_id]
        try:
            resp = await client.workflow_service.get_workflow_execution_history(
                GetWorkflowExecutionHistoryRequest(
                    namespace=client.namespace,
                    execution=WorkflowExecution(workflow_id=workflow_id),
                    maximum_page_size=1,
                ),
                timeout=timedelta(seconds=ORIGIN_LOOKUP_TIMEOUT_S),
            )
        except Exception as exc:  # a trace link is never worth failing the request
            log.debug("no trace origin for %s: %s", workflow_id, exc)
            return None
        origin: SpanContext | None = None
        events = resp.history.events
        if events and events[0].HasField("workflow_execution_started_event_attributes"):
            header = events[0].workflow_execution_started_event_attributes.header.fields
            if TRACE_HEADER in header:
                try:
                    [carrier] = PayloadConverter.default.from_payloads([header[TRACE_HEADER]])
                    ctx = get_global_textmap().extract(carrier)
                    found = trace.get_current_span(ctx).get_span_context()
                    origin = found if found.is_valid else None
                except Exception as exc:
                    log.debug("unreadable trace header on %s: %s", workflow_id, exc)
        self._origins[workflow_id] = origin
        while len(self._origins) > ORIGIN_CACHE_SIZE:
            self._origins.popitem(last=False)
        return origin


class _LinkingOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, root: OriginLinker) -> None:
        super().__init__(next)
        self._root = root

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        await self._root.link(input.id)
        await super().signal_workflow(input)

    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        await self._root.link(input.id)
        return await super().start_workflow_update(input)


#: RPC statuses that say the workflow service failed or is overloaded: worth a retry later.
#: The others (``INVALID_ARGUMENT``, ``PERMISSION_DENIED``, ``UNIMPLEMENTED``...) say the
#: request itself is wrong, which a retry cannot fix: a bug (or a misconfiguration).
#: ``NOT_FOUND`` and ``ALREADY_EXISTS`` are answers about a workflow, for the caller.
UNAVAILABLE_STATUSES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.FAILED_PRECONDITION,
    }
)
CONNECT_FAILED = "Failed client connect"
"""How the SDK's lazily connecting client says it could not reach the server (a
``RuntimeError``; any other ``RuntimeError`` is not about the server)."""


def server_unavailable(exc: BaseException) -> bool:
    """True when ``exc``, raised by a client call, means the workflow service is unavailable:
    unreachable, failing, overloaded or not answering in time."""
    if isinstance(exc, RPCError):
        return exc.status in UNAVAILABLE_STATUSES
    if isinstance(exc, RPCTimeoutOrCancelledError | TimeoutError):
        return True
    return type(exc) is RuntimeError and str(exc).startswith(CONNECT_FAILED)


async def connect(settings: Settings, *, tracing: bool = True) -> Client:
    """Connect to ``TEMPORAL_ADDRESS`` / ``TEMPORAL_NAMESPACE``.

    With ``tracing`` the client carries the OpenTelemetry interceptors, so a trace that starts
    in an HTTP request continues through the workflow and every activity it runs.
    """
    linker = OriginLinker()
    interceptors: list[Interceptor] = [linker, TracingInterceptor()] if tracing else []
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        interceptors=interceptors,
        data_converter=data_converter(settings),
    )
    linker.client = client
    return client


async def describe_or_none(client: Client, workflow_id: str) -> WorkflowExecutionDescription | None:
    """The workflow's latest run as the server describes it, or None when it has no such
    workflow (never started, or its history is gone)."""
    try:
        return await client.get_workflow_handle(workflow_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


def interval_schedule(
    workflow: str, arg: Any, *, workflow_id: str, task_queue: str, every_s: float
) -> Schedule:
    """Start ``workflow(arg)`` every ``every_s``; a run still going when the next is due is
    not doubled (overlap SKIP)."""
    return Schedule(
        action=ScheduleActionStartWorkflow(workflow, arg, id=workflow_id, task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every_s))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_schedule(client: Client, schedule_id: str, wanted: Schedule) -> str:
    """Create the schedule, or bring an existing one to ``wanted`` (changed settings take
    effect at the next worker start): ``created`` or ``updated``."""
    try:
        await client.create_schedule(schedule_id, wanted)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=wanted)

        await client.get_schedule_handle(schedule_id).update(replace)
        return "updated"
    return "created"
