"""The report of a ``tradeflow load`` run: ``load.json`` and PNG plots of throughput and latency
percentiles over time, per status reached (``tradeflow load --report DIR``).

Times are seconds since the run's first request. A status's throughput in a bucket is the
orders that reached it in that bucket over the bucket's length; its latency is from sending an
order to the order reaching the status (for ``ACCEPTED``, the 202 answer), with nearest-rank
percentiles over the orders that reached it in the bucket.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.load import ACCEPTED, PAID, LoadConfig, LoadResult, ms, percentile

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PERCENTILES = (50, 95, 99)
MAX_BUCKETS = 60
"""The bucket grows (whole seconds) so that a long run stays at about this many points."""
JSON_NAME = "load.json"
THROUGHPUT_PNG = "throughput.png"
LATENCY_PNG = "latency.png"


def bucket_seconds(duration_s: float) -> float:
    return float(max(1, math.ceil(duration_s / MAX_BUCKETS)))


def status_order(statuses: list[str]) -> list[str]:
    """ACCEPTED first, PAID last, the rest by name in between (the timeline's order varies
    only for failures)."""
    middle = sorted(s for s in statuses if s not in (ACCEPTED, PAID))
    return [s for s in (ACCEPTED,) if s in statuses] + middle + [PAID] * (PAID in statuses)


def build_report(result: LoadResult, config: LoadConfig) -> dict[str, Any]:
    t0 = result.started_at
    last = max((at for points in result.reached.values() for at, _ in points), default=t0)
    bucket = bucket_seconds(last - t0)
    statuses: dict[str, Any] = {}
    for status in status_order(list(result.reached)):
        points = sorted(result.reached[status])
        latencies = [lat for _, lat in points]
        buckets: dict[int, list[float]] = {}
        for at, lat in points:
            buckets.setdefault(int(max(at - t0, 0.0) // bucket), []).append(lat)
        series = []
        for i in range(int(max(last - t0, 0.0) // bucket) + 1):
            in_bucket = buckets.get(i, [])
            series.append(
                {
                    "t_s": round(i * bucket, 3),
                    "count": len(in_bucket),
                    "per_s": round(len(in_bucket) / bucket, 3),
                    **{f"p{p}_ms": ms(percentile(in_bucket, p)) for p in PERCENTILES},
                }
            )
        span = points[-1][0] - t0 if points else 0.0
        statuses[status] = {
            "count": len(points),
            "per_s": round(len(points) / span, 3) if span > 0 else None,
            **{f"p{p}_ms": ms(percentile(latencies, p)) for p in PERCENTILES},
            "series": series,
        }
    return {
        "run_id": config.run_id,
        "api_url": config.api_url,
        "orders": config.orders,
        "concurrency": config.concurrency,
        "sku": config.sku,
        "started_at": t0,
        "bucket_s": bucket,
        "summary": result.summary(),
        "statuses": statuses,
        "plots": [THROUGHPUT_PNG, LATENCY_PNG],
    }


def write_report(result: LoadResult, config: LoadConfig, out_dir: Path) -> list[Path]:
    """``load.json`` and the two plots in ``out_dir`` (made if missing); their paths."""
    try:
        import matplotlib
    except ImportError as exc:  # a dev dependency: the report is a benchmarking tool
        raise RuntimeError("--report needs matplotlib (pip install 'tradeflow[dev]')") from exc
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(result, config)
    json_path = out_dir / JSON_NAME
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    statuses: dict[str, Any] = report["statuses"]
    title = f"tradeflow load: {config.orders} orders, concurrency {config.concurrency}"

    fig, ax = plt.subplots(figsize=(10, 5))
    for status, data in statuses.items():
        xs = [b["t_s"] for b in data["series"]]
        ax.plot(xs, [b["per_s"] for b in data["series"]], label=status, marker=".")
    _decorate(ax, title, "orders reaching the status per second", bool(statuses))
    fig.tight_layout()
    throughput_path = out_dir / THROUGHPUT_PNG
    fig.savefig(throughput_path, dpi=100)
    plt.close(fig)

    rows = max(len(statuses), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.6 * rows), sharex=True, squeeze=False)
    for ax, (status, data) in zip(axes[:, 0], statuses.items(), strict=False):
        xs = [b["t_s"] for b in data["series"]]
        for p in PERCENTILES:
            ys = [math.nan if b[f"p{p}_ms"] is None else b[f"p{p}_ms"] for b in data["series"]]
            ax.plot(xs, ys, label=f"p{p}", marker=".")
        _decorate(ax, status, "ms since sent", True)
    axes[0, 0].figure.suptitle(f"{title}: latency from sending the order")
    fig.tight_layout()
    latency_path = out_dir / LATENCY_PNG
    fig.savefig(latency_path, dpi=100)
    plt.close(fig)
    return [json_path, throughput_path, latency_path]


def _decorate(ax: Axes, title: str, ylabel: str, legend: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize="small")
