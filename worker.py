"""Worker fleet entry point: serves some or all task queues (``TRADEFLOW_TASK_QUEUES``).

    python worker.py                      # every role
    python worker.py --queues dispatch    # only dispatch (scale it separately)

Each process runs one Temporal worker per task queue it serves. SIGINT/SIGTERM stop polling,
let running activities finish (graceful timeout), then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker

from activities.couriers import CourierActivities
from activities.inventory import InventoryActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from domain.names import ALL_TASK_QUEUES, DISPATCH_TASK_QUEUE, ORDERS_TASK_QUEUE
from infra.settings import Settings, get_settings
from store.db import make_engine, make_sessionmaker
from workflows.checkout import OrderWorkflow
from workflows.delivery import DeliveryWorkflow
from workflows.payment import PaymentWorkflow

log = logging.getLogger("tradeflow.worker")

WORKFLOWS_BY_QUEUE: dict[str, list[type]] = {
    ORDERS_TASK_QUEUE: [OrderWorkflow, PaymentWorkflow],
    DISPATCH_TASK_QUEUE: [DeliveryWorkflow],
}


@dataclass
class Dependencies:
    engine: AsyncEngine
    http: httpx.AsyncClient
    psp_url: str

    def activities(self) -> list[Callable[..., Any]]:
        sessions = make_sessionmaker(self.engine)
        inventory = InventoryActivities(sessionmaker=sessions)
        orders = OrderActivities(sessionmaker=sessions)
        couriers = CourierActivities(sessionmaker=sessions)
        payments = PaymentActivities(http=self.http, sessionmaker=sessions, psp_url=self.psp_url)
        return [
            inventory.try_reserve,
            inventory.confirm_reservation,
            inventory.cancel_reservation,
            inventory.return_stock,
            orders.record_order,
            couriers.find_nearest_courier,
            couriers.offer_to_courier,
            couriers.assign_courier,
            couriers.release_courier,
            payments.authorize_payment,
            payments.capture_payment,
            payments.void_payment,
        ]

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.engine.dispose()


def make_dependencies(settings: Settings) -> Dependencies:
    return Dependencies(
        engine=make_engine(settings.async_database_url),
        http=httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0)),
        psp_url=settings.resolved_psp_url,
    )


def build_workers(
    client: Client,
    deps: Dependencies,
    *,
    roles: dict[str, str] | None = None,
    max_concurrent_activities: int = 100,
) -> list[Worker]:
    """One worker per role. ``roles`` maps role (``orders``/``dispatch``) to the task queue name
    it polls; tests pass unique queue names, production uses the names as they are."""
    roles = roles or {q: q for q in ALL_TASK_QUEUES}
    acts = deps.activities()
    return [
        Worker(
            client,
            task_queue=queue,
            workflows=WORKFLOWS_BY_QUEUE[role],
            # Every queue carries every activity: workflows call their own queue's activities.
            activities=acts,
            max_concurrent_activities=max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=10),
        )
        for role, queue in roles.items()
    ]


async def serve(settings: Settings, queues: list[str]) -> None:
    from infra.temporal import connect

    with contextlib.suppress(ImportError):
        from infra.telemetry import setup_tracing

        setup_tracing("tradeflow-worker", settings)
    if settings.worker_metrics_port:
        from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

        Runtime.set_default(
            Runtime(
                telemetry=TelemetryConfig(
                    metrics=PrometheusConfig(
                        bind_address=f"{settings.bind_host}:{settings.worker_metrics_port}"
                    )
                )
            ),
            error_if_already_set=False,
        )
    client = await connect(settings)
    deps = make_dependencies(settings)
    workers = build_workers(client, deps, roles={q: q for q in queues})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker serving %s on %s (%s)",
        ", ".join(queues),
        settings.temporal_address,
        settings.temporal_namespace,
    )
    runs = [asyncio.create_task(w.run()) for w in workers]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*runs, stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("worker stopping")
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    for t in done:
        if t is not stopper and t.exception():
            log.error("worker exited with %r", t.exception())
    await deps.aclose()


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--queues",
        default=settings.task_queues,
        help=f"comma-separated roles to serve, of {', '.join(ALL_TASK_QUEUES)} (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in queues if q not in WORKFLOWS_BY_QUEUE]
    if unknown or not queues:
        parser.error(f"unknown task queue(s) {unknown}; choose from {', '.join(ALL_TASK_QUEUES)}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(settings, queues))


if __name__ == "__main__":
    main()
