"""The reconciler's rules (domain/reconcile.py): which orphan is restarted, failed or left to an
operator."""

from __future__ import annotations

from domain.messages import OrderLine, OrphanedOrder, OrphanedRefund
from domain.reconcile import (
    WORKFLOW_CLOSED,
    WORKFLOW_MISSING,
    Decision,
    order_decision,
    refund_decision,
)


def _order(
    *, age_s: float = 10, workflow: str = WORKFLOW_MISSING, restartable: bool = True
) -> OrphanedOrder:
    return OrphanedOrder("o-1", "main", age_s, [OrderLine("SKU-1", 1, 100)], workflow, restartable)


def _refund(*, workflow: str = WORKFLOW_MISSING, restartable: bool = True) -> OrphanedRefund:
    return OrphanedRefund("r-1", "o-1", 100, workflow, restartable)


def test_an_order_never_started_is_restarted_while_its_customer_may_still_wait() -> None:
    assert order_decision(_order(age_s=899), restart_within_s=900)[0] == Decision.RESTART


def test_an_order_never_started_is_failed_once_past_the_restart_window() -> None:
    decision, why = order_decision(_order(age_s=901), restart_within_s=900)
    assert decision == Decision.FAIL and "901s old" in why


def test_an_order_without_a_stored_input_or_with_an_ended_workflow_is_failed() -> None:
    assert order_decision(_order(restartable=False), restart_within_s=900)[0] == Decision.FAIL
    assert (
        order_decision(_order(workflow=WORKFLOW_CLOSED), restart_within_s=900)[0] == Decision.FAIL
    )


def test_a_refund_never_started_is_restarted_whatever_its_age() -> None:
    assert refund_decision(_refund())[0] == Decision.RESTART


def test_a_refund_that_cannot_be_rebuilt_is_failed() -> None:
    assert refund_decision(_refund(restartable=False))[0] == Decision.FAIL


def test_a_refund_whose_workflow_ended_pending_is_left_to_an_operator() -> None:
    assert refund_decision(_refund(workflow=WORKFLOW_CLOSED))[0] == Decision.OPERATOR
