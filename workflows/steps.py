"""Short database / Redis steps of a workflow: a local activity first, the regular activity
when the local tries run out.

Used by the order workflow (``PATCH_LOCAL_STEPS``) and the delivery workflow
(``PATCH_LOCAL_DISPATCH_STEPS``); each decides per run, with its own patch, whether its steps
are local (new runs) or regular (runs recorded before the patch, which replay as they ran).
"""

from __future__ import annotations

from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    is_cancelled_exception,
)
from temporalio.types import MethodAsyncSingleParam

with workflow.unsafe.imports_passed_through():
    import workflows.options as options

_Arg = TypeVar("_Arg")
_Result = TypeVar("_Result")


async def short_step(
    activity: MethodAsyncSingleParam[Any, _Arg, _Result],
    arg: _Arg,
    retry_policy: RetryPolicy,
    *,
    local: bool,
) -> _Result:
    """One short step. With ``local`` it is first a local activity: run by this worker inside
    the workflow task and recorded as one marker, instead of an activity task through the
    server (scheduled, started, completed and a workflow task of its own). A local activity
    retries inside the worker, which keeps the workflow task open with a heartbeat every few
    seconds (three history events each), so it gets ``options.LOCAL_TRIES`` tries: a step
    still failing then (the database or Redis down for longer than a blip) goes on as the
    regular activity, whose retries the server schedules without growing the history, with
    the step's own policy, so a compensation (``options.COMPENSATION``) still tries until it
    succeeds. A business refusal (non-retryable) or a cancel ends the step as it would the
    regular activity. Steps are idempotent (fences, ``seq``), so the regular activity may
    redo what a local try did. Without ``local`` (a run started before the caller's patch)
    it is the regular activity, as recorded."""
    if local:
        name = getattr(activity, "__name__", "activity")
        try:
            return await workflow.execute_local_activity_method(
                activity,
                arg,
                start_to_close_timeout=options.SHORT,
                retry_policy=options.local_tries(retry_policy),
            )
        except ApplicationError as e:
            # A local activity's failure comes as the activity's own error: the business
            # refusals go up as the regular activity's would, wrapped alike.
            if e.non_retryable or e.type in (retry_policy.non_retryable_error_types or ()):
                raise ActivityError(
                    f"local activity {name} failed",
                    scheduled_event_id=0,
                    started_event_id=0,
                    identity="",
                    activity_type=name,
                    activity_id="",
                    retry_state=RetryState.NON_RETRYABLE_FAILURE,
                ) from e
            failure: BaseException = e
        except ActivityError as e:
            if is_cancelled_exception(e) or e.retry_state not in (
                RetryState.MAXIMUM_ATTEMPTS_REACHED,
                RetryState.TIMEOUT,
            ):
                raise
            failure = e.__cause__ or e
        workflow.logger.warning(
            "%s still failing after %d local tries, going on as a regular activity: %s",
            name,
            options.LOCAL_TRIES,
            failure,
        )
    return await workflow.execute_activity_method(
        activity, arg, start_to_close_timeout=options.SHORT, retry_policy=retry_policy
    )
