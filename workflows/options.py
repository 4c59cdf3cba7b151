"""Activity options, stated explicitly so every retry decision is visible in one place."""

from __future__ import annotations

import dataclasses
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

#: Merchant notifications: one HTTP try per scheduled attempt; the notification's own schedule
#: (``MerchantEvent.backoff_s``, durable timers), not Temporal's retry, sets the pace.
ONE_TRY = RetryPolicy(maximum_attempts=1)

#: PSP calls of a refund. The money is owed, so they never give up on infrastructure faults
#: (5xx, timeouts, open breaker): attempts go on, at most ``maximum_interval`` apart, until
#: the PSP answers. Business refusals are raised non-retryable and end the refund FAILED.
PSP_UNTIL_DONE = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=0,
)

#: A refund's bookkeeping in tradeflow's own database: retried until the database answers.
BOOKKEEPING = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,
)

#: Each step of a reconciler run: a few tries, then it is reported and the next run takes it
#: up (a run must not sit on one stuck PSP call while the schedule skips the runs behind it).
RECONCILE_STEP = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)

#: The inventory sweep's long steps (release, counter repair): a few tries, then the next
#: scheduled sweep takes them up.
SWEEP_STEP = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))

SHORT = timedelta(seconds=15)
"""Start-to-close of one try of a short database / Redis step (regular or local activity)."""
LOCAL_TRIES = 4
"""Tries of a short step of the order (``OrderWorkflow._short_step``) as a local activity,
inside the worker and with its policy's backoff (a few seconds in all), before it goes on as a
regular activity with its whole policy: a blip is ridden out without an activity task, an
outage without a history that grows by a workflow-task heartbeat every few seconds."""
PSP_CALL = timedelta(seconds=20)
NOTIFY_TRY = timedelta(seconds=15)
"""One POST to the merchant's webhook (the activity's own HTTP timeout is 10 s)."""
RECONCILE_FIND = timedelta(minutes=5)
RECONCILE_FIND_HEARTBEAT = timedelta(seconds=30)
SWEEP_RELEASE = timedelta(minutes=10)
SWEEP_RELEASE_HEARTBEAT = timedelta(seconds=30)
SWEEP_RECONCILE_HOT = timedelta(minutes=2)


def authorize_deadline(payment_timeout_s: float) -> timedelta:
    """Schedule-to-close of the payment authorization: a PSP that stays down longer than the
    customer would wait ends the attempt (at least a minute, so a short payment window still
    gets a few tries); the order's void compensation looks the intent up by order in case it
    landed."""
    return timedelta(seconds=max(payment_timeout_s, 60))


def local_tries(policy: RetryPolicy) -> RetryPolicy:
    """``policy`` for the local-activity tries of a short step: ``LOCAL_TRIES`` at most."""
    return dataclasses.replace(policy, maximum_attempts=LOCAL_TRIES)
