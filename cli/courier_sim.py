"""Simulated couriers: accept every offer, pick up and deliver, a few seconds apart.

Plays the couriers whose ids start with ``TRADEFLOW_SIM_COURIER_PREFIX`` (default ``k-``), so
real couriers (or a person with curl) can use other ids next to it. It only talks to the public
API, exactly like a courier app: it polls ``GET /v1/couriers`` and posts delivery events.

With the admin token (``TRADEFLOW_ADMIN_TOKEN`` or the data dir's) it works whether
authentication is on or off: it polls as the operator and, like an operator handing out
devices, issues each courier it plays a courier token (``POST /v1/admin/couriers/{id}/tokens``)
that the courier's events carry; a token refused later (revoked) is replaced once.

Run it with ``python -m cli.courier_sim`` or ``tradeflow courier-sim``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

import httpx

from infra.settings import get_settings

log = logging.getLogger("courier-sim")

POLL_INTERVAL_S = 0.5
OFFERED = "OFFERED"
ASSIGNED = "ASSIGNED"
FROM_OFFER = ("accepted", "picked_up", "delivered")
#: After a simulator restart an accepted order may be before or after pick-up; try both.
RESUME_ASSIGNED = ("picked_up", "delivered")


def courier_prefix() -> str:
    return get_settings().sim_courier_prefix


class CourierSimulator:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        prefix: str,
        step_s: float,
        stop: asyncio.Event,
        admin_token: str | None = None,
    ) -> None:
        self._http = http
        self._admin = {"X-Admin-Token": admin_token} if admin_token else {}
        self._tokens: dict[str, str] = {}
        """Courier tokens issued to the couriers played, by courier id."""
        self._prefix = prefix
        self._step_s = step_s
        self._stop = stop
        self._handled: set[tuple[str, str]] = set()
        """(courier, order) pairs already taken on, so an offer is played once."""
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._poll_failures = 0

    async def run(self) -> None:
        log.info("playing couriers %s* against %s", self._prefix, self._http.base_url)
        try:
            while not self._stop.is_set():
                await self.tick()
                await self._pause(POLL_INTERVAL_S)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            log.info("stopped")

    async def tick(self) -> None:
        couriers = await self._poll()
        if couriers is None:
            return
        current: set[tuple[str, str]] = set()
        for c in couriers:
            courier_id, order_id = c.get("courier_id"), c.get("current_order_id")
            if not isinstance(courier_id, str) or not courier_id.startswith(self._prefix):
                continue
            if not isinstance(order_id, str) or not order_id:
                continue
            key = (courier_id, order_id)
            current.add(key)
            if key in self._handled:
                continue
            assignment = c.get("assignment")
            if assignment == OFFERED:
                steps: Sequence[str] = FROM_OFFER
            elif assignment == ASSIGNED:
                steps = RESUME_ASSIGNED
                log.info("%s holds order %s already; resuming the delivery", courier_id, order_id)
            else:
                continue
            self._handled.add(key)
            self._tasks[key] = asyncio.create_task(self._play(courier_id, order_id, steps))
        for key in [k for k, t in self._tasks.items() if t.done()]:
            del self._tasks[key]
        # Forget pairs that are finished and no longer shown, so the set does not grow forever.
        self._handled = {k for k in self._handled if k in current or k in self._tasks}

    async def _poll(self) -> list[dict[str, object]] | None:
        try:
            r = await self._http.get("/v1/couriers", headers=self._admin)
            r.raise_for_status()
            items = r.json()["items"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self._poll_failures += 1
            if self._poll_failures in (1, 10) or self._poll_failures % 120 == 0:
                log.warning(
                    "GET /v1/couriers failed (%d times so far): %r", self._poll_failures, exc
                )
            return None
        if self._poll_failures:
            log.info("API answers again")
            self._poll_failures = 0
        return [c for c in items if isinstance(c, dict)]

    async def _play(self, courier_id: str, order_id: str, steps: Sequence[str]) -> None:
        resuming = steps is RESUME_ASSIGNED
        for kind in steps:
            if await self._pause(self._step_s):
                return
            status = await self._send(courier_id, order_id, kind)
            if status is None:
                return
            if status in (200, 202):
                log.info("%s %s order %s", courier_id, kind, order_id)
            elif status == 409 and resuming and kind == "picked_up":
                log.info("%s: order %s is past pick-up already", courier_id, order_id)
            elif status == 409 and kind == "accepted":
                # Refused, or taken already: an accept whose answer was lost (a timeout while
                # the dispatch worker drained) and was sent again meets a delivery that has
                # assigned the courier and closed. The next poll decides from the courier's
                # row: ASSIGNED to this order, it resumes at the pick-up; free, nothing.
                log.info(
                    "%s: accept of order %s refused (409); the next poll looks again",
                    courier_id,
                    order_id,
                )
                self._handled.discard((courier_id, order_id))
                return
            elif status == 409:
                log.info(
                    "%s: %s for order %s refused (409); dropping it", courier_id, kind, order_id
                )
                return
            else:
                log.warning(
                    "%s: %s for order %s answered %d; dropping it",
                    courier_id,
                    kind,
                    order_id,
                    status,
                )
                return

    async def _send(self, courier_id: str, order_id: str, kind: str) -> int | None:
        """POST one event; retry network errors and 5xx until it lands or we are stopped."""
        attempts = 0
        while not self._stop.is_set():
            attempts += 1
            try:
                r = await self._http.post(
                    f"/v1/deliveries/{order_id}/events",
                    json={"courier_id": courier_id, "type": kind},
                    headers=await self._credentials(courier_id),
                )
            except httpx.HTTPError as exc:
                if attempts in (1, 10) or attempts % 120 == 0:
                    log.warning(
                        "%s: %s for order %s: %r; retrying", courier_id, kind, order_id, exc
                    )
            else:
                if r.status_code == 401 and self._tokens.get(courier_id) and attempts < 3:
                    del self._tokens[courier_id]  # revoked: the next attempt gets a fresh one
                elif r.status_code < 500 and r.status_code != 429:
                    return r.status_code
                if attempts in (1, 10) or attempts % 120 == 0:
                    log.warning(
                        "%s: %s for order %s answered %d; retrying",
                        courier_id,
                        kind,
                        order_id,
                        r.status_code,
                    )
            if await self._pause(POLL_INTERVAL_S):
                break
        return None

    async def _credentials(self, courier_id: str) -> dict[str, str]:
        """``Authorization`` for the courier's events (none without the admin token)."""
        if not self._admin:
            return {}
        if courier_id not in self._tokens:
            r = await self._http.post(
                f"/v1/admin/couriers/{courier_id}/tokens", headers=self._admin
            )
            if r.status_code != 201:
                log.warning("no courier token for %s: HTTP %d", courier_id, r.status_code)
                return {}
            self._tokens[courier_id] = r.json()["token"]
        return {"Authorization": f"Bearer {self._tokens[courier_id]}"}

    async def _pause(self, seconds: float) -> bool:
        """Sleep; True when told to stop meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True


async def simulate(
    api_url: str, *, prefix: str, step_s: float, admin_token: str | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with httpx.AsyncClient(base_url=api_url, timeout=5) as http:
        await CourierSimulator(
            http, prefix=prefix, step_s=step_s, stop=stop, admin_token=admin_token
        ).run()


HELP = "play the simulated couriers (ids starting with TRADEFLOW_SIM_COURIER_PREFIX)"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser("courier-sim", help=HELP, description=HELP)


def run(args: argparse.Namespace | None = None) -> int:
    from infra.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    settings = load_settings()
    if settings.sim_couriers > 0:
        from cli.city_sim import CityConfig, parse_stores, simulate_city

        config = CityConfig(
            couriers=settings.sim_couriers,
            accept_p=settings.sim_accept_p,
            speed_kmh=settings.sim_speed_kmh,
            time_scale=settings.sim_time_scale,
            prefix=f"{courier_prefix()}city-",
        )
        asyncio.run(
            simulate_city(
                settings.resolved_api_url,
                stores=parse_stores(settings.sim_stores),
                config=config,
                admin_token=settings.resolved_admin_token,
                also=courier_prefix(),
                step_s=settings.courier_step_s,
            )
        )
        return 0
    asyncio.run(
        simulate(
            settings.resolved_api_url,
            prefix=courier_prefix(),
            step_s=settings.courier_step_s,
            admin_token=settings.resolved_admin_token,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
