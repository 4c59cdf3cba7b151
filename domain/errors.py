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
