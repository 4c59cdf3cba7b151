"""Dispatch of one order (``delivery-<order_id>``) on the dispatch task queue.

Each round gets the order offered to a courier, waits for an accept with a timeout, and tries
again (another courier) up to ``max_offers`` times. Since the ``batch-dispatch`` patch the
zone matcher of the store's zone decides who gets the offer and writes it (``route_dispatch``,
then ``request_match`` on that zone's shard queue, see docs/dispatch.md); histories recorded
before it replay the old greedy path (``find_nearest_courier`` + ``offer_to_courier``). Courier
answers arrive as an Update, so a courier the order is not offered to learns it at once (HTTP
409) instead of being silently ignored.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.options as options
    from activities.couriers import CourierActivities
    from domain import errors, names
    from domain.messages import (
        CourierEvent,
        CourierEventResult,
        CourierOffer,
        DeliveryInput,
        DeliveryProgress,
        DeliveryResult,
        DeliveryState,
        FindCourierInput,
        MatchRequest,
    )
    from domain.names import shard_task_queue
    from domain.status import CourierEventType, DeliveryStatus
    from workflows.parent import tell_parent
    from workflows.steps import short_step


PATCH_RELEASE_BOUND_COURIER = "release-bound-courier-on-cancel"
"""Runs before it released only an open offer's courier; an accepted one could leak."""
PATCH_BATCH_DISPATCH = "batch-dispatch"
"""Runs before it searched and offered itself (greedy); since, the zone matcher offers."""
PATCH_LOCAL_DISPATCH_STEPS = "local-dispatch-steps"
"""Runs started with it take the short database / Redis steps (``route_dispatch``,
``assign_courier``, ``release_courier``, ``withdraw_match``) as local activities
(``workflows.steps.short_step``): a marker each inside the workflow task, instead of an
activity task through the server. ``request_match`` waits on the zone's shard queue for the
matcher and stays a regular activity. Runs started before it replay their regular ones."""

MATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=3,
    non_retryable_error_types=["ShardMoved", "DispatchUnavailable"],
)
"""A heartbeat lapse is retried on the same shard queue a couple of times; anything else (the
shard stopping, its queue not polled any more) goes back to the workflow, which routes again."""
MATCH_TIMEOUT = timedelta(minutes=1)
MATCH_HEARTBEAT = timedelta(seconds=5)
MATCH_SCHEDULE_TO_START = timedelta(seconds=5)
"""Nobody polled the shard's queue this long (its worker is gone): route again."""
REROUTE_PAUSE = timedelta(seconds=1)

PATCH_QUIET_DISPATCH = "quiet-dispatch"
"""Runs started with it tell the order only that a courier accepted (the signal that must be
in the order's history before the courier's pick-up can be), not each offer made and
withdrawn, nor the failure, which the result carries: readers of a dispatching order take
the open offer from this workflow's ``delivery`` query (``OrderView.with_offer``). It implies
the three patches before it (``batch-dispatch``, ``local-dispatch-steps``,
``release-bound-courier-on-cancel``), which such runs no longer check: one marker instead of
three. Runs started before it replay the old commands (docs/replay.md)."""


@workflow.defn(name=names.DELIVERY_WORKFLOW)
class DeliveryWorkflow:
    @workflow.init
    def __init__(self, inp: DeliveryInput) -> None:
        self._inp = inp
        self._state = DeliveryState()
        self._answer: CourierEvent | None = None
        self._assigned = False
        self._bound: str | None = None
        """The courier whose row may point at this order (an offer sent, or accepted), until
        it is released: whoever it is, a cancel frees it."""
        self._declined: set[str] = set()
        self._local = False
        """Short steps as local activities (``PATCH_LOCAL_DISPATCH_STEPS``); set at the start."""
        self._quiet = False
        """Offers not signalled to the order (``PATCH_QUIET_DISPATCH``); set at the start."""
        self._matching: MatchRequest | None = None
        """The zone matcher may be writing an offer of this order to some courier right now
        (``request_match`` running): an answer waits for it, a cancel withdraws it."""

    @workflow.query(name=names.QUERY_DELIVERY)
    def delivery(self) -> DeliveryState:
        return self._state

    @workflow.update(name=names.UPDATE_COURIER_RESPONSE)
    async def courier_response(self, ev: CourierEvent) -> CourierEventResult:
        if self._matching is not None:
            # The matcher wrote the offer and the courier app saw it before the workflow
            # heard: judge the answer once the match is known.
            await workflow.wait_condition(lambda: self._matching is None)
            self._check_offer(ev)
        self._answer = ev
        if ev.type == CourierEventType.DECLINED:
            self._declined.add(ev.courier_id)
            self._state.offered_to = None
            return CourierEventResult(accepted=True, status=self._state.status)
        # Accepted: the courier is this order's from now on, in the DB and in the order
        # workflow, before the courier hears back.
        self._state.status = DeliveryStatus.ASSIGNED
        self._state.courier_id = ev.courier_id
        self._state.offered_to = None
        await short_step(
            CourierActivities.assign_courier,
            CourierOffer(self._inp.order_id, ev.courier_id),
            options.FORWARD,
            local=self._local,
        )
        await self._tell_parent(DeliveryProgress(DeliveryStatus.ASSIGNED, None, ev.courier_id))
        self._assigned = True
        return CourierEventResult(accepted=True, status=self._state.status)

    @courier_response.validator
    def _validate(self, ev: CourierEvent) -> None:
        if ev.type not in (CourierEventType.ACCEPTED, CourierEventType.DECLINED):
            raise ApplicationError(
                f"{ev.type} is not an answer to an offer", type=errors.OUT_OF_ORDER
            )
        # The same answer again from the courier that gave it: no second effect, no history.
        if (ev.type == CourierEventType.ACCEPTED and self._state.courier_id == ev.courier_id) or (
            ev.type == CourierEventType.DECLINED and ev.courier_id in self._declined
        ):
            raise ApplicationError(f"{ev.type} was recorded already", type=errors.ALREADY_APPLIED)
        if self._state.status == DeliveryStatus.DISPATCHING and self._matching is not None:
            return  # judged in the handler, once the matcher's offer is known
        self._check_offer(ev)

    def _check_offer(self, ev: CourierEvent) -> None:
        if self._state.status != DeliveryStatus.DISPATCHING or self._state.offered_to is None:
            raise ApplicationError("the order has no open offer", type=errors.OUT_OF_ORDER)
        if ev.courier_id != self._state.offered_to:
            raise ApplicationError(
                f"the order is not offered to {ev.courier_id}", type=errors.COURIER_MISMATCH
            )

    @workflow.run
    async def run(self, inp: DeliveryInput) -> DeliveryResult:
        offers = 0
        # A run with the newest patch was started by code that has the older ones: they are
        # taken as given, without a marker (and search-attribute upsert) of their own each.
        self._quiet = workflow.patched(PATCH_QUIET_DISPATCH)
        self._local = self._quiet or workflow.patched(PATCH_LOCAL_DISPATCH_STEPS)
        try:
            batch = self._quiet or workflow.patched(PATCH_BATCH_DISPATCH)
            for _ in range(inp.max_offers):
                courier, nobody = await (
                    self._matched(inp) if batch else self._nearest_offered(inp)
                )
                if courier is None:
                    if nobody:
                        workflow.set_current_details(
                            "no free courier nearby; searching again shortly"
                        )
                        await workflow.sleep(
                            timedelta(seconds=inp.offer_timeout_s), summary="no courier free"
                        )
                    continue
                offers += 1
                await self._tell_parent_unless_quiet(
                    DeliveryProgress(DeliveryStatus.DISPATCHING, courier)
                )
                workflow.set_current_details(
                    f"offer {offers}/{inp.max_offers}: waiting {inp.offer_timeout_s:.0f}s for {courier}"
                )
                try:
                    await workflow.wait_condition(
                        lambda: self._answer is not None,
                        timeout=timedelta(seconds=inp.offer_timeout_s),
                        timeout_summary="offer timeout",
                    )
                except TimeoutError:
                    pass
                if self._answer is not None and self._answer.type == CourierEventType.ACCEPTED:
                    await workflow.wait_condition(
                        lambda: self._assigned and workflow.all_handlers_finished()
                    )
                    workflow.set_current_details(f"assigned to {courier}")
                    return DeliveryResult(DeliveryStatus.ASSIGNED, courier, offers)
                # Declined or timed out: close the offer so a late accept is refused, free them.
                self._state.offered_to = None
                await self._release(courier)
                self._bound = None
                await self._tell_parent_unless_quiet(
                    DeliveryProgress(DeliveryStatus.DISPATCHING, None)
                )
        except asyncio.CancelledError:
            offered = self._state.offered_to
            self._state.offered_to = None
            if self._matching is not None:
                matching, self._matching = self._matching, None
                await asyncio.shield(asyncio.ensure_future(self._withdraw(matching)))
            if self._quiet or workflow.patched(PATCH_RELEASE_BOUND_COURIER):
                await asyncio.shield(asyncio.ensure_future(self._release_bound()))
            elif offered is not None and not self._assigned:
                await asyncio.shield(asyncio.ensure_future(self._release(offered)))
            raise
        self._state.status = DeliveryStatus.FAILED
        await self._tell_parent_unless_quiet(DeliveryProgress(DeliveryStatus.FAILED, None))
        workflow.set_current_details(f"no courier accepted after {offers} offers")
        return DeliveryResult(DeliveryStatus.FAILED, None, offers)

    async def _nearest_offered(self, inp: DeliveryInput) -> tuple[str | None, bool]:
        """The greedy round (histories from before ``batch-dispatch``): the nearest free
        courier not tried yet, offered by this workflow; (None, True): nobody found, (None,
        False): the courier was taken between search and offer (search again at once)."""
        found = await workflow.execute_activity_method(
            CourierActivities.find_nearest_courier,
            FindCourierInput(inp.order_id, inp.location_id, list(self._state.tried)),
            start_to_close_timeout=options.SHORT,
            retry_policy=options.FORWARD,
        )
        if found.courier_id is None:
            return None, True
        courier = found.courier_id
        self._state.tried.append(courier)
        # Open the offer before the courier can see it, so a fast accept validates.
        self._state.offered_to = courier
        self._bound = courier
        self._answer = None
        offer = await workflow.execute_activity_method(
            CourierActivities.offer_to_courier,
            CourierOffer(inp.order_id, courier),
            start_to_close_timeout=options.SHORT,
            retry_policy=options.FORWARD,
        )
        if not offer.offered:
            self._state.offered_to = None
            self._bound = None  # the courier's row holds another order, not ours
            return None, False
        return courier, False

    async def _matched(self, inp: DeliveryInput) -> tuple[str | None, bool]:
        """The matcher round: ask the zone matcher of the store's zone, on its shard's task
        queue, for an offer; the matcher writes it under its zone lease (fenced). (None, True):
        nobody free within the wait, no live shard, or an unknown store."""
        while True:
            route = await short_step(
                CourierActivities.route_dispatch,
                FindCourierInput(inp.order_id, inp.location_id, list(self._state.tried)),
                options.FORWARD,
                local=self._local,
            )
            if route.zone is None or route.shard is None:
                self._matching = None
                return None, True
            req = MatchRequest(
                inp.order_id, route.zone, route.lat, route.lng, list(self._state.tried)
            )
            self._matching = req
            self._answer = None
            try:
                got = await workflow.execute_activity_method(
                    CourierActivities.request_match,
                    req,
                    task_queue=shard_task_queue(workflow.info().task_queue, route.shard),
                    start_to_close_timeout=MATCH_TIMEOUT,
                    heartbeat_timeout=MATCH_HEARTBEAT,
                    schedule_to_start_timeout=MATCH_SCHEDULE_TO_START,
                    retry_policy=MATCH_RETRY,
                )
            except ActivityError as e:
                if is_cancelled_exception(e):  # the delivery is being cancelled
                    raise asyncio.CancelledError() from e
                # The shard stopped or its queue went unpolled; the order may still be
                # pending, or offered by the zone's next matcher: route and ask again. An
                # answer to that offer keeps waiting (``_matching`` stays set).
                workflow.set_current_details("dispatch shard moved; routing again")
                await workflow.sleep(REROUTE_PAUSE, summary="shard moved")
                continue
            courier = got.courier_id
            if courier is not None:
                if courier not in self._state.tried:
                    self._state.tried.append(courier)
                self._state.offered_to = courier
                self._bound = courier
            self._matching = None  # an answer that waited is judged now
            return courier, True

    async def _withdraw(self, req: MatchRequest) -> None:
        await short_step(
            CourierActivities.withdraw_match, req, options.COMPENSATION, local=self._local
        )

    async def _release_bound(self) -> None:
        """On cancel: free whichever courier may hold this order. An accept being handled
        right now (its assign in flight, the offer already closed) is let finish first, so
        the courier it binds is the one freed, not leaked."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._bound is not None:
            await self._release(self._bound)
            self._bound = None

    async def _release(self, courier: str) -> None:
        await short_step(
            CourierActivities.release_courier,
            CourierOffer(self._inp.order_id, courier),
            options.COMPENSATION,
            local=self._local,
        )

    async def _tell_parent(self, progress: DeliveryProgress) -> None:
        await tell_parent(self._inp.parent_workflow_id, names.SIGNAL_DELIVERY_PROGRESS, progress)

    async def _tell_parent_unless_quiet(self, progress: DeliveryProgress) -> None:
        """Offers made and withdrawn, and the failure (which the result carries too), are told
        to the order only on runs from before ``PATCH_QUIET_DISPATCH``; the assignment always is: it
        must be in the order's history before the courier hears back (the pick-up comes next,
        and the order judges it by the courier it was told of)."""
        if not self._quiet:
            await self._tell_parent(progress)
