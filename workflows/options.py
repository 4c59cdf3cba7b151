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

#: Compensations: retried until they succeed, however long the PSP or the database is down,
#: with a backoff capped at five minutes so an outage ends in minutes after it heals. Only a
#: business refusal (the fence says the hold was already confirmed elsewhere, the money was
#: already captured) stops them: that order parks in NEEDS_ATTENTION, and an operator's
#: repair (``tradeflow repair``) runs what is left once the cause is fixed.
COMPENSATION = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=0,
    non_retryable_error_types=[errors.RESERVATION_CONFLICT, errors.ALREADY_CAPTURED],
)

#: The read model is written at every transition; it must never block progress for long.
RECORD = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)

SHORT = timedelta(seconds=15)
PSP_CALL = timedelta(seconds=20)
