"""Authorization of one order's payment: its steps, and ``payment-<order_id>``, the child
workflow that ran them for orders started before ``PATCH_INLINE_PAYMENT``.

Creates the PSP intent under a key derived from the order, and when the card needs customer
action (3-D Secure, QR) waits for the PSP's webhook, an abort from the order, or the timeout.
Orders started since the patch run the same steps inline (``OrderWorkflow._authorize_inline``)
and take the PSP's word as the update ``payment_outcome``; this workflow stays registered so
the children of older orders finish, and replay, as they began. Capture and void are run by
the order workflow, which owns the decision to take the money.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout
from temporalio.workflow import ActivityCancellationType, ActivityHandle

with workflow.unsafe.imports_passed_through():
    # Not ``from workflows import options``: the sandbox loads the ``workflows`` package
    # afresh for each run, and a submodule taken from it would be executed again every time;
    # imported by its full name it is passed through, one module for every run.
    import workflows.options as options
    from activities.payments import PaymentActivities
    from domain import errors, names
    from domain.messages import (
        AbortPayment,
        AuthorizeInput,
        AuthorizeResult,
        PaymentInput,
        PaymentOutcome,
        PaymentProgress,
        PaymentResult,
    )
    from domain.status import AuthorizationOutcome, PaymentStatus, PspEventType
    from workflows.parent import tell_parent


@workflow.defn(name=names.PAYMENT_WORKFLOW)
class PaymentWorkflow:
    @workflow.init
    def __init__(self, inp: PaymentInput) -> None:
        self._inp = inp
        self._payment_id: str | None = None
        self._outcome: PaymentOutcome | None = None
        self._abort: str | None = None
        self._seen_events: set[str] = set()

    @workflow.signal(name=names.SIGNAL_PAYMENT_OUTCOME)
    def payment_outcome(self, ev: PaymentOutcome) -> None:
        # Webhooks come at least once and maybe out of order: the first final word for this
        # intent wins; duplicates and events for another intent change nothing.
        if ev.event_id in self._seen_events:
            return
        self._seen_events.add(ev.event_id)
        if self._payment_id is not None and ev.payment_id != self._payment_id:
            workflow.logger.warning(
                "event %s is for intent %s, not ours", ev.event_id, ev.payment_id
            )
            return
        if self._outcome is None and ev.type in (PspEventType.SUCCEEDED, PspEventType.FAILED):
            self._outcome = ev

    @workflow.signal(name=names.SIGNAL_ABORT_PAYMENT)
    def abort(self, req: AbortPayment) -> None:
        self._abort = self._abort or req.reason

    @workflow.run
    async def run(self, inp: PaymentInput) -> PaymentResult:
        workflow.set_current_details("authorizing with the PSP")
        try:
            auth = await start_authorization(inp)
        except ActivityError as e:
            return self._done(failed_authorization(e))
        self._payment_id = auth.payment_id
        if self._outcome is not None and self._outcome.payment_id != auth.payment_id:
            # An event that came before we knew our intent, for another one: not ours.
            workflow.logger.warning("early event %s was for another intent", self._outcome.event_id)
            self._outcome = None
        result = settled(auth)
        if result is not None:
            return self._done(result)

        # REQUIRES_ACTION: tell the order, then wait for the webhook, an abort or the timeout.
        await tell_parent(
            inp.parent_workflow_id,
            names.SIGNAL_PAYMENT_PROGRESS,
            PaymentProgress(PaymentStatus.REQUIRES_ACTION, auth.payment_id),
        )
        workflow.set_current_details(
            f"waiting up to {inp.payment_timeout_s:.0f}s for the customer to complete {auth.payment_id}"
        )
        try:
            await workflow.wait_condition(
                lambda: self._outcome is not None or self._abort is not None,
                timeout=timedelta(seconds=inp.payment_timeout_s),
                timeout_summary="payment timeout",
            )
        except TimeoutError:
            return self._done(
                PaymentResult(
                    AuthorizationOutcome.TIMEOUT,
                    auth.payment_id,
                    detail="customer did not complete payment",
                )
            )
        if self._outcome is not None:
            return self._done(after_customer_action(self._outcome, inp.amount_cents))
        return self._done(
            PaymentResult(AuthorizationOutcome.ABORTED, auth.payment_id, detail=self._abort)
        )

    def _done(self, result: PaymentResult) -> PaymentResult:
        workflow.set_current_details(
            f"{result.status}" + (f": {result.detail}" if result.detail else "")
        )
        return result


# The steps of an authorization, shared by this workflow (runs started before
# ``PATCH_INLINE_PAYMENT``, and a payment started on its own) and the order workflow, which
# now authorizes inline (``OrderWorkflow._authorize_inline``).


def start_authorization(inp: PaymentInput) -> ActivityHandle[AuthorizeResult]:
    """Start the PSP authorization: the intent under a key derived from the order, retried
    until the PSP answers or the payment window closes."""
    return workflow.start_activity_method(
        PaymentActivities.authorize_payment,
        AuthorizeInput(
            order_id=inp.order_id,
            amount_cents=inp.amount_cents,
            currency=inp.currency,
            token=inp.token,
            idempotency_key=f"authorize:{inp.order_id}",
        ),
        start_to_close_timeout=options.PSP_CALL,
        schedule_to_close_timeout=options.authorize_deadline(inp.payment_timeout_s),
        retry_policy=options.FORWARD,
        # If the order gives up on the payment (its TTL, a cancel), the attempt in flight
        # is waited for: the order's void then finds the intent that attempt may have
        # created, instead of looking before it exists and leaving an authorization behind.
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    )


def failed_authorization(e: ActivityError) -> PaymentResult:
    """The result of an authorization that raised: declined for a business refusal; for
    anything else a timeout, since there was no usable answer within the payment window
    (retries ran out at the schedule-to-close deadline, the cause then being the PSP's last
    error, not a timeout; or the PSP answered nonsense). The order fails cleanly and its void
    looks the intent up by order in case one landed."""
    cause = e.__cause__
    if isinstance(cause, ApplicationError) and cause.type in (
        errors.PAYMENT_INVALID,
        errors.PAYMENT_DECLINED,
    ):
        return PaymentResult(status=AuthorizationOutcome.DECLINED, detail=str(cause))
    detail = "PSP did not answer in time" if isinstance(cause, ActivityTimeout) else str(cause or e)
    return PaymentResult(status=AuthorizationOutcome.TIMEOUT, detail=f"{detail} ({e.retry_state})")


def settled(auth: AuthorizeResult) -> PaymentResult | None:
    """The result when the PSP settled the authorization at once; None when the customer
    must act first (3-D Secure, QR: ``REQUIRES_ACTION``)."""
    if auth.status == PaymentStatus.AUTHORIZED:
        return PaymentResult(
            AuthorizationOutcome.AUTHORIZED, auth.payment_id, auth.authorized_cents
        )
    if auth.status == PaymentStatus.DECLINED:
        return PaymentResult(AuthorizationOutcome.DECLINED, auth.payment_id, detail=auth.detail)
    return None


def after_customer_action(word: PaymentOutcome, amount_cents: int) -> PaymentResult:
    """The result once the PSP said how the customer's action ended."""
    if word.type == PspEventType.SUCCEEDED:
        return PaymentResult(AuthorizationOutcome.AUTHORIZED, word.payment_id, amount_cents)
    return PaymentResult(
        AuthorizationOutcome.DECLINED, word.payment_id, detail="customer action failed"
    )
