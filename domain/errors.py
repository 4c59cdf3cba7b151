"""Stable names for business failures.

``ApplicationError.type`` values raised by activities (non-retryable), so workflows can tell
a business outcome from an infrastructure fault without importing activity code.
"""

OUT_OF_STOCK = "OutOfStock"
RESERVATION_CANCELLED = "ReservationCancelled"
RESERVATION_CONFLICT = "ReservationConflict"
PAYMENT_DECLINED = "PaymentDeclined"
PAYMENT_INVALID = "PaymentInvalid"
UNKNOWN_PRODUCT = "UnknownProduct"
COURIER_UNAVAILABLE = "CourierUnavailable"

# Update validators' refusals: the API maps each to its HTTP answer.
NOT_CANCELLABLE = "NotCancellable"
OUT_OF_ORDER = "OutOfOrder"
COURIER_MISMATCH = "CourierMismatch"
ALREADY_APPLIED = "AlreadyApplied"
"""The same event or request again: it took effect once already; nothing more happens."""
TOO_MANY_EVENTS = "TooManyEvents"
"""A client sent more updates for one order than any real delivery needs."""
NOT_REPAIRABLE = "NotRepairable"
NOT_WAITING = "NotWaiting"
"""The order is not waiting for this PSP word (not authorizing, another intent, or it has
one already): the webhook is acknowledged and ignored."""

# Payment activities (non-retryable).
ALREADY_CAPTURED = "AlreadyCaptured"
"""A void found the money captured: the compensation cannot undo a sale."""

# Refund activities: these end a refund as FAILED (non-retryable), the last one for an operator.
REFUND_EXCEEDS_CAPTURED = "RefundExceedsCaptured"
"""The PSP refused: the intent's refunds would pass what it captured."""
REFUND_REFUSED = "RefundRefused"
"""The PSP refused the refund for another reason a retry cannot fix."""
REFUND_LEDGER_INCONSISTENT = "RefundLedgerInconsistent"
"""tradeflow's payments row disagrees with the refund: an operator must look."""
