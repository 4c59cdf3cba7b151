"""Names shared by workflows, workers, activities and the API: ids, queues, activity names.

Workflows call activities through their methods (``execute_activity_method``, the activity
classes imported passed through the sandbox); the names below are what those methods are
registered under, and what recorded histories hold, so they never change.
"""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey

# Task queues: one per role, so a worker process can serve some roles only.
ORDERS_TASK_QUEUE = "orders"
DISPATCH_TASK_QUEUE = "dispatch"
ALL_TASK_QUEUES = (ORDERS_TASK_QUEUE, DISPATCH_TASK_QUEUE)


def shard_task_queue(dispatch_queue: str, shard: str) -> str:
    """The task queue of one dispatch shard (``dispatch-0``): its zones' ``request_match``."""
    return f"{dispatch_queue}-{shard}"


def order_workflow_id(order_id: str) -> str:
    return f"order-{order_id}"


def payment_workflow_id(order_id: str) -> str:
    return f"payment-{order_id}"


def delivery_workflow_id(order_id: str) -> str:
    return f"delivery-{order_id}"


def refund_workflow_id(refund_id: str) -> str:
    return f"refund-{refund_id}"


def notify_workflow_id(event_id: str) -> str:
    return f"notify-{event_id}"


# Workflow type names.
ORDER_WORKFLOW = "OrderWorkflow"
PAYMENT_WORKFLOW = "PaymentWorkflow"
DELIVERY_WORKFLOW = "DeliveryWorkflow"

# Activity names (registered by the activity classes under exactly these names).
ACT_RECORD_ORDER = "record_order"
ACT_TRY_RESERVE = "try_reserve"
ACT_CONFIRM_RESERVATION = "confirm_reservation"
ACT_CANCEL_RESERVATION = "cancel_reservation"
ACT_RETURN_STOCK = "return_stock"
ACT_AUTHORIZE_PAYMENT = "authorize_payment"
ACT_CAPTURE_PAYMENT = "capture_payment"
ACT_VOID_PAYMENT = "void_payment"
ACT_FIND_NEAREST_COURIER = "find_nearest_courier"
ACT_OFFER_TO_COURIER = "offer_to_courier"
ACT_ASSIGN_COURIER = "assign_courier"
ACT_RELEASE_COURIER = "release_courier"
ACT_ROUTE_DISPATCH = "route_dispatch"
ACT_REQUEST_MATCH = "request_match"
ACT_WITHDRAW_MATCH = "withdraw_match"

# Signal / update / query names.
QUERY_ORDER = "order"
UPDATE_CANCEL = "cancel"
UPDATE_COURIER_EVENT = "courier_event"
UPDATE_REPAIR = "repair"
UPDATE_PAYMENT_OUTCOME = "payment_outcome"
"""Webhook -> order workflow: the PSP's final word, for an order that authorizes inline."""
SIGNAL_DELIVERY_PROGRESS = "delivery_progress"
SIGNAL_PAYMENT_PROGRESS = "payment_progress"
SIGNAL_PAYMENT_OUTCOME = "payment_outcome"
SIGNAL_ABORT_PAYMENT = "abort"
UPDATE_COURIER_RESPONSE = "courier_response"
QUERY_DELIVERY = "delivery"

# Custom search attributes (registered on the dev server by the launcher).
SA_ORDER_STATUS = "OrderStatus"
SA_CUSTOMER_ID = "CustomerId"
SA_ORDER_TOTAL_CENTS = "OrderTotalCents"
SA_FAILURE_REASON = "FailureReason"
ORDER_STATUS_KEY = SearchAttributeKey.for_keyword(SA_ORDER_STATUS)
CUSTOMER_ID_KEY = SearchAttributeKey.for_keyword(SA_CUSTOMER_ID)
ORDER_TOTAL_CENTS_KEY = SearchAttributeKey.for_int(SA_ORDER_TOTAL_CENTS)
FAILURE_REASON_KEY = SearchAttributeKey.for_keyword(SA_FAILURE_REASON)
SEARCH_ATTRIBUTE_KEYS: tuple[SearchAttributeKey[Any], ...] = (
    ORDER_STATUS_KEY,
    CUSTOMER_ID_KEY,
    ORDER_TOTAL_CENTS_KEY,
    FAILURE_REASON_KEY,
)
"""The typed keys the order workflow sets and the API searches by."""
SEARCH_ATTRIBUTE_TYPES = {
    k.name: "Int" if k.indexed_value_type == SearchAttributeIndexedValueType.INT else "Keyword"
    for k in SEARCH_ATTRIBUTE_KEYS
}
"""The same, as the dev server's ``--search-attribute NAME=TYPE`` wants them."""

# Inventory sweeper: a Temporal Schedule starts it periodically on the orders queue.
SWEEP_WORKFLOW = "InventorySweepWorkflow"
SWEEPER_SCHEDULE_ID = "inventory-sweeper"
ACT_FIND_STALE_RESERVATIONS = "find_stale_reservations"
ACT_RELEASE_ORPHANED_RESERVATIONS = "release_orphaned_reservations"
ACT_RECONCILE_HOT_STOCK = "reconcile_hot_stock"

# Max-effort merchant notifications.
NOTIFY_WORKFLOW = "NotifyMerchantWorkflow"
ACT_NOTIFY_MERCHANT = "notify_merchant"
ACT_RECORD_NOTIFICATION = "record_notification"

# Refunds: one RefundWorkflow per refund (``refund-<refund_id>``) on the orders queue.
REFUND_WORKFLOW = "RefundWorkflow"
ACT_CHECK_REFUNDABLE_AT_PSP = "check_refundable_at_psp"
ACT_SEND_REFUND = "send_refund"
ACT_MARK_REFUND_SUCCEEDED = "mark_refund_succeeded"
ACT_MARK_REFUND_FAILED = "mark_refund_failed"
ACT_RESTOCK_REFUNDED_ITEMS = "restock_refunded_items"

# Reconciler: a Temporal Schedule runs it periodically on the orders queue (docs/operations.md).
RECONCILE_WORKFLOW = "ReconcileWorkflow"
RECONCILER_SCHEDULE_ID = "reconciler"
ACT_FIND_ORPHANED_ORDERS = "find_orphaned_orders"
ACT_RESTART_ORDER = "restart_order"
ACT_FAIL_ORPHANED_ORDER = "fail_orphaned_order"
ACT_FIND_ORPHANED_REFUNDS = "find_orphaned_refunds"
ACT_RESTART_REFUND = "restart_refund"
ACT_FIND_UNRELEASED_AUTHORIZATIONS = "find_unreleased_authorizations"
ACT_FIND_STRANDED_COURIERS = "find_stranded_couriers"
ACT_RECORD_RECONCILIATION = "record_reconciliation"
