"""A city of simulated couriers: N of them (``TRADEFLOW_SIM_COURIERS``, 200 for ``make up``)
around several stores, moving, answering offers, travelling to pick up and deliver.

Each courier, played through the public API like a courier app (positions through the admin
API, as an operator's fleet tracker would):

* idles near a store it picked at random: walks towards random points within
  ``radius_km`` of it, reporting its position every ``move_every_s``
  (``PUT /v1/admin/couriers/{id}``, which moves it between zones of the geo index);
* answers an offer after a reaction delay: accepts with probability ``accept_p``, else
  declines (the order goes to another courier);
* once assigned travels to the store and then to the customer at ``speed_kmh`` (times divided
  by ``time_scale``, so a demo does not take real minutes), reporting its position on the way,
  and posts ``picked_up`` and ``delivered`` (the order resource does not show the customer's
  address, so the customer lives at a point drawn per order within ``radius_km`` of the
  store);
* now and then, when idle, goes off shift for a while (``available: false``) and comes back.

Stores are ``TRADEFLOW_SIM_STORES`` (``id:lat:lng,...``); those other than ``main`` (which the
migrations create) are created through ``PUT /v1/admin/locations/{id}``. Random choices come
from one seeded generator (``seed``), so a run is reproducible up to timing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
from dataclasses import dataclass, field

import httpx

from cli.courier_sim import ASSIGNED, OFFERED, CourierSimulator
from store.couriers import haversine_km

log = logging.getLogger("city-sim")

MAIN_LOCATION = "main"


@dataclass(frozen=True)
class Store:
    location_id: str
    lat: float
    lng: float


def parse_stores(text: str) -> list[Store]:
    """``id:lat:lng,id:lat:lng`` -> stores."""
    stores = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            location_id, lat, lng = part.split(":")
            stores.append(Store(location_id, float(lat), float(lng)))
    if not stores:
        raise ValueError("no stores")
    return stores


@dataclass(frozen=True)
class CityConfig:
    couriers: int = 200
    accept_p: float = 0.9
    speed_kmh: float = 25.0
    time_scale: float = 30.0
    """Simulated seconds per real second for travel."""
    radius_km: float = 3.0
    move_every_s: float = 5.0
    """Seconds between position reports while travelling; idle couriers report half as often."""
    reaction_s: tuple[float, float] = (0.3, 2.0)
    off_shift_p: float = 0.01
    """Chance per idle move of going off shift."""
    off_shift_s: tuple[float, float] = (30.0, 120.0)
    seed: int = 8
    prefix: str = "k-city-"


def travel_s(km: float, cfg: CityConfig) -> float:
    """Real seconds a courier takes for ``km`` at the configured speed and time scale."""
    return km / cfg.speed_kmh * 3600.0 / cfg.time_scale


def toward(
    lat: float, lng: float, to_lat: float, to_lng: float, km: float
) -> tuple[float, float, bool]:
    """``km`` along the straight line to the target (lat/lng interpolation is fine at city
    scale); True when the target is reached."""
    left = haversine_km(lat, lng, to_lat, to_lng)
    if left <= km or left == 0:
        return to_lat, to_lng, True
    f = km / left
    return lat + (to_lat - lat) * f, lng + (to_lng - lng) * f, False


def point_near(store: Store, radius_km: float, rng: random.Random) -> tuple[float, float]:
    """A uniformly random point within ``radius_km`` of the store."""
    r = radius_km * math.sqrt(rng.random())
    a = rng.uniform(0, 2 * math.pi)
    dlat = r * math.cos(a) / 111.0
    dlng = r * math.sin(a) / (111.0 * max(math.cos(math.radians(store.lat)), 0.01))
    return store.lat + dlat, store.lng + dlng


@dataclass
class SimCourier:
    courier_id: str
    lat: float
    lng: float
    home: Store
    on_shift: bool = True
    busy: bool = False
    target: tuple[float, float] | None = None
    tripped: set[str] = field(default_factory=set)
    """Orders this courier has answered (one answer per offer)."""


class CityFleet(CourierSimulator):
    """The city: creates its couriers, then every poll hands each one what the table says it
    holds; each courier runs as its own task."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        stores: list[Store],
        config: CityConfig,
        stop: asyncio.Event,
        admin_token: str | None = None,
    ) -> None:
        super().__init__(http, prefix=config.prefix, step_s=0.0, stop=stop, admin_token=admin_token)
        self.cfg = config
        self.stores = {s.location_id: s for s in stores}
        self.rng = random.Random(config.seed)
        self.fleet: dict[str, SimCourier] = {}
        self.held: dict[str, tuple[str, str]] = {}
        """courier -> (order, OFFERED/ASSIGNED) at the last poll."""
        self.answers = {"accepted": 0, "declined": 0, "delivered": 0}

    async def setup(self) -> None:
        while not await self._ready():  # started with the API: wait until it answers
            if await self._pause(0.5):
                return
        for store in self.stores.values():
            if store.location_id != MAIN_LOCATION:
                await self._admin_put(
                    f"/v1/admin/locations/{store.location_id}",
                    {"name": f"Store {store.location_id}", "lat": store.lat, "lng": store.lng},
                )
        homes = list(self.stores.values())
        for i in range(self.cfg.couriers):
            home = homes[i % len(homes)]
            lat, lng = point_near(home, self.cfg.radius_km, self.rng)
            c = SimCourier(f"{self.cfg.prefix}{i + 1:04d}", lat, lng, home)
            self.fleet[c.courier_id] = c
            await self._report(c)
        log.info(
            "%d couriers around %d stores (%s); accept %.0f%%, %.0f km/h x%.0f",
            len(self.fleet),
            len(self.stores),
            ", ".join(self.stores),
            self.cfg.accept_p * 100,
            self.cfg.speed_kmh,
            self.cfg.time_scale,
        )

    async def run(self) -> None:
        await self.setup()
        tasks = [asyncio.create_task(self._live(c)) for c in self.fleet.values()]
        try:
            while not self._stop.is_set():
                couriers = await self._poll()
                if couriers is not None:
                    self.held = {
                        str(c["courier_id"]): (str(c["current_order_id"]), str(c["assignment"]))
                        for c in couriers
                        if c.get("current_order_id") and str(c.get("courier_id")) in self.fleet
                    }
                await self._pause(0.5)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("stopped: %s", self.answers)

    async def _poll(self) -> list[dict[str, object]] | None:
        """Every courier, a page of 1,000 at a time."""
        items: list[dict[str, object]] = []
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 1000}
            if after is not None:
                params["after"] = after
            try:
                r = await self._http.get("/v1/couriers", params=params, headers=self._admin)
                r.raise_for_status()
                page = [c for c in r.json()["items"] if isinstance(c, dict)]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                log.warning("GET /v1/couriers failed: %r", e)
                return None
            items += page
            if len(page) < 1000:
                return items
            after = str(page[-1]["courier_id"])

    async def _live(self, c: SimCourier) -> None:
        while not self._stop.is_set():
            held = self.held.get(c.courier_id)
            if held is not None and held[0] not in c.tripped:
                order_id, assignment = held
                c.tripped.add(order_id)
                if assignment == OFFERED:
                    await self._answer(c, order_id)
                elif assignment == ASSIGNED:  # a simulator restart: finish the trip
                    await self._trip(c, order_id, resume=True)
                continue
            if held is not None:  # answered; the workflow has not moved on yet
                if await self._pause(0.25):
                    return
                continue
            c.tripped.clear()
            if await self._idle_step(c):
                return

    async def _answer(self, c: SimCourier, order_id: str) -> None:
        if await self._pause(self.rng.uniform(*self.cfg.reaction_s)):
            return
        kind = "accepted" if self.rng.random() < self.cfg.accept_p else "declined"
        status = await self._send(c.courier_id, order_id, kind)
        if status not in (200, 202):
            log.info("%s: %s for %s answered %s", c.courier_id, kind, order_id, status)
            return
        self.answers[kind] += 1
        if kind == "accepted":
            await self._trip(c, order_id, resume=False)

    async def _trip(self, c: SimCourier, order_id: str, *, resume: bool) -> None:
        r = await self._http.get(f"/v1/orders/{order_id}", headers=self._admin)
        if r.status_code != 200:
            log.warning("%s: order %s unreadable (%d)", c.courier_id, order_id, r.status_code)
            return
        order = r.json()
        store = self.stores.get(order.get("location_id", ""), c.home)
        # The order resource does not show the customer's address: the customer lives at a
        # point drawn (per order, reproducibly) within ``radius_km`` of the store.
        drop = point_near(store, self.cfg.radius_km, random.Random(f"{self.cfg.seed}:{order_id}"))
        c.busy = True
        try:
            if await self._travel(c, store.lat, store.lng):
                return
            status = await self._send(c.courier_id, order_id, "picked_up")
            if status not in (200, 202) and not (resume and status == 409):
                log.info("%s: picked_up for %s answered %s", c.courier_id, order_id, status)
                return
            if await self._travel(c, *drop):
                return
            if await self._send(c.courier_id, order_id, "delivered") in (200, 202):
                self.answers["delivered"] += 1
        finally:
            c.busy = False
            c.target = None

    async def _travel(self, c: SimCourier, lat: float, lng: float) -> bool:
        """Move to the point, reporting the position every ``move_every_s``; True if stopped."""
        step_km = self.cfg.speed_kmh / 3600.0 * self.cfg.move_every_s * self.cfg.time_scale
        while True:
            km = haversine_km(c.lat, c.lng, lat, lng)
            hop_s = min(self.cfg.move_every_s, travel_s(km, self.cfg))
            if await self._pause(hop_s):
                return True
            c.lat, c.lng, there = toward(c.lat, c.lng, lat, lng, step_km)
            await self._report(c)
            if there:
                return False

    async def _idle_step(self, c: SimCourier) -> bool:
        """One idle move (or a shift change); True if stopped."""
        if c.on_shift and self.rng.random() < self.cfg.off_shift_p:
            c.on_shift = False
            await self._report(c)
            stopped = await self._pause(self.rng.uniform(*self.cfg.off_shift_s))
            c.on_shift = True
            if not stopped:
                await self._report(c)
            return stopped
        if c.target is None:
            c.target = point_near(c.home, self.cfg.radius_km, self.rng)
        step_km = self.cfg.speed_kmh / 3600.0 * 2 * self.cfg.move_every_s * self.cfg.time_scale / 4
        # Offers are answered within a poll, not after a whole move.
        for _ in range(int(2 * self.cfg.move_every_s / 0.25)):
            if await self._pause(0.25):
                return True
            if c.courier_id in self.held:
                return False
        c.lat, c.lng, there = toward(c.lat, c.lng, *c.target, step_km)
        if there:
            c.target = None
        await self._report(c)
        return False

    async def _report(self, c: SimCourier) -> None:
        await self._admin_put(
            f"/v1/admin/couriers/{c.courier_id}",
            {"lat": round(c.lat, 6), "lng": round(c.lng, 6), "available": c.on_shift},
        )

    async def _ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _admin_put(self, path: str, body: dict[str, object]) -> None:
        try:
            r = await self._http.put(path, json=body, headers=self._admin)
            if r.status_code >= 400:
                log.warning("PUT %s: HTTP %d %s", path, r.status_code, r.text[:200])
        except httpx.HTTPError as e:
            log.warning("PUT %s: %r", path, e)


async def simulate_city(
    api_url: str,
    *,
    stores: list[Store],
    config: CityConfig,
    admin_token: str | None,
    also: str | None = None,
    step_s: float = 2.0,
) -> None:
    """Run the city until SIGTERM/SIGINT; ``also``: the plain simulator keeps playing the other
    couriers of that prefix (the demo's seeded ones), accepting at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
        runs: list[CourierSimulator] = [
            CityFleet(http, stores=stores, config=config, stop=stop, admin_token=admin_token)
        ]
        if also is not None:
            runs.append(
                _Others(
                    http,
                    prefix=also,
                    step_s=step_s,
                    stop=stop,
                    admin_token=admin_token,
                    skip=config.prefix,
                )
            )
        await asyncio.gather(*(r.run() for r in runs))


class _Others(CourierSimulator):
    """The plain simulator for the couriers of ``prefix`` that are not the city's."""

    def __init__(self, http: httpx.AsyncClient, *, skip: str, **kw: object) -> None:
        super().__init__(http, **kw)  # type: ignore[arg-type]
        self._skip = skip

    async def _poll(self) -> list[dict[str, object]] | None:
        got = await super()._poll()
        if got is None:
            return None
        return [c for c in got if not str(c.get("courier_id", "")).startswith(self._skip)]
