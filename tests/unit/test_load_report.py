"""`tradeflow load --report`: the series per status built from what a run saw."""

from __future__ import annotations

import json
from pathlib import Path

from cli.load import LoadConfig, LoadResult
from cli.load_report import build_report, write_report


def _result() -> LoadResult:
    r = LoadResult(orders=4, concurrency=2, accepted=4, paid=3, started_at=1000.0)
    r.failed = {"FAILED/OUT_OF_STOCK": 1}
    r.submit_s, r.paid_s = 0.5, 2.6
    r.checkout_latencies_s = [0.1, 0.1, 0.2, 0.2]
    for i in range(4):
        r.reach("ACCEPTED", 1000.1 + i * 0.1, 0.1)
    r.reach("RESERVED", 1000.5, 0.5)
    r.reach("RESERVED", 1001.5, 1.4)
    r.reach("RESERVED", 1001.6, 1.4)
    r.reach("FAILED", 1001.2, 1.0)
    r.paid_latencies_s = [0.9, 2.3, 2.6]
    for at, lat in ((1000.9, 0.9), (1002.4, 2.3), (1002.6, 2.6)):
        r.reach("PAID", at, lat)
    return r


def test_each_status_gets_counts_percentiles_and_one_bucket_a_second() -> None:
    report = build_report(_result(), LoadConfig(api_url="http://x", orders=4, concurrency=2))
    assert list(report["statuses"]) == ["ACCEPTED", "FAILED", "RESERVED", "PAID"]
    assert report["bucket_s"] == 1.0
    paid = report["statuses"]["PAID"]
    assert paid["count"] == 3
    assert (paid["p50_ms"], paid["p95_ms"]) == (2300.0, 2600.0)
    assert [(b["t_s"], b["count"]) for b in paid["series"]] == [(0.0, 1), (1.0, 0), (2.0, 2)]
    assert paid["series"][1]["p50_ms"] is None  # nothing reached PAID in that second
    assert paid["series"][2]["p50_ms"] == 2300.0 and paid["series"][2]["per_s"] == 2.0
    accepted = report["statuses"]["ACCEPTED"]
    assert [b["count"] for b in accepted["series"]] == [4, 0, 0]
    assert report["summary"]["paid"] == 3


def test_a_long_run_keeps_about_sixty_buckets(tmp_path: Path) -> None:
    r = LoadResult(orders=2, concurrency=1, accepted=2, paid=2, started_at=0.0)
    r.reach("ACCEPTED", 0.1, 0.1)
    r.reach("PAID", 599.0, 599.0)
    report = build_report(r, LoadConfig(api_url="http://x", orders=2, concurrency=1))
    assert report["bucket_s"] == 10.0
    assert len(report["statuses"]["PAID"]["series"]) == 60


def test_write_report_makes_the_json_and_two_pngs(tmp_path: Path) -> None:
    paths = write_report(
        _result(), LoadConfig(api_url="http://x", orders=4, concurrency=2), tmp_path / "out"
    )
    assert [p.name for p in paths] == ["load.json", "throughput.png", "latency.png"]
    assert json.loads(paths[0].read_text())["statuses"]["PAID"]["count"] == 3
    for png in paths[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
