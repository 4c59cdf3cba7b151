"""A child workflow telling its parent (the order) how it is getting on."""

from __future__ import annotations

from temporalio import workflow


async def tell_parent(parent_workflow_id: str, signal: str, progress: object) -> None:
    """Signal the parent, max effort: a parent that has closed (or was terminated) no longer
    cares, and the child carries on with its own job."""
    try:
        await workflow.get_external_workflow_handle(parent_workflow_id).signal(signal, progress)
    except Exception as e:
        workflow.logger.warning("could not tell %s: %s", parent_workflow_id, e)
