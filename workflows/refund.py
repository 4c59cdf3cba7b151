"""One refund of a captured order (``refund-<refund_id>``), on the orders task queue.

The API has already admitted the refund: in the transaction that stored it, its amount was
committed against the capture, so racing refunds cannot together pass it. This workflow
carries the refund out:

1. re-read the intent at the PSP, so refunds made outside tradeflow count: if this one no
   longer fits, it ends FAILED (``exceeds_captured_at_psp``) and its amount is released;
2. refund at the PSP under ``refund:<refund_id>``, retried for as long as it takes (a PSP down
   for hours delays the refund, never loses or doubles it);
3. put the refunded units back on sale, if asked, exactly once per (refund, sku);
4. record it SUCCEEDED and add it to the order's refunded money, in one transaction.

The order workflow is not involved: an order's refunds are read from the refunds table, so a
DELIVERED order stays DELIVERED and no write here can race the order's own read-model writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
)

with workflow.unsafe.imports_passed_through():
    import workflows.options as options
    from activities.refunds import RefundActivities
    from domain import errors, names
    from domain.messages import (
        MerchantEvent,
        PspRefundRequest,
        RefundInput,
        RefundView,
        RestockRequest,
        SettleRefund,
    )
    from domain.status import MerchantEventType, RefundStatus
    from workflows.notify import notify_merchant

EXCEEDS_CAPTURED_AT_PSP = "exceeds_captured_at_psp"
CANCELLED_BEFORE_SENDING = "cancelled_before_sending"


_R = TypeVar("_R")


@workflow.defn(name=names.REFUND_WORKFLOW)
class RefundWorkflow:
    def __init__(self) -> None:
        self._refund_id = ""
        self._sending = False
        """Set before the PSP is first asked to refund: from then on the money may move."""

    @workflow.run
    async def run(self, inp: RefundInput) -> RefundView:
        self._refund_id = inp.refund_id
        try:
            return await self._unless_refused(inp, self._refund(inp))
        except (asyncio.CancelledError, ActivityError) as e:
            if not _is_cancellation(e):
                raise
            # Cancelled from outside (UI, CLI). Before the PSP was asked nothing moved: give
            # the amount back. Once asked, the PSP may have refunded: finish what was started
            # (the key makes resending safe), then close as cancelled.
            finish = (
                self._unless_refused(inp, self._send_and_book(inp))
                if self._sending
                else self._fail(inp, CANCELLED_BEFORE_SENDING)
            )
            await asyncio.shield(asyncio.ensure_future(finish))
            raise

    async def _refund(self, inp: RefundInput) -> RefundView:
        self._details(f"checking what the PSP has refunded on {inp.payment_id}")
        seen = await _ask_psp(RefundActivities.check_refundable_at_psp, inp)
        if not seen.fits:
            workflow.logger.info(
                "refund %s of %s does not fit: the PSP received %s and refunded %s already",
                inp.refund_id,
                inp.amount_cents,
                seen.received_cents,
                seen.refunded_cents,
            )
            return await self._fail(inp, EXCEEDS_CAPTURED_AT_PSP)
        self._sending = True
        return await self._send_and_book(inp)

    async def _send_and_book(self, inp: RefundInput) -> RefundView:
        self._details(f"refunding {inp.amount_cents} {inp.currency} at the PSP")
        sent = await _ask_psp(RefundActivities.send_refund, inp)
        # Units first, then the status: a refund that reads SUCCEEDED has its units back.
        if inp.restock:
            self._details(f"putting {len(inp.restock)} line(s) back on sale at {inp.location_id}")
            report = await workflow.execute_activity_method(
                RefundActivities.restock_refunded_items,
                RestockRequest(
                    refund_id=inp.refund_id,
                    order_id=inp.order_id,
                    location_id=inp.location_id,
                    lines=list(inp.restock),
                ),
                start_to_close_timeout=options.SHORT,
                retry_policy=options.BOOKKEEPING,
            )
            if report.refused:
                workflow.logger.warning(
                    "refund %s: not restocked (no longer sold): %s", inp.refund_id, report.refused
                )
        self._details(f"recording PSP refund {sent.psp_refund_id}")
        view = await workflow.execute_activity_method(
            RefundActivities.mark_refund_succeeded,
            SettleRefund(refund_id=inp.refund_id, psp_refund_id=sent.psp_refund_id),
            start_to_close_timeout=options.SHORT,
            retry_policy=options.BOOKKEEPING,
        )
        self._details(f"{view.status}: {inp.amount_cents} {inp.currency} refunded")
        if inp.notify_merchant and view.status == RefundStatus.SUCCEEDED:
            await notify_merchant(
                MerchantEvent(
                    event_id=f"{inp.refund_id}.succeeded",
                    type=MerchantEventType.REFUND_SUCCEEDED,
                    order_id=inp.order_id,
                    amount_cents=inp.amount_cents,
                    currency=inp.currency,
                    occurred_at=view.updated_at,
                ),
                about=f"refund {inp.refund_id}",
            )
        return view

    async def _unless_refused(self, inp: RefundInput, steps: Awaitable[RefundView]) -> RefundView:
        """What ``steps`` end with, or, where the PSP refused the refund (``_Refused`` from
        either PSP call), the refund failed with the PSP's reason."""
        try:
            return await steps
        except _Refused as r:
            return await self._fail(inp, r.reason)

    async def _fail(self, inp: RefundInput, reason: str) -> RefundView:
        self._details(f"failing: {reason}; releasing {inp.amount_cents} from the cap")
        view = await workflow.execute_activity_method(
            RefundActivities.mark_refund_failed,
            SettleRefund(refund_id=inp.refund_id, failure_reason=reason),
            start_to_close_timeout=options.SHORT,
            retry_policy=options.BOOKKEEPING,
        )
        self._details(f"{view.status}: {view.failure_reason}")
        return view

    def _details(self, text: str) -> None:
        workflow.set_current_details(f"**refund {self._refund_id}** — {text}")


class _Refused(Exception):
    """The PSP refused this refund for good; ``reason`` is the refund's failure reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _ask_psp(
    activity: Callable[[RefundActivities, PspRefundRequest], Awaitable[_R]], inp: RefundInput
) -> _R:
    """One PSP call of this refund, under its key and retried until the PSP answers; a
    business refusal raises ``_Refused``."""
    try:
        return await workflow.execute_activity_method(
            activity,
            _psp_request(inp),
            start_to_close_timeout=options.PSP_CALL,
            retry_policy=options.PSP_UNTIL_DONE,
        )
    except ActivityError as e:
        raise _Refused(_refusal(e)) from e


def _psp_request(inp: RefundInput) -> PspRefundRequest:
    return PspRefundRequest(
        refund_id=inp.refund_id,
        order_id=inp.order_id,
        payment_id=inp.payment_id,
        amount_cents=inp.amount_cents,
        idempotency_key=f"refund:{inp.refund_id}",
    )


def _refusal(e: ActivityError) -> str:
    """The failure reason of a refund the PSP refused; re-raises anything else (with retries
    that never end, only a non-retryable business refusal gets here)."""
    cause = e.__cause__
    if not isinstance(cause, ApplicationError) or not cause.non_retryable:
        raise e  # a cancellation, or a fault that is not the PSP's answer
    if cause.type == errors.REFUND_LEDGER_INCONSISTENT:
        raise e
    if cause.type == errors.REFUND_EXCEEDS_CAPTURED:
        return EXCEEDS_CAPTURED_AT_PSP
    code = cause.details[0] if cause.details else cause.type
    return f"psp_refused:{code}"


def _is_cancellation(e: BaseException) -> bool:
    """The workflow was cancelled: raised at the await itself, or by the activity it awaited."""
    return isinstance(e, asyncio.CancelledError) or isinstance(e.__cause__, CancelledError)
