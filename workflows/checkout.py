"""The order saga: reserve stock, authorize payment, confirm, dispatch, capture at pick-up.

One workflow per order (``order-<order_id>``). It is the single authority on the order's
status: cancellation and courier pick-up are both Updates on this workflow, so the question
"was it cancelled before it was picked up?" always has exactly one answer.

The saga keeps its own typed state; the ``Order`` resource clients see (``OrderView``) is built
from it by ``_order_view``, for the ``order`` query and for every read-model write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from enum import Enum, auto
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)
from temporalio.types import MethodAsyncSingleParam
from temporalio.workflow import ChildWorkflowHandle

with workflow.unsafe.imports_passed_through():
    # Not ``from workflows import options``: the sandbox loads the ``workflows`` package
    # afresh for each run, and a submodule taken from it would be executed again every time;
    # imported by its full name it is passed through, one module for every run.
    import workflows.options as options
    from activities.couriers import CourierActivities
    from activities.inventory import InventoryActivities
    from activities.orders import OrderActivities
    from activities.payments import PaymentActivities
    from domain import errors, names
    from domain.messages import (
        AbortPayment,
        CancelRequest,
        CancelResult,
        CaptureInput,
        CheckoutInput,
        CourierEvent,
        CourierEventResult,
        CourierOffer,
        DeliveryInput,
        DeliveryProgress,
        DeliveryResult,
        DeliveryView,
        MerchantEvent,
        OrderView,
        PaymentInput,
        PaymentOutcome,
        PaymentOutcomeResult,
        PaymentProgress,
        PaymentResult,
        PaymentView,
        RecordOrderInput,
        RepairRequest,
        RepairResult,
        ReservationKey,
        ReservationResult,
        TimelineEntry,
        VoidInput,
    )
    from domain.status import (
        CANCELLABLE_STATUSES,
        AuthorizationOutcome,
        CourierEventType,
        DeliveryStatus,
        FailureReason,
        MerchantEventType,
        OrderStatus,
        PaymentStatus,
        PspEventType,
        check_transition,
    )
    from workflows.notify import notify_merchant
    from workflows.payment import (
        after_customer_action,
        failed_authorization,
        settled,
        start_authorization,
    )
    from workflows.saga import Compensation, Saga
    from workflows.steps import short_step

PATCH_LOCAL_STEPS = "local-steps"
"""Runs started with this patch issue fewer commands (docs/replay.md); runs started before it
replay the old ones. On the new branch:

- the short database and Redis steps (read-model writes, the stock try / confirm / cancel /
  return, freeing the courier) are local activities: one marker each, run inside the workflow
  task, instead of an activity task through the server;
- the read model is not written at the start: the API stored the row ``PENDING`` before it
  started the run, and the next write (``RESERVED`` or the end) adds ``PENDING`` to the
  stored timeline and its event to the outbox (a run started without the API gets its row
  then);
- the search attributes the start already carries (the API sets them) are not upserted again;
- ``PAID`` is written together with ``DISPATCHING``, which always follows it in the same
  workflow task (or the end, on a cancel in between): one transaction, both timeline entries
  and both outbox events."""

PATCH_INLINE_PAYMENT = "inline-payment"
"""Runs that reach the payment with this patch authorize inline (``_authorize_inline``): the
PSP call is an activity of the order workflow, and when the customer must act (3-D Secure,
QR) the order itself waits for the PSP's word, which the webhook hands over as the update
``payment_outcome``. Before it, a child workflow (``payment-<order_id>``, ``PaymentWorkflow``)
ran the same steps, at the cost of its start, its own workflow tasks and two signals: runs
that started their child before the patch replay and finish that way (docs/replay.md)."""

PATCH_LEAN_HISTORY = "lean-history"
"""Runs started with this patch write less history. It implies ``local-steps`` and
``inline-payment``, which such runs no longer check (one marker, with its search-attribute
upsert, instead of two). And:

- ``RESERVED`` is not written on its own: the next write (``PAID`` with ``DISPATCHING``, the
  end, or the wait for the customer's action) carries its timeline entry and outbox event;
- the ``OrderStatus`` search attribute is set with the read-model write that shows the
  status, once for ``PAID`` and ``DISPATCHING`` together, not once per status.

Runs started before it replay the old commands (docs/replay.md)."""

PSP_WORD_STORED = timedelta(milliseconds=1)
"""After taking the PSP's word (the update ``payment_outcome``) the order ends its workflow
task on this timer before it acts: the update is accepted in history only when that task
completes, and the next step (confirming stock, a local activity) runs inside the task. A
task lost before it completes (the server paused, the worker killed) would lose the word
but not the stock it confirmed; with the timer, the word is in history first."""

_Arg = TypeVar("_Arg")
_Result = TypeVar("_Result")

_StockStep = Callable[[InventoryActivities, ReservationKey], Awaitable[ReservationResult]]
"""One inventory activity on one line (try, confirm, cancel, return)."""


def _now_iso() -> str:
    return workflow.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Cancelled(Exception):
    """Raised inside the saga when an accepted cancel must stop the forward path."""


class _Failed(Exception):
    def __init__(self, reason: FailureReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _PaymentWait(Enum):
    """What the order must act on while its payment child runs."""

    SETTLED = auto()
    """The child ended: its result says how."""
    CANCEL_TO_PASS_ON = auto()
    """A cancel was accepted and the child has not been told to abort yet."""
    ACTION_REQUIRED = auto()
    """The customer must act (3-D Secure, QR): the order shows AWAITING_PAYMENT."""
    RESERVATION_EXPIRED = auto()
    """The reservation's TTL ran out before the child ended."""


@workflow.defn(name=names.ORDER_WORKFLOW)
class OrderWorkflow:
    @workflow.init
    def __init__(self, inp: CheckoutInput) -> None:
        self._inp = inp
        # The order as clients see it (``_order_view`` builds the resource from these).
        self._status = OrderStatus.PENDING
        self._failure_reason: FailureReason | None = None
        self._timeline = [TimelineEntry(OrderStatus.PENDING, inp.created_at)]
        self._updated_at = inp.created_at
        self._payment_status = PaymentStatus.PENDING
        self._payment_id: str | None = None
        self._authorized_cents = 0
        self._captured_cents = 0
        self._delivery_status = DeliveryStatus.NOT_STARTED
        self._offered_to: str | None = None
        self._courier_id: str | None = None
        # Where the saga is.
        self._local_steps = False
        """Short steps as local activities (``PATCH_LOCAL_STEPS``); set when the run starts."""
        self._lean = False
        """Fewer writes and signals (``PATCH_LEAN_HISTORY``); set when the run starts."""
        self._seq = 0
        """Read-model writes so far; the read model keeps the latest one only."""
        self._cancel_reason: str | None = None
        self._closing = False
        """Set once the saga has decided on a terminal outcome; no more cancels accepted."""
        self._awaiting_action = False
        self._abort_sent = False
        self._authorizing: workflow.ActivityHandle[Any] | None = None
        """The inline PSP authorization while it runs (``PATCH_INLINE_PAYMENT``)."""
        self._taking_word = False
        """Between the start of an inline authorization and its end: a PSP word is taken."""
        self._psp_word: PaymentOutcome | None = None
        """The PSP's final word on our intent, once a webhook brought it."""
        self._early_words: list[PaymentOutcome] = []
        """Words that came before the PSP call told us our intent; ours is picked after."""
        self._psp_events: set[str] = set()
        self._picked_up = False
        self._delivered = False
        self._children: list[ChildWorkflowHandle[object, object]] = []
        self._writes: list[asyncio.Future[bool]] = []
        self._intended: tuple[OrderStatus, FailureReason | None] = (OrderStatus.CANCELLED, None)
        """The outcome the saga was heading for when it parked; a repair ends there."""
        self._parked = False
        """In NEEDS_ATTENTION and waiting for an operator's repair."""
        self._repair: RepairRequest | None = None
        self._repair_left: list[str] = []
        self._why_parked = ""

    def _order_view(self) -> OrderView:
        """The ``Order`` resource as of now: the order as placed, with the saga's state."""
        inp = self._inp
        placed = OrderView.placed(
            order_id=inp.order_id,
            customer_id=inp.customer_id,
            location_id=inp.location_id,
            currency=inp.currency,
            lines=inp.lines,
            delivery_fee_cents=inp.delivery_fee_cents,
            at=inp.created_at,
        )
        return dataclasses.replace(
            placed,
            status=self._status,
            failure_reason=self._failure_reason,
            amounts=dataclasses.replace(
                placed.amounts,
                authorized_cents=self._authorized_cents,
                captured_cents=self._captured_cents,
            ),
            payment=PaymentView(self._payment_status, self._payment_id),
            delivery=DeliveryView(self._delivery_status, self._offered_to, self._courier_id),
            timeline=list(self._timeline),
            updated_at=self._updated_at,
        )

    # ------------------------------------------------------------------------------ handlers

    @workflow.query(name=names.QUERY_ORDER)
    def order(self) -> OrderView:
        return self._order_view()

    @workflow.update(name=names.UPDATE_CANCEL)
    async def cancel(self, req: CancelRequest) -> CancelResult:
        if self._cancel_reason is None:
            self._cancel_reason = req.reason or "cancelled"
            workflow.logger.info("cancel accepted: %s", self._cancel_reason)
        return CancelResult(accepted=True, status=self._status)

    @cancel.validator
    def _validate_cancel(self, req: CancelRequest) -> None:
        if self._cancel_reason is not None or self._status == OrderStatus.CANCELLED:
            # Repeating an accepted cancel is fine, and changes nothing: refusing it here
            # (the API answers 200 with the order) keeps repeats out of the history.
            raise ApplicationError("the cancel was accepted already", type=errors.ALREADY_APPLIED)
        if self._picked_up or self._closing or self._status not in CANCELLABLE_STATUSES:
            raise ApplicationError(
                f"order is {self._status}" + (" and picked up" if self._picked_up else ""),
                type=errors.NOT_CANCELLABLE,
            )

    @workflow.update(name=names.UPDATE_COURIER_EVENT)
    async def courier_event(self, ev: CourierEvent) -> CourierEventResult:
        if ev.type == CourierEventType.PICKED_UP:
            self._picked_up = True
        elif ev.type == CourierEventType.DELIVERED:
            self._delivered = True
        return CourierEventResult(accepted=True, status=self._status)

    @courier_event.validator
    def _validate_courier_event(self, ev: CourierEvent) -> None:
        if ev.type not in (CourierEventType.PICKED_UP, CourierEventType.DELIVERED):
            raise ApplicationError(
                f"{ev.type} goes to the dispatch of this order, not to the order",
                type=errors.OUT_OF_ORDER,
            )
        if self._courier_id is None:
            raise ApplicationError("no courier is assigned to this order", type=errors.OUT_OF_ORDER)
        if ev.courier_id != self._courier_id:
            raise ApplicationError(
                f"order is assigned to another courier, not {ev.courier_id}",
                type=errors.COURIER_MISMATCH,
            )
        # The assigned courier saying again what it said already: no second effect, and no
        # history either (a refused update leaves none), so no client can grow the history.
        if (ev.type == CourierEventType.PICKED_UP and self._picked_up) or (
            ev.type == CourierEventType.DELIVERED and self._delivered
        ):
            raise ApplicationError(f"{ev.type} was recorded already", type=errors.ALREADY_APPLIED)
        if self._cancel_reason is not None or self._closing:
            raise ApplicationError("order was cancelled or has ended", type=errors.OUT_OF_ORDER)
        if ev.type == CourierEventType.DELIVERED and not self._picked_up:
            raise ApplicationError("delivered before picked_up", type=errors.OUT_OF_ORDER)

    @workflow.update(name=names.UPDATE_REPAIR)
    async def repair(self, req: RepairRequest) -> RepairResult:
        """An operator resumes the compensations of a parked order (``tradeflow repair``)."""
        workflow.logger.warning("repair by %s: %s", req.operator, req.reason)
        self._repair = req
        await workflow.wait_condition(lambda: self._repair is None)
        return RepairResult(status=self._status, remaining=list(self._repair_left))

    @repair.validator
    def _validate_repair(self, req: RepairRequest) -> None:
        if not self._parked or self._repair is not None:
            raise ApplicationError(
                f"order is {self._status}"
                + (" and a repair is running" if self._repair is not None else ""),
                type=errors.NOT_REPAIRABLE,
            )
        if not req.reason.strip():
            raise ApplicationError("say why: the reason is recorded", type=errors.NOT_REPAIRABLE)

    @workflow.signal(name=names.SIGNAL_DELIVERY_PROGRESS)
    def delivery_progress(self, p: DeliveryProgress) -> None:
        if self._delivery_status in (DeliveryStatus.PICKED_UP, DeliveryStatus.DELIVERED):
            return
        self._delivery_status = p.status
        self._offered_to = p.offered_to
        if p.courier_id is not None:
            self._courier_id = p.courier_id
        self._touch()

    @workflow.update(name=names.UPDATE_PAYMENT_OUTCOME)
    async def payment_outcome(self, ev: PaymentOutcome) -> PaymentOutcomeResult:
        """The PSP's final word on the intent (webhook -> API), for an inline authorization."""
        self._psp_events.add(ev.event_id)
        if self._payment_id is None:
            self._early_words.append(ev)
        else:
            self._psp_word = ev
        return PaymentOutcomeResult(accepted=True, status=self._status)

    @payment_outcome.validator
    def _validate_payment_outcome(self, ev: PaymentOutcome) -> None:
        # Webhooks come at least once and maybe out of order: the first final word for this
        # intent wins. A refused update leaves no history, so repeats cannot grow it.
        if ev.event_id in self._psp_events:
            raise ApplicationError(
                f"event {ev.event_id} was taken already", type=errors.ALREADY_APPLIED
            )
        if not self._taking_word:
            raise ApplicationError(
                f"order is {self._status} and not authorizing a payment", type=errors.NOT_WAITING
            )
        if ev.type not in (PspEventType.SUCCEEDED, PspEventType.FAILED):
            raise ApplicationError(f"{ev.type} is not a final word", type=errors.NOT_WAITING)
        if self._psp_word is not None:
            raise ApplicationError("the PSP's word was taken already", type=errors.NOT_WAITING)
        if self._payment_id is not None and ev.payment_id != self._payment_id:
            raise ApplicationError(
                f"event {ev.event_id} is for intent {ev.payment_id}, not {self._payment_id}",
                type=errors.NOT_WAITING,
            )

    @workflow.signal(name=names.SIGNAL_PAYMENT_PROGRESS)
    def payment_progress(self, p: PaymentProgress) -> None:
        self._payment_status = p.status
        if p.payment_id is not None:
            self._payment_id = p.payment_id
        if p.status == PaymentStatus.REQUIRES_ACTION:
            self._awaiting_action = True
        self._touch()

    # ---------------------------------------------------------------------------------- run

    @workflow.run
    async def run(self, inp: CheckoutInput) -> OrderView:
        # A run with the newest patch was started by code that has the older ones: they are
        # taken as given, without a marker (and search-attribute upsert) of their own each.
        self._lean = workflow.patched(PATCH_LEAN_HISTORY)
        self._local_steps = self._lean or workflow.patched(PATCH_LOCAL_STEPS)
        started = workflow.info().typed_search_attributes
        carried = (
            started.get(names.ORDER_STATUS_KEY) == OrderStatus.PENDING.value
            and started.get(names.CUSTOMER_ID_KEY) == inp.customer_id
            and started.get(names.ORDER_TOTAL_CENTS_KEY) == inp.total_cents
        )
        if not (self._local_steps and carried):
            workflow.upsert_search_attributes(
                [
                    names.ORDER_STATUS_KEY.value_set(OrderStatus.PENDING.value),
                    names.CUSTOMER_ID_KEY.value_set(inp.customer_id),
                    names.ORDER_TOTAL_CENTS_KEY.value_set(inp.total_cents),
                ]
            )
        saga = Saga()
        closing: Coroutine[Any, Any, None] | None = None
        cancelled_from_outside = False
        try:
            if not self._local_steps:
                await self._write_read_model()
            await self._fulfil(saga)
        except _Cancelled:
            closing = self._finish(saga, OrderStatus.CANCELLED, None)
        except _Failed as f:
            closing = self._finish(saga, OrderStatus.FAILED, f.reason)
        except (ActivityError, ChildWorkflowError) as e:
            if is_cancelled_exception(e):
                # The step in flight was cancelled because the workflow was: an outside cancel.
                cancelled_from_outside = True
                closing = self._close_on_outside_cancel(saga)
            else:
                # A step failed in a way the saga has no business answer for. Undo what ran
                # and hand the order to an operator rather than fail holding stock or money.
                workflow.logger.error("unexpected failure, compensating: %s", e)
                closing = self._finish(
                    saga, OrderStatus.NEEDS_ATTENTION, None, why=f"unexpected failure: {e}"
                )
        except asyncio.CancelledError:
            # Cancelled from outside (UI, CLI): close the order as the rules say, then let
            # Temporal close the run as cancelled.
            cancelled_from_outside = True
            closing = self._close_on_outside_cancel(saga)
        if closing is not None:
            # One rule: once compensation starts it finishes, whatever cancel comes meanwhile.
            await self._to_completion(closing)
        while self._parked:
            try:
                self._details_parked()
                await workflow.wait_condition(lambda: self._repair is not None)
            except asyncio.CancelledError:
                # An operator closes a parked order as it is (it stays NEEDS_ATTENTION).
                cancelled_from_outside = True
                break
            await self._to_completion(self._resume_compensation(saga))
        await workflow.wait_condition(workflow.all_handlers_finished)
        if cancelled_from_outside and self._status != OrderStatus.DELIVERED:
            # Temporal shows the run as cancelled; a cancel that came once the courier had
            # delivered changed nothing, so that run completes as delivered.
            raise asyncio.CancelledError("order workflow cancelled from outside")
        return self._order_view()

    async def _fulfil(self, saga: Saga) -> None:
        inp = self._inp
        # 1-3. Reserve every line (TCC try, in parallel). A cancel is registered for every line
        # tried, whatever it answered: the fence makes a cancel with no try a recorded no-op.
        self._details("reserving stock")
        keys = [
            ReservationKey(inp.order_id, inp.location_id, li.sku, li.quantity, li.hot)
            for li in inp.lines
        ]
        for key in keys:
            saga.add(
                f"stock:{key.sku}", self._undo_stock(InventoryActivities.cancel_reservation, key)
            )
        results = await self._on_every_line(InventoryActivities.try_reserve, keys)
        for r in results:
            if isinstance(r, BaseException):
                if _is_app_error(r, errors.OUT_OF_STOCK, errors.RESERVATION_CANCELLED):
                    raise _Failed(FailureReason.OUT_OF_STOCK, str(r.__cause__ or r))
                raise _Failed(FailureReason.INVALID_ORDER, str(r.__cause__ or r))
        self._check_cancel()
        # Written with the next write on lean runs (before, in a write of its own).
        await self._transition(OrderStatus.RESERVED, write=not self._lean)

        # 4. Authorize: inline, or (runs from before the patch) through a payment child.
        self._check_cancel()
        saga.add("payment", self._undo_payment)
        if self._lean or workflow.patched(PATCH_INLINE_PAYMENT):
            payment = await self._authorize_inline()
        else:
            payment = await self._authorize()
        self._payment_id = payment.payment_id
        self._authorized_cents = payment.authorized_cents
        self._payment_status = PaymentStatus.AUTHORIZED

        # 5. Confirm stock: from here a cancel returns sold units instead of cancelling a hold.
        self._details("confirming stock")
        confirmed = await self._on_every_line(InventoryActivities.confirm_reservation, keys)
        for key, r in zip(keys, confirmed, strict=True):
            if not isinstance(r, BaseException):
                saga.replace(
                    f"stock:{key.sku}", self._undo_stock(InventoryActivities.return_stock, key)
                )
        for r in confirmed:
            if isinstance(r, BaseException):
                # The hold is gone (released by someone else): this order cannot be filled.
                raise _Failed(FailureReason.OUT_OF_STOCK, str(r.__cause__ or r))
        # PAID is written with DISPATCHING, which follows at once (before, in a write of its own).
        await self._transition(OrderStatus.PAID, write=not self._local_steps)
        await self._tell_merchant(MerchantEventType.ORDER_PAID)
        self._check_cancel()

        # 6. Dispatch.
        courier_id = await self._dispatch(saga)

        # 7. Pick-up -> capture -> out for delivery -> delivered.
        self._details(f"waiting for courier {courier_id} to pick up")
        await workflow.wait_condition(lambda: self._picked_up or self._cancel_reason is not None)
        self._check_cancel()
        # The goods have left the store: no compensation may put them back on the shelf.
        saga.discard_prefix("stock:")
        self._delivery_status = DeliveryStatus.PICKED_UP
        self._details("capturing payment")
        try:
            await self._capture()
        except ActivityError as e:
            await self._needs_attention(f"capture failed: {e.__cause__ or e}")
            return
        saga.discard("payment")
        await self._transition(OrderStatus.OUT_FOR_DELIVERY)
        self._details(f"out for delivery with courier {courier_id}")
        await workflow.wait_condition(lambda: self._delivered)
        await self._complete_delivery(saga, courier_id)

    async def _complete_delivery(self, saga: Saga, courier_id: str) -> None:
        """Free the courier and close the order as delivered; safe to run again."""
        self._closing = True
        self._delivery_status = DeliveryStatus.DELIVERED
        await self._short_step(
            CourierActivities.release_courier,
            CourierOffer(self._inp.order_id, courier_id),
            options.FORWARD,
        )
        saga.discard("courier")
        if self._status != OrderStatus.DELIVERED:
            await self._transition(OrderStatus.DELIVERED)
        self._details("delivered")

    def _payment_input(self) -> PaymentInput:
        inp = self._inp
        return PaymentInput(
            order_id=inp.order_id,
            customer_id=inp.customer_id,
            amount_cents=inp.total_cents,
            currency=inp.currency,
            token=inp.payment_token,
            payment_timeout_s=inp.timeouts.payment_timeout_s,
            parent_workflow_id=workflow.info().workflow_id,
        )

    async def _authorize_inline(self) -> PaymentResult:
        """Authorize in this workflow (``PATCH_INLINE_PAYMENT``): the PSP call, then, when the
        customer must act, the wait for the PSP's word, all under the reservation's TTL.

        A cancel accepted meanwhile, or the TTL, stops the call in flight and waits for it
        to end, so the void finds any intent it created; once the customer must act, either
        ends the wait. A cancel wins over whatever the PSP says, as it did over the child's
        result."""
        inp = self._inp
        self._details("authorizing payment")
        ttl = timedelta(seconds=inp.timeouts.effective_reservation_ttl_s)
        expires_at = workflow.now() + ttl
        expired = f"reservation expired after {ttl}"
        self._taking_word = True
        try:
            auth = self._authorizing = start_authorization(self._payment_input())
            await self._wait_until(
                lambda: auth.done() or self._cancel_reason is not None,
                expires_at,
                "reservation TTL",
            )
            if not auth.done():
                await self._stop_authorizing()
                self._check_cancel()
                raise _Failed(FailureReason.PAYMENT_TIMEOUT, expired)
            try:
                answer = auth.result()
            except ActivityError as e:
                return self._authorization_outcome(failed_authorization(e))
            self._payment_id = answer.payment_id
            # Events that came before we knew our intent: the first for ours is the word.
            ours = [w for w in self._early_words if w.payment_id == answer.payment_id]
            self._psp_word = ours[0] if ours else None
            for w in self._early_words:
                if w.payment_id != answer.payment_id:
                    workflow.logger.warning("early event %s was for another intent", w.event_id)
            result = settled(answer)
            if result is not None:
                return self._authorization_outcome(result)

            # REQUIRES_ACTION: show it, then wait for the PSP's word, a cancel or a deadline.
            self._payment_status = PaymentStatus.REQUIRES_ACTION
            self._check_cancel()
            await self._transition(OrderStatus.AWAITING_PAYMENT)
            self._details(
                f"waiting up to {inp.timeouts.payment_timeout_s:.0f}s for the customer to complete payment"
            )
            pay_by = workflow.now() + timedelta(seconds=inp.timeouts.payment_timeout_s)
            came = await self._wait_until(
                lambda: self._psp_word is not None or self._cancel_reason is not None,
                min(pay_by, expires_at),
                "payment timeout" if pay_by < expires_at else "reservation TTL",
            )
            self._check_cancel()
            if not came:
                raise _Failed(
                    FailureReason.PAYMENT_TIMEOUT,
                    "customer did not complete payment" if pay_by < expires_at else expired,
                )
            await workflow.sleep(PSP_WORD_STORED, summary="PSP word stored")
            assert self._psp_word is not None
            return self._authorization_outcome(
                after_customer_action(self._psp_word, inp.total_cents)
            )
        finally:
            self._taking_word = False

    async def _stop_authorizing(self) -> None:
        """Cancel an inline authorization still in flight and wait until it has ended."""
        auth = self._authorizing
        if auth is not None and not auth.done():
            auth.cancel()
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                await auth

    async def _wait_until(self, done: Callable[[], bool], deadline: datetime, what: str) -> bool:
        """Wait for ``done`` until ``deadline`` (at least a second); False when it passed."""
        try:
            await workflow.wait_condition(
                done,
                timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                timeout_summary=what,
            )
        except TimeoutError:
            return done()
        return True

    async def _authorize(self) -> PaymentResult:
        inp = self._inp
        self._details("authorizing payment")
        child = await workflow.start_child_workflow(
            names.PAYMENT_WORKFLOW,
            self._payment_input(),
            id=names.payment_workflow_id(inp.order_id),
            task_queue=workflow.info().task_queue,
            result_type=PaymentResult,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=f"Payment of {inp.total_cents} {inp.currency} for order {inp.order_id}",
        )
        self._children.append(child)
        self._abort_sent = False
        # The reservation's TTL is enforced here, on the order's own timer: whatever the
        # payment child is stuck on (a PSP that keeps failing, a webhook that never comes),
        # stock is not held past it.
        ttl = timedelta(seconds=inp.timeouts.effective_reservation_ttl_s)
        expires_at = workflow.now() + ttl
        while (event := await self._wait_for_payment(child, expires_at)) != _PaymentWait.SETTLED:
            if event == _PaymentWait.RESERVATION_EXPIRED:
                child.cancel()
                with contextlib.suppress(ChildWorkflowError, asyncio.CancelledError):
                    await child
                raise _Failed(FailureReason.PAYMENT_TIMEOUT, f"reservation expired after {ttl}")
            if event == _PaymentWait.CANCEL_TO_PASS_ON:
                assert self._cancel_reason is not None
                await child.signal(names.SIGNAL_ABORT_PAYMENT, AbortPayment(self._cancel_reason))
                self._abort_sent = True
            else:
                await self._transition(OrderStatus.AWAITING_PAYMENT)
                self._details(
                    f"waiting up to {inp.timeouts.payment_timeout_s:.0f}s for the customer to complete payment"
                )
        return self._authorization_outcome(child.result())

    async def _wait_for_payment(
        self, child: ChildWorkflowHandle[Any, PaymentResult], expires_at: datetime
    ) -> _PaymentWait:
        """Wait, at the latest until the reservation expires, for what the order must act on
        next while its payment child runs."""

        def cancel_to_pass_on() -> bool:
            return self._cancel_reason is not None and not self._abort_sent

        def action_to_show() -> bool:
            return self._awaiting_action and self._status == OrderStatus.RESERVED

        try:
            await workflow.wait_condition(
                lambda: child.done() or cancel_to_pass_on() or action_to_show(),
                timeout=max(expires_at - workflow.now(), timedelta(seconds=1)),
                timeout_summary="reservation TTL",
            )
        except TimeoutError:
            return _PaymentWait.SETTLED if child.done() else _PaymentWait.RESERVATION_EXPIRED
        if child.done():
            return _PaymentWait.SETTLED
        if cancel_to_pass_on():
            return _PaymentWait.CANCEL_TO_PASS_ON
        return _PaymentWait.ACTION_REQUIRED

    def _authorization_outcome(self, result: PaymentResult) -> PaymentResult:
        """The payment child's result for the order: the authorization to go on with, or
        the failure the order ends with (a cancel accepted meanwhile wins over both)."""
        if result.payment_id:
            self._payment_id = result.payment_id
        self._check_cancel()
        if result.status == AuthorizationOutcome.AUTHORIZED:
            return result
        if result.status == AuthorizationOutcome.TIMEOUT:
            raise _Failed(FailureReason.PAYMENT_TIMEOUT, result.detail or "")
        self._payment_status = PaymentStatus.DECLINED
        raise _Failed(FailureReason.PAYMENT_DECLINED, result.detail or result.status)

    async def _dispatch(self, saga: Saga) -> str:
        inp = self._inp
        await self._transition(OrderStatus.DISPATCHING)
        self._delivery_status = DeliveryStatus.DISPATCHING
        self._details("looking for a courier")
        child = await workflow.start_child_workflow(
            names.DELIVERY_WORKFLOW,
            DeliveryInput(
                order_id=inp.order_id,
                location_id=inp.location_id,
                parent_workflow_id=workflow.info().workflow_id,
                offer_timeout_s=inp.timeouts.offer_timeout_s,
                max_offers=inp.timeouts.max_offers,
            ),
            id=names.delivery_workflow_id(inp.order_id),
            task_queue=inp.dispatch_task_queue,
            result_type=DeliveryResult,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=f"Dispatch of order {inp.order_id} from {inp.location_id}",
        )
        self._children.append(child)
        await workflow.wait_condition(lambda: child.done() or self._cancel_reason is not None)
        if not child.done():
            child.cancel()
        try:
            result = await child
        except ChildWorkflowError:
            result = None  # cancelled: the child released any courier it was offering to
        if result is not None and result.status == DeliveryStatus.ASSIGNED and result.courier_id:
            courier_id = result.courier_id
            saga.add("courier", self._undo_courier(courier_id))
            self._delivery_status = DeliveryStatus.ASSIGNED
            self._offered_to = None
            self._courier_id = courier_id
        self._check_cancel()
        if result is None or result.status != DeliveryStatus.ASSIGNED or not result.courier_id:
            self._delivery_status = DeliveryStatus.FAILED
            self._offered_to = None
            raise _Failed(
                FailureReason.NO_COURIER,
                f"no courier accepted within {inp.timeouts.max_offers} offers",
            )
        await self._transition(OrderStatus.COURIER_ASSIGNED)
        return result.courier_id

    async def _capture(self) -> None:
        inp = self._inp
        assert self._payment_id is not None
        res = await workflow.execute_activity_method(
            PaymentActivities.capture_payment,
            CaptureInput(
                order_id=inp.order_id,
                payment_id=self._payment_id,
                amount_cents=self._authorized_cents,
                idempotency_key=f"capture:{inp.order_id}",
            ),
            start_to_close_timeout=options.PSP_CALL,
            retry_policy=options.FORWARD,
        )
        self._captured_cents = res.captured_cents
        self._payment_status = PaymentStatus.CAPTURED

    # ------------------------------------------------------------------------ compensations

    async def _on_every_line(
        self, activity: _StockStep, keys: list[ReservationKey]
    ) -> list[ReservationResult | BaseException]:
        """Run one inventory step on every line at once; each line's outcome or error."""
        return await asyncio.gather(
            *(self._short_step(activity, key, options.FORWARD) for key in keys),
            return_exceptions=True,
        )

    def _undo_stock(self, activity: _StockStep, key: ReservationKey) -> Compensation:
        """One line's stock back on sale: the hold cancelled (``cancel_reservation``) or,
        once confirmed, the sold units returned (``return_stock``)."""

        async def undo() -> None:
            await self._short_step(activity, key, options.COMPENSATION)

        return undo

    async def _undo_payment(self) -> None:
        res = await workflow.execute_activity_method(
            PaymentActivities.void_payment,
            VoidInput(
                order_id=self._inp.order_id,
                payment_id=self._payment_id,
                idempotency_key=f"void:{self._inp.order_id}",
            ),
            start_to_close_timeout=options.PSP_CALL,
            retry_policy=options.COMPENSATION,
        )
        if res.payment_id:
            self._payment_id = res.payment_id
        if res.voided:
            self._payment_status = PaymentStatus.VOIDED
            self._authorized_cents = 0

    def _undo_courier(self, courier_id: str) -> Compensation:
        async def undo() -> None:
            await self._short_step(
                CourierActivities.release_courier,
                CourierOffer(self._inp.order_id, courier_id),
                options.COMPENSATION,
            )

        return undo

    # ------------------------------------------------------------------------------ helpers

    async def _to_completion(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a closing step to its end. An outside cancel that arrives meanwhile does not
        abandon it (the run's own ``except CancelledError`` cannot catch a cancel raised
        inside an ``except`` handler); the caller learns of the cancel from Temporal anyway."""
        task = asyncio.ensure_future(step)
        while True:
            try:
                await asyncio.shield(task)
                return
            except asyncio.CancelledError:
                if task.done():
                    raise
                workflow.logger.info("cancel requested while closing; finishing the close first")

    async def _close_on_outside_cancel(self, saga: Saga) -> None:
        await self._drain_before_close()
        if self._status.is_terminal:
            return  # the order had ended already; nothing to undo
        if self._delivered and self._courier_id is not None:
            await self._complete_delivery(saga, self._courier_id)
        elif self._picked_up:
            await self._needs_attention("cancelled from outside after pick-up")
        else:
            self._cancel_reason = self._cancel_reason or "workflow cancelled"
            await self._finish(saga, OrderStatus.CANCELLED, None)

    async def _resume_compensation(self, saga: Saga) -> None:
        """An operator's repair: run what is left to undo, then end as the saga meant to."""
        req = self._repair
        assert req is not None
        left = ", ".join(reversed(saga.names)) or "nothing left to undo"
        self._details(f"repair by {req.operator} ({req.reason}): compensating {left}")
        self._repair_left = await saga.compensate()
        if not self._repair_left:
            status, reason = self._intended
            if status == OrderStatus.CANCELLED:
                self._cancel_reason = self._cancel_reason or f"repaired: {req.reason}"
            self._parked = False
            await self._end(status, reason)
            self._details(f"{status.value} after repair by {req.operator}: {req.reason}")
        self._repair = None

    async def _drain_before_close(self) -> None:
        """Before closing on an outside cancel: let in-flight read-model writes land, then
        cancel and wait for children still running, so nothing outlives the order."""
        for write in self._writes:
            if not write.done():
                with contextlib.suppress(ActivityError):
                    await write
        await self._stop_authorizing()
        for child in self._children:
            if not child.done():
                child.cancel()
                with contextlib.suppress(ChildWorkflowError, asyncio.CancelledError):
                    await child

    def _check_cancel(self) -> None:
        if self._cancel_reason is not None:
            raise _Cancelled()

    async def _finish(
        self, saga: Saga, status: OrderStatus, reason: FailureReason | None, *, why: str = ""
    ) -> None:
        self._closing = True
        if status == OrderStatus.FAILED and self._cancel_reason is not None:
            # A cancel the API accepted is the customer's answer: whatever else went wrong
            # meanwhile (stock, payment, the reservation's TTL), the order ends CANCELLED.
            status, reason = OrderStatus.CANCELLED, None
        if status != OrderStatus.NEEDS_ATTENTION:
            self._intended = (status, reason)
        self._details(f"compensating ({', '.join(reversed(saga.names)) or 'nothing to undo'})")
        failed = await saga.compensate()
        self._repair_left = failed
        if self._delivery_status in (DeliveryStatus.DISPATCHING, DeliveryStatus.ASSIGNED):
            self._delivery_status = DeliveryStatus.FAILED
        self._offered_to = None
        if failed or status == OrderStatus.NEEDS_ATTENTION:
            await self._needs_attention(why or f"compensations failed: {', '.join(failed)}")
            return
        await self._end(status, reason)
        self._details(
            f"{status.value}"
            + (f" ({reason.value})" if reason else "")
            + (f": {self._cancel_reason}" if status == OrderStatus.CANCELLED else "")
        )

    async def _end(self, status: OrderStatus, reason: FailureReason | None) -> None:
        """Close the order as CANCELLED or FAILED once everything is undone."""
        await self._transition(status, reason)
        if status == OrderStatus.CANCELLED:
            await self._tell_merchant(MerchantEventType.ORDER_CANCELLED)

    async def _needs_attention(self, why: str) -> None:
        """Park the order for an operator; it waits for ``tradeflow repair``."""
        self._closing = True
        self._why_parked = why
        current = self._status
        if current.is_terminal and current != OrderStatus.NEEDS_ATTENTION:
            workflow.logger.error("order is %s already; not parking it: %s", current, why)
            return
        # Repairable from the moment a reader can see NEEDS_ATTENTION.
        self._parked = True
        if current != OrderStatus.NEEDS_ATTENTION:
            await self._transition(OrderStatus.NEEDS_ATTENTION)
        self._details_parked()

    def _details_parked(self) -> None:
        left = ", ".join(reversed(self._repair_left)) if self._repair_left else ""
        self._details(
            f"{self._why_parked}; waiting for an operator: tradeflow repair "
            f"{self._inp.order_id} --reason ..." + (f" (still to undo: {left})" if left else "")
        )

    async def _transition(
        self, status: OrderStatus, reason: FailureReason | None = None, *, write: bool = True
    ) -> None:
        """Move the order on: its status, timeline and search attributes, then the read model
        (unless ``write`` is False: the next transition's write carries this one too, and on
        lean runs its search attribute as well)."""
        check_transition(self._status, status)
        at = _now_iso()
        self._status = status
        self._failure_reason = reason
        self._timeline.append(TimelineEntry(status, at))
        self._updated_at = at
        if write or not self._lean:
            workflow.upsert_search_attributes(
                [names.ORDER_STATUS_KEY.value_set(status.value)]
                + ([names.FAILURE_REASON_KEY.value_set(reason.value)] if reason else [])
            )
        if write:
            await self._write_read_model()

    async def _tell_merchant(self, event_type: MerchantEventType) -> None:
        """Tell the merchant (max effort, outliving the order) when it asked to be told."""
        inp = self._inp
        if not inp.notify_merchant:
            return
        await notify_merchant(
            MerchantEvent(
                event_id=f"{inp.order_id}.{event_type.split('.')[-1]}",
                type=event_type,
                order_id=inp.order_id,
                amount_cents=inp.total_cents,
                currency=inp.currency,
                occurred_at=self._updated_at,
            ),
            about=f"order {inp.order_id}",
        )

    async def _write_read_model(self) -> None:
        """Write the read model as of now. The write runs as its own task behind a shield: a
        cancel interrupts the saga at once, and ``_drain_before_close`` waits for the write to land."""
        self._seq += 1
        write = asyncio.ensure_future(
            self._short_step(
                OrderActivities.record_order,
                RecordOrderInput(view=self._order_view(), seq=self._seq),
                options.RECORD,
            )
        )
        self._writes.append(write)
        await asyncio.shield(write)

    async def _short_step(
        self,
        activity: MethodAsyncSingleParam[Any, _Arg, _Result],
        arg: _Arg,
        retry_policy: RetryPolicy,
    ) -> _Result:
        """One short database / Redis step (``workflows.steps.short_step``): a local
        activity first on runs started with ``PATCH_LOCAL_STEPS``."""
        return await short_step(activity, arg, retry_policy, local=self._local_steps)

    def _touch(self) -> None:
        self._updated_at = _now_iso()

    def _details(self, text: str) -> None:
        workflow.set_current_details(f"**{self._status}** — {text}")


def _is_app_error(e: BaseException, *types: str) -> bool:
    cause = e.__cause__ if isinstance(e, (ActivityError, ChildWorkflowError)) else e
    return isinstance(cause, ApplicationError) and cause.type in types
