"""deploy/: the Prometheus scrape config and the Grafana dashboard chart every series that
infra/metrics.py (and the Temporal SDK) export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from infra import metrics

ROOT = Path(__file__).resolve().parents[2]


def test_prometheus_scrapes_the_api_and_the_worker() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"tradeflow-api", "tradeflow-worker"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        (target,) = job["static_configs"][0]["targets"]
        assert re.fullmatch(r"[\w.-]+:\d+", target)


def test_dashboard_charts_every_business_series() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "tradeflow.json").read_text())
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs = " ".join(t["expr"] for t in targets)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for m in (
        metrics.order_status,
        metrics.order_failures,
        metrics.compensations,
        metrics.needs_attention,
        metrics.limiter_refusals,
        metrics.flash_sale_claims,
        metrics.dispatch_offers,
        metrics.dispatch_responses,
        metrics.outbox_backlog,
        metrics.relay_published,
    ):
        assert m._name in exprs, f"the dashboard does not chart {m._name}"
    for h in (metrics.checkout_to_paid, metrics.checkout_to_delivered, metrics.time_to_assign):
        assert f"{h._name}_bucket" in exprs
    assert "tradeflow_circuit_breaker_state" in exprs
    for sdk in ("temporal_workflow_task_schedule_to_start_latency", "temporal_sticky_cache"):
        assert sdk in exprs
