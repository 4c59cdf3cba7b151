"""Worker fleet entry point: serves some or all task queues (``TRADEFLOW_TASK_QUEUES``).

    python worker.py                      # every role
    python worker.py --queues dispatch    # only dispatch (scale it separately)
    python worker.py --build-id 2026.12.2 # a versioned deploy (TRADEFLOW_WORKER_VERSIONING=on)
    python worker.py --queues dispatch --dispatch-shards 1,2   # zone matchers of shards 1, 2

Each process runs one Temporal worker per task queue it serves. SIGINT/SIGTERM stop polling,
let running activities finish (``TRADEFLOW_WORKER_GRACE_S``), then exit 0. With Worker
Deployment Versioning on, the workers poll as version ``<deployment>:<build id>`` and pin each
workflow to the version that started it (docs/operations.md: rollout and rollback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities.couriers import CourierActivities, DispatchConfig
from activities.inventory import InventoryActivities
from activities.notify import NotifyActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.reconciler import ReconcilerActivities, ensure_reconciler_schedule
from activities.refunds import PaymentActivitiesArgs, RefundActivities
from activities.sweeper import SweeperActivities, ensure_sweeper_schedule
from dispatch.geoindex import CourierGeoIndex
from dispatch.service import ShardRegistry, ShardService, ZoneMatcher, store_zones, zone_redlock
from domain.messages import OrderTimeouts, ReconcileInput
from domain.names import (
    ALL_TASK_QUEUES,
    DISPATCH_TASK_QUEUE,
    ORDERS_TASK_QUEUE,
    shard_task_queue,
)
from infra import eventloop
from infra.breaker import CircuitBreaker
from infra.bytecode import ensure_bytecode
from infra.events import run_relay
from infra.hot_stock import load_hot_counters
from infra.metrics import MetricsInterceptor, poll_gauges, serve_worker_metrics
from infra.ratelimit import GcraLimiter
from infra.redis import make_redis
from infra.settings import Settings, get_settings
from store.db import make_engine, make_sessionmaker
from workflows.checkout import OrderWorkflow
from workflows.delivery import DeliveryWorkflow
from workflows.notify import NotifyMerchantWorkflow
from workflows.payment import PaymentWorkflow
from workflows.reconciler import ReconcileWorkflow
from workflows.refund import RefundWorkflow
from workflows.sweeper import InventorySweepWorkflow

log = logging.getLogger("tradeflow.worker")

WORKFLOWS_BY_QUEUE: dict[str, list[type]] = {
    ORDERS_TASK_QUEUE: [
        OrderWorkflow,
        PaymentWorkflow,
        RefundWorkflow,
        NotifyMerchantWorkflow,
        InventorySweepWorkflow,
        ReconcileWorkflow,
    ],
    DISPATCH_TASK_QUEUE: [DeliveryWorkflow],
}

#: The activities each role's worker registers: those its workflows call (an activity runs on
#: the task queue of the workflow that schedules it). Bound to ``Dependencies`` at start.
ACTIVITIES_BY_QUEUE: dict[str, list[Callable[..., Any]]] = {
    ORDERS_TASK_QUEUE: [
        OrderActivities.record_order,
        InventoryActivities.try_reserve,
        InventoryActivities.confirm_reservation,
        InventoryActivities.cancel_reservation,
        InventoryActivities.return_stock,
        PaymentActivities.authorize_payment,
        PaymentActivities.capture_payment,
        PaymentActivities.void_payment,
        CourierActivities.release_courier,
        RefundActivities.check_refundable_at_psp,
        RefundActivities.send_refund,
        RefundActivities.mark_refund_succeeded,
        RefundActivities.mark_refund_failed,
        RefundActivities.restock_refunded_items,
        NotifyActivities.notify_merchant,
        NotifyActivities.record_notification,
        SweeperActivities.find_stale_reservations,
        SweeperActivities.release_orphaned_reservations,
        SweeperActivities.reconcile_hot_stock,
        ReconcilerActivities.find_orphaned_orders,
        ReconcilerActivities.restart_order,
        ReconcilerActivities.fail_orphaned_order,
        ReconcilerActivities.find_orphaned_refunds,
        ReconcilerActivities.restart_refund,
        ReconcilerActivities.find_unreleased_authorizations,
        ReconcilerActivities.find_stranded_couriers,
        ReconcilerActivities.record_reconciliation,
    ],
    DISPATCH_TASK_QUEUE: [
        CourierActivities.find_nearest_courier,
        CourierActivities.offer_to_courier,
        CourierActivities.assign_courier,
        CourierActivities.release_courier,
        CourierActivities.route_dispatch,
        CourierActivities.withdraw_match,
    ],
}

SHARD_ACTIVITIES: list[Callable[..., Any]] = [CourierActivities.request_match]
"""What a dispatch shard's own task queue (``dispatch-<n>``) serves: the orders of its zones
waiting for their zone matcher's offer."""


SHARD_LINGER_S = 1.5
"""After a stopping shard leaves the ring it keeps polling its queues this long before the
worker drains: a delivery that routed to it just before it left (the route read the ring a
moment earlier) gets its ``request_match`` picked up (the offer comes through Redis from the
zone's next shard, or the activity answers ``ShardMoved`` once the worker drains), instead
of waiting out the match's schedule-to-start timeout on a queue nobody polls."""

PSP_BREAKER_NAME = "psp"
PSP_RATE_PREFIX = "ratelimit:psp"


@dataclass
class Dependencies:
    engine: AsyncEngine
    http: httpx.AsyncClient
    psp_url: str
    redis: aioredis.Redis | None = None
    """Closed by ``aclose`` when set. Without it (tests) PSP calls are neither broken nor
    limited."""
    psp_breaker: CircuitBreaker | None = None
    psp_limiter: GcraLimiter | None = None
    merchant_url: str | None = None
    """Merchant webhook for max-effort notifications; None: notifications are skipped."""
    merchant_secret: str = ""
    zone_resolution: int = 7
    """H3 resolution of the courier geo index (used when ``redis`` is set)."""
    dispatch_redis: aioredis.Redis | None = None
    """The geo index and zone matchers' Redis when it is not ``redis`` (tests: dispatch on
    Redis, stock and PSP guards without); not closed by ``aclose``."""
    dispatch_prefix: str = "dispatch:"
    dispatch_window_s: float = 2.0

    @property
    def _dispatch_redis(self) -> aioredis.Redis | None:
        return self.dispatch_redis if self.dispatch_redis is not None else self.redis

    @property
    def geo(self) -> CourierGeoIndex | None:
        r = self._dispatch_redis
        return None if r is None else CourierGeoIndex(r, self.zone_resolution, self.dispatch_prefix)

    @property
    def dispatch(self) -> DispatchConfig | None:
        r = self._dispatch_redis
        if r is None:
            return None
        return DispatchConfig(r, self.dispatch_prefix, self.dispatch_window_s, self.zone_resolution)

    def shard_services(
        self, shards: Sequence[str], *, lock_urls: list[str], lease_ttl_s: float = 10.0
    ) -> list[ShardService]:
        """A zone matcher service per dispatch shard: heartbeats in the registry (the ring's
        members), matches the zones of the stores the ring gives it, under their leases."""
        redis, geo = self._dispatch_redis, self.geo
        if redis is None or geo is None or not shards:
            return []
        sessions = make_sessionmaker(self.engine)
        lock = zone_redlock(
            lock_urls,
            sessions,
            ttl_ms=int(lease_ttl_s * 1000),
            prefix=f"{self.dispatch_prefix}lock:",
        )
        matcher = ZoneMatcher(
            redis,
            geo,
            sessions,
            lock,
            window_s=max(self.dispatch_window_s, 0.05),
            prefix=self.dispatch_prefix,
        )
        registry = ShardRegistry(redis, prefix=self.dispatch_prefix, ttl_s=lease_ttl_s)
        zones = store_zones(sessions, self.zone_resolution)
        return [
            ShardService(shard, registry, matcher, [], beat_s=lease_ttl_s / 5, zone_source=zones)
            for shard in shards
        ]

    def activities(self, client: Client | None = None) -> list[Callable[..., Any]]:
        """Every activity, bound to these dependencies. ``client`` (the worker's Temporal
        client) is what the sweeper and the reconciler use to ask whether a workflow runs."""
        sessions = make_sessionmaker(self.engine)
        inventory = InventoryActivities(sessionmaker=sessions, redis=self.redis)
        orders = OrderActivities(sessionmaker=sessions)
        couriers = CourierActivities(sessionmaker=sessions, geo=self.geo, dispatch=self.dispatch)
        # One guarded PSP client's arguments for both: the same breaker and rate limiter.
        psp: PaymentActivitiesArgs = {
            "http": self.http,
            "sessionmaker": sessions,
            "psp_url": self.psp_url,
            "breaker": self.psp_breaker,
            "limiter": self.psp_limiter,
        }
        payments = PaymentActivities(**psp)
        refunds = RefundActivities(redis=self.redis, **psp)
        notify = NotifyActivities(
            http=self.http,
            sessionmaker=sessions,
            url=self.merchant_url,
            secret=self.merchant_secret,
        )
        extra: list[Callable[..., Any]] = []
        if client is not None:
            sweeper = SweeperActivities(
                sessionmaker=sessions, client=client, inventory=inventory, redis=self.redis
            )
            reconciler = ReconcilerActivities(
                sessionmaker=sessions,
                client=client,
                payments=payments,
                notify_merchant=self.merchant_url is not None,
            )
            extra = [
                sweeper.find_stale_reservations,
                sweeper.release_orphaned_reservations,
                sweeper.reconcile_hot_stock,
                reconciler.find_orphaned_orders,
                reconciler.restart_order,
                reconciler.fail_orphaned_order,
                reconciler.find_orphaned_refunds,
                reconciler.restart_refund,
                reconciler.find_unreleased_authorizations,
                reconciler.find_stranded_couriers,
                reconciler.record_reconciliation,
            ]
        return [
            *extra,
            notify.notify_merchant,
            notify.record_notification,
            inventory.try_reserve,
            inventory.confirm_reservation,
            inventory.cancel_reservation,
            inventory.return_stock,
            orders.record_order,
            couriers.find_nearest_courier,
            couriers.offer_to_courier,
            couriers.assign_courier,
            couriers.release_courier,
            couriers.route_dispatch,
            couriers.request_match,
            couriers.withdraw_match,
            payments.authorize_payment,
            payments.capture_payment,
            payments.void_payment,
            refunds.check_refundable_at_psp,
            refunds.send_refund,
            refunds.mark_refund_succeeded,
            refunds.mark_refund_failed,
            refunds.restock_refunded_items,
        ]

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def psp_guards(
    redis: aioredis.Redis, settings: Settings, *, key_prefix: str = ""
) -> tuple[CircuitBreaker, GcraLimiter]:
    """The PSP circuit breaker and call-rate limiter, shared by every worker through Redis
    (``key_prefix`` keeps separate fleets, e.g. tests, apart on one Redis)."""
    breaker = CircuitBreaker(
        redis,
        name=PSP_BREAKER_NAME,
        prefix=f"{key_prefix}breaker",
        config=settings.psp_breaker_config(),
    )
    limiter = GcraLimiter(
        redis,
        rate_per_s=settings.psp_rate_per_s,
        burst=settings.psp_burst,
        prefix=f"{key_prefix}{PSP_RATE_PREFIX}",
    )
    return breaker, limiter


def make_dependencies(settings: Settings) -> Dependencies:
    redis = make_redis(settings.redis_url)
    breaker, limiter = psp_guards(redis, settings)
    return Dependencies(
        engine=make_engine(settings.async_database_url),
        http=httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0)),
        psp_url=settings.resolved_psp_url,
        redis=redis,
        psp_breaker=breaker,
        psp_limiter=limiter,
        merchant_url=settings.merchant_webhook_url,
        merchant_secret=settings.resolved_merchant_secret,
        zone_resolution=settings.zone_resolution,
        dispatch_prefix=settings.dispatch_key_prefix,
        dispatch_window_s=settings.dispatch_window_s,
    )


def build_workers(
    client: Client,
    deps: Dependencies,
    *,
    roles: dict[str, str] | None = None,
    max_concurrent_activities: int = 100,
    deployment: WorkerDeploymentConfig | None = None,
    grace_s: float = 10.0,
    dispatch_shards: Sequence[str] = (),
) -> list[Worker]:
    """One worker per role. ``roles`` maps role (``orders``/``dispatch``) to the task queue name
    it polls; tests pass unique queue names, production uses the names as they are.
    ``deployment``: Worker Deployment Versioning (``deployment_config``). With the dispatch
    role, one more worker per shard of ``dispatch_shards`` polls ``<dispatch queue>-<n>``."""
    roles = roles or {q: q for q in ALL_TASK_QUEUES}
    bound = {getattr(a, "__func__", a): a for a in deps.activities(client)}
    versioning: dict[str, Any] = {} if deployment is None else {"deployment_config": deployment}
    shard_workers = [
        Worker(
            client,
            task_queue=shard_task_queue(roles[DISPATCH_TASK_QUEUE], shard),
            activities=[bound[a] for a in SHARD_ACTIVITIES],
            max_concurrent_activities=max(max_concurrent_activities, 1000),
            graceful_shutdown_timeout=timedelta(seconds=grace_s),
            interceptors=[MetricsInterceptor()],
            **versioning,
        )
        for shard in (dispatch_shards if DISPATCH_TASK_QUEUE in roles else ())
    ]
    return shard_workers + [
        Worker(
            client,
            task_queue=queue,
            workflows=WORKFLOWS_BY_QUEUE[role],
            activities=[bound[a] for a in ACTIVITIES_BY_QUEUE[role]],
            max_concurrent_activities=max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=grace_s),
            interceptors=[MetricsInterceptor()],
            **versioning,
        )
        for role, queue in roles.items()
    ]


def resolve_build_id(explicit: str | None = None) -> str:
    """``explicit`` (``--build-id`` / ``TRADEFLOW_BUILD_ID``), else ``<version>-<git commit>``
    of this checkout, else the package version."""
    if explicit:
        return explicit
    try:
        from importlib.metadata import version

        pkg = version("tradeflow")
    except Exception:
        pkg = "0"
    try:
        sha = subprocess.run(  # fixed argv, no shell
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{pkg}-{sha}" if sha else pkg


def deployment_config(settings: Settings, build_id: str) -> WorkerDeploymentConfig | None:
    """Worker Deployment Versioning as ``settings`` ask; None when it is off. Workflows are
    pinned: an order runs to its end on the version that started it."""
    if not settings.worker_versioning:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(settings.deployment_name, build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


async def promote(client: Client, deployment: str, build_id: str, mode: str) -> str:
    """Make ``build_id`` the deployment's current version (``mode`` ``on``), or only when it
    has none (``auto``: the first deploy); what was done. The version exists on the server
    once this process's workers poll, so a missing one is waited for."""
    from temporalio.api.workflowservice.v1 import (
        DescribeWorkerDeploymentRequest,
        SetWorkerDeploymentCurrentVersionRequest,
    )
    from temporalio.service import RPCError

    if mode == "off":
        return "left to the operator"
    for _ in range(120):
        try:
            desc = await client.workflow_service.describe_worker_deployment(
                DescribeWorkerDeploymentRequest(
                    namespace=client.namespace, deployment_name=deployment
                )
            )
            routing = desc.worker_deployment_info.routing_config
            current = routing.current_deployment_version.build_id
            if current == build_id:
                return "already current"
            if current and mode == "auto":
                return f"not promoted ({current} is current)"
            await client.workflow_service.set_worker_deployment_current_version(
                SetWorkerDeploymentCurrentVersionRequest(
                    namespace=client.namespace,
                    deployment_name=deployment,
                    build_id=build_id,
                    conflict_token=desc.conflict_token,
                    identity=client.identity,
                )
            )
            return f"made current (was {current or 'none'})"
        except RPCError as e:  # not registered yet, or a concurrent change: look again
            log.debug("promotion of %s:%s: %s", deployment, build_id, e)
        await asyncio.sleep(0.5)
    return "not promoted (the version did not register in time)"


async def load_hot_stock(deps: Dependencies) -> None:
    """Create the flash-sale counters that are missing (a live counter is left alone). If
    Redis or the DB is not up yet, hot SKUs load their counter on first use instead."""
    if deps.redis is None:
        return
    try:
        await load_hot_counters(make_sessionmaker(deps.engine), deps.redis)
    except (RedisError, OSError, SQLAlchemyError) as e:
        log.warning("hot-SKU counters not loaded at start (loaded on first use): %s", e)


async def rebuild_courier_index(deps: Dependencies) -> None:
    """Free couriers into the geo index from the couriers table (the table is the truth)."""
    geo = deps.geo
    if geo is None:
        return
    try:
        listed = await geo.rebuild(make_sessionmaker(deps.engine))
        log.info("courier geo index rebuilt: %d free couriers", listed)
    except (RedisError, OSError, SQLAlchemyError) as e:
        log.warning("courier geo index not rebuilt at start (table scan meanwhile): %s", e)


async def install_sweeper(client: Client, settings: Settings) -> None:
    """The inventory sweeper schedule exists once per namespace; the first worker creates it."""
    ttl = OrderTimeouts(
        payment_timeout_s=settings.payment_timeout_s, reservation_ttl_s=settings.reservation_ttl_s
    ).effective_reservation_ttl_s
    await _install_schedule(
        "inventory sweeper",
        ensure_sweeper_schedule(
            client, task_queue=ORDERS_TASK_QUEUE, every_s=settings.sweep_interval_s, ttl_s=ttl
        ),
        f"every {settings.sweep_interval_s:.0f}s (TTL {ttl:.0f}s)",
    )


async def install_reconciler(client: Client, settings: Settings) -> None:
    """The reconciler schedule, created or brought to this worker's settings."""
    inp = ReconcileInput(
        grace_s=settings.reconcile_grace_s,
        restart_within_s=settings.reconcile_restart_within_s,
    )
    await _install_schedule(
        "reconciler",
        ensure_reconciler_schedule(
            client, task_queue=ORDERS_TASK_QUEUE, every_s=settings.reconcile_interval_s, inp=inp
        ),
        f"every {settings.reconcile_interval_s:.0f}s"
        f" (grace {inp.grace_s:.0f}s, restart within {inp.restart_within_s:.0f}s)",
    )


async def _install_schedule(what: str, ensure: Awaitable[str], settings_line: str) -> None:
    """Await a schedule's ``ensure_*`` and log what it did; a failure is logged, not raised."""
    try:
        outcome = await ensure
    except Exception as e:  # an old server without schedules must not stop the worker
        log.warning("%s schedule not installed: %s", what, e)
        return
    log.info("%s schedule %s: %s", what, outcome, settings_line)


async def serve(
    settings: Settings,
    queues: list[str],
    build_id: str | None = None,
    shards: Sequence[str] | None = None,
) -> None:
    from infra.temporal import connect

    with contextlib.suppress(ImportError):
        from infra.telemetry import setup_tracing

        setup_tracing("tradeflow-worker", settings)
    if settings.worker_metrics_port:
        # Business metrics (infra.metrics) and the Temporal SDK's own, on one port.
        serve_worker_metrics(settings.bind_host, settings.worker_metrics_port)
    compiled, _ = ensure_bytecode(wf for q in queues for wf in WORKFLOWS_BY_QUEUE[q])
    log.info("workflow sandbox: %d source files served from bytecode", compiled)
    client = await connect(settings)
    deps = make_dependencies(settings)
    await load_hot_stock(deps)
    if DISPATCH_TASK_QUEUE in queues:
        await rebuild_courier_index(deps)
    if ORDERS_TASK_QUEUE in queues:
        await install_sweeper(client, settings)
        await install_reconciler(client, settings)
    build = resolve_build_id(build_id or settings.build_id)
    deployment = deployment_config(settings, build)
    shards = list(settings.dispatch_shard_list if shards is None else shards)
    shards = shards if DISPATCH_TASK_QUEUE in queues else []
    workers = build_workers(
        client,
        deps,
        roles={q: q for q in queues},
        deployment=deployment,
        grace_s=settings.worker_grace_s,
        dispatch_shards=shards,
    )
    services = deps.shard_services(
        shards, lock_urls=settings.lock_redis_url_list, lease_ttl_s=settings.dispatch_lease_ttl_s
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker serving %s%s on %s (%s), build %s, versioning %s, %s loop",
        ", ".join(queues),
        f" (dispatch shards {','.join(shards)})" if shards else "",
        settings.temporal_address,
        settings.temporal_namespace,
        build,
        f"on ({settings.deployment_name}:{build})" if deployment else "off",
        eventloop.loop_in_use(),
    )
    runs = [asyncio.create_task(w.run()) for w in workers]
    background = [
        asyncio.create_task(poll_gauges(make_sessionmaker(deps.engine), deps.psp_breaker, stop))
    ]
    matchers = [asyncio.create_task(svc.run()) for svc in services]
    if ORDERS_TASK_QUEUE in queues:  # the outbox relay (one publishes; see infra/events.py)
        background.append(asyncio.create_task(run_relay(settings, deps.engine, stop)))
    promotion = (
        asyncio.create_task(
            _log_promotion(client, settings.deployment_name, build, settings.promote_on_start)
        )
        if deployment is not None
        else None
    )
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*runs, stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("worker stopping: no new tasks; running activities get %.0fs", settings.worker_grace_s)
    stop.set()
    if promotion is not None:
        promotion.cancel()
    # Zone matchers first: they leave the ring and release their leases at once, so the
    # other shards take the zones over while this worker drains.
    await asyncio.gather(*(svc.stop() for svc in services), return_exceptions=True)
    await asyncio.gather(*matchers, return_exceptions=True)
    if services:
        await asyncio.sleep(SHARD_LINGER_S)
    started = loop.time()
    await asyncio.gather(*(w.shutdown() for w in workers), *background, return_exceptions=True)
    log.info("worker drained in %.1fs", loop.time() - started)
    for t in done:
        if t is not stopper and t.exception():
            log.error("worker exited with %r", t.exception())
    await deps.aclose()


async def _log_promotion(client: Client, deployment: str, build: str, mode: str) -> None:
    log.info("version %s:%s: %s", deployment, build, await promote(client, deployment, build, mode))


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
    parser.add_argument(
        "--build-id",
        default=None,
        help="this code's version for Worker Deployment Versioning "
        "(default: TRADEFLOW_BUILD_ID, else <package version>-<git commit>)",
    )
    parser.add_argument(
        "--dispatch-shards",
        default=settings.dispatch_shards,
        help="with the dispatch role: the dispatch shards (zone matchers and their "
        "dispatch-<n> task queues) this process serves, comma-separated; '' for none "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    shards = [x.strip() for x in args.dispatch_shards.split(",") if x.strip()]
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in queues if q not in WORKFLOWS_BY_QUEUE]
    if unknown or not queues:
        parser.error(f"unknown task queue(s) {unknown}; choose from {', '.join(ALL_TASK_QUEUES)}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    eventloop.run(
        serve(settings, queues, build_id=args.build_id, shards=shards), settings.event_loop
    )


if __name__ == "__main__":
    main()
