"""The courier simulator's handling of an accept whose answer was lost.

Seen in ``test_rollout_drain_and_rollback``: the accept timed out while the dispatch worker
drained, landed anyway, and the repeat was refused (409: the delivery had assigned the courier
and closed). The simulator dropped the order, which then stayed ``COURIER_ASSIGNED``. The API
here is an in-process stand-in (``httpx.MockTransport``) playing that sequence; the real one is
played end to end in tests/integration/test_end_to_end.py and test_worker_deploys.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx

from cli.courier_sim import CourierSimulator


class _Api:
    """The courier's row and the delivery events, as the API would answer them."""

    def __init__(self) -> None:
        self.assignment = "OFFERED"
        self.events: list[tuple[str, int]] = []
        self.accepts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/couriers":
            row = {"courier_id": "k-1", "current_order_id": "o-1", "assignment": self.assignment}
            if self.assignment == "FREE":
                row["current_order_id"] = None
            return httpx.Response(200, json={"items": [row]})
        kind = json.loads(request.content)["type"]
        if kind == "accepted":
            self.accepts += 1
            if self.accepts == 1:  # it lands, but its answer is lost
                self.assignment = "ASSIGNED"
                raise httpx.ReadTimeout("timed out", request=request)
            self.events.append((kind, 409))  # the delivery has closed: no open offer
            return httpx.Response(409, json={"code": "out_of_order"})
        status = 202 if self.assignment == "ASSIGNED" else 409
        if kind == "delivered" and status == 202:
            self.assignment = "FREE"
        self.events.append((kind, status))
        return httpx.Response(status, json={})


async def _play(
    answer: Callable[[httpx.Request], httpx.Response], until: Callable[[], bool], within_s: float
) -> None:
    """Run the simulator against ``answer`` until ``until()`` or ``within_s`` has passed."""
    stop = asyncio.Event()
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(answer), base_url="http://api.test"
    ) as http:
        sim = CourierSimulator(http, prefix="k-", step_s=0.0, stop=stop)
        task = asyncio.create_task(sim.run())
        deadline = asyncio.get_running_loop().time() + within_s
        while asyncio.get_running_loop().time() < deadline:
            if until():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task


async def test_an_accept_that_landed_unseen_is_followed_by_the_pick_up_and_delivery() -> None:
    api = _Api()
    await _play(api, lambda: ("delivered", 202) in api.events, within_s=10)
    assert api.events == [("accepted", 409), ("picked_up", 202), ("delivered", 202)]


async def test_a_refused_accept_of_an_offer_that_went_away_sends_nothing_more() -> None:
    api = _Api()

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            api.assignment = "FREE"  # the offer timed out; the courier is free again
            api.events.append(("accepted", 409))
            return httpx.Response(409, json={"code": "out_of_order"})
        return api(request)

    await _play(refuse, lambda: False, within_s=2.0)  # four polls
    assert api.events == [("accepted", 409)]
