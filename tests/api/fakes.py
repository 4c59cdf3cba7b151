"""Test-only stand-ins for the order and delivery workflows, registered under the real names.

They implement the interface the API relies on (start input, the ``order`` query, the
``cancel`` / ``courier_event`` / ``courier_response`` updates and their validators) and nothing
else, so the API tests pin down the HTTP contract independently of the saga. Test signals
(``test_*``) move them to the state a test needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from domain.messages import (
    AmountsView,
    CancelRequest,
    CancelResult,
    CheckoutInput,
    CourierEvent,
    CourierEventResult,
    DeliveryInput,
    DeliveryView,
    ItemView,
    OrderView,
    PaymentView,
    TimelineEntry,
)
from domain.names import (
    DELIVERY_WORKFLOW,
    ORDER_WORKFLOW,
    QUERY_ORDER,
    UPDATE_CANCEL,
    UPDATE_COURIER_EVENT,
    UPDATE_COURIER_RESPONSE,
)
from domain.status import TERMINAL_STATUSES, OrderStatus


@dataclass(frozen=True)
class SetState:
    status: str
    courier_id: str | None = None


def _now() -> str:
    return workflow.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@workflow.defn(name=ORDER_WORKFLOW)
class FakeOrderWorkflow:
    @workflow.init
    def __init__(self, inp: CheckoutInput) -> None:
        # Built here, not in run: an update can arrive in the very first activation.
        self._finish = False
        self.received = inp
        subtotal = sum(li.unit_price_cents * li.quantity for li in inp.lines)
        self._view: OrderView = OrderView(
            order_id=inp.order_id,
            workflow_id=workflow.info().workflow_id,
            customer_id=inp.customer_id,
            location_id=inp.location_id,
            status=OrderStatus.PENDING,
            failure_reason=None,
            items=[ItemView(li.sku, li.quantity, li.unit_price_cents) for li in inp.lines],
            currency=inp.currency,
            amounts=AmountsView(
                subtotal, inp.delivery_fee_cents, subtotal + inp.delivery_fee_cents
            ),
            payment=PaymentView(),
            delivery=DeliveryView(),
            refunds=[],
            timeline=[TimelineEntry(OrderStatus.PENDING, inp.created_at)],
            created_at=inp.created_at,
            updated_at=inp.created_at,
        )

    @workflow.run
    async def run(self, inp: CheckoutInput) -> str:
        await workflow.wait_condition(lambda: self._finish and workflow.all_handlers_finished())
        return self._view.status

    @property
    def view(self) -> OrderView:
        return self._view

    def _move(self, status: str) -> None:
        self.view.status = status
        self.view.updated_at = _now()
        self.view.timeline.append(TimelineEntry(status, self.view.updated_at))

    @workflow.query(name=QUERY_ORDER)
    def order(self) -> OrderView:
        return self.view

    @workflow.query(name="test_input")
    def test_input(self) -> CheckoutInput:
        return self.received

    @workflow.update(name="test_set_state")
    def test_set_state(self, state: SetState) -> None:
        self._move(state.status)
        if state.courier_id is not None:
            self.view.delivery.status = "ASSIGNED"
            self.view.delivery.courier_id = state.courier_id

    @workflow.signal(name="test_finish")
    def test_finish(self) -> None:
        self._finish = True

    @workflow.update(name=UPDATE_CANCEL)
    def cancel(self, request: CancelRequest) -> CancelResult:
        self._move(OrderStatus.CANCELLED)
        # Stays open, as the real saga does while its compensations run.
        return CancelResult(accepted=True, status=self.view.status)

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        status = OrderStatus(self.view.status)
        if status == OrderStatus.OUT_FOR_DELIVERY or status in TERMINAL_STATUSES:
            raise ApplicationError(f"order is {status}", type="NotCancellable")

    @workflow.update(name=UPDATE_COURIER_EVENT)
    def courier_event(self, event: CourierEvent) -> CourierEventResult:
        if event.type == "picked_up":
            self.view.delivery.status = "PICKED_UP"
            self._move(OrderStatus.OUT_FOR_DELIVERY)
        else:
            self.view.delivery.status = "DELIVERED"
            self._move(OrderStatus.DELIVERED)
        return CourierEventResult(accepted=True, status=self.view.status)

    @courier_event.validator
    def _validate_courier_event(self, event: CourierEvent) -> None:
        expected = {
            "picked_up": OrderStatus.COURIER_ASSIGNED,
            "delivered": OrderStatus.OUT_FOR_DELIVERY,
        }.get(event.type)
        if expected is None or self.view.status != expected:
            raise ApplicationError(f"{event.type} while {self.view.status}", type="OutOfOrder")
        if event.courier_id != self.view.delivery.courier_id:
            raise ApplicationError("not this order's courier", type="CourierMismatch")


@workflow.defn(name=DELIVERY_WORKFLOW)
class FakeDeliveryWorkflow:
    def __init__(self) -> None:
        self._offered_to: str | None = None
        self._status = "DISPATCHING"

    @workflow.run
    async def run(self, inp: DeliveryInput) -> str:
        await workflow.wait_condition(
            lambda: self._status == "ASSIGNED" and workflow.all_handlers_finished()
        )
        return self._status

    @workflow.update(name="test_offer")
    def test_offer(self, courier_id: str) -> None:
        self._offered_to = courier_id

    @workflow.update(name=UPDATE_COURIER_RESPONSE)
    def courier_response(self, event: CourierEvent) -> CourierEventResult:
        if event.type == "accepted":
            self._status = "ASSIGNED"
        else:
            self._offered_to = None
        return CourierEventResult(accepted=True, status=self._status)

    @courier_response.validator
    def _validate_response(self, event: CourierEvent) -> None:
        if self._offered_to is None or event.courier_id != self._offered_to:
            raise ApplicationError("no offer for this courier", type="CourierMismatch")
