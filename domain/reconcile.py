"""What the reconciler does with each orphan it finds: pure rules, so its workflow stays
deterministic and the rules can be read (and tested) on their own. docs/operations.md says why
each case is restarted, failed or left to an operator."""

from __future__ import annotations

from enum import StrEnum

from domain.messages import OrphanedOrder, OrphanedRefund

WORKFLOW_MISSING = "missing"
"""Temporal does not know the workflow id: never started, or its history was deleted."""
WORKFLOW_CLOSED = "closed"
"""The workflow ended (terminated, timed out) while its row still says PENDING."""


class Decision(StrEnum):
    RESTART = "restart"
    FAIL = "fail"
    OPERATOR = "operator"
    """Neither is safe without a person looking (reported, left as it is)."""


class Done(StrEnum):
    """The actions the reconciler records in ``reconciliations`` (one row per subject and
    action)."""

    ORDER_RESTARTED = "order_restarted"
    ORDER_FAILED = "order_failed"
    REFUND_RESTARTED = "refund_restarted"
    REFUND_FAILED = "refund_failed"
    AUTHORIZATION_VOIDED = "authorization_voided"
    AUTHORIZATION_CHECKED = "authorization_checked"
    COURIER_RELEASED = "courier_released"


def order_decision(order: OrphanedOrder, *, restart_within_s: float) -> tuple[Decision, str]:
    """Restart an order the customer may still be waiting for; fail the others cleanly."""
    if order.workflow == WORKFLOW_CLOSED:
        return Decision.FAIL, "its workflow ended before the order got under way"
    if not order.restartable:
        return Decision.FAIL, "its checkout input was not stored (an order from before 0005)"
    if order.age_s > restart_within_s:
        return (
            Decision.FAIL,
            f"its workflow was never started and it is {order.age_s:.0f}s old"
            f" (restarted only within {restart_within_s:.0f}s)",
        )
    return Decision.RESTART, "its workflow was never started"


def refund_decision(refund: OrphanedRefund) -> tuple[Decision, str]:
    """Restart a refund nobody started (the money is owed, every step is keyed by the refund);
    fail only one that cannot be rebuilt; leave one whose workflow ended to an operator."""
    if refund.workflow == WORKFLOW_CLOSED:
        return (
            Decision.OPERATOR,
            "its RefundWorkflow ended with the refund PENDING; it may have reached the PSP, so"
            " neither a restart (whose re-check could fail a refund already paid) nor a fail"
            " (releasing the cap for money already returned) is safe",
        )
    if not refund.restartable:
        return Decision.FAIL, "its order or its captured payment is gone: it cannot be started"
    return Decision.RESTART, "its RefundWorkflow was never started"
