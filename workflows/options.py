"""Activity options, stated explicitly so every retry decision is visible in one place."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from domain import errors

#: Forward steps: retried until they succeed or fail for a business reason. Infrastructure
#: faults (DB or PSP down) stall the order durably instead of failing it.
FORWARD = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[
        errors.OUT_OF_STOCK,
        errors.RESERVATION_CANCELLED,
        errors.RESERVATION_CONFLICT,
        errors.PAYMENT_DECLINED,
        errors.PAYMENT_INVALID,
    ],
)

#: Compensations: retried with a growing backoff for about half an hour; a compensation that
#: still fails after that parks the order in NEEDS_ATTENTION for an operator.
COMPENSATION = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=20,
    non_retryable_error_types=[errors.RESERVATION_CONFLICT, "AlreadyCaptured"],
)

#: The read model is written at every transition; it must never block progress for long.
RECORD = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)

SHORT = timedelta(seconds=15)
PSP_CALL = timedelta(seconds=20)
