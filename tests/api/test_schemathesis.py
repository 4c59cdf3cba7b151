"""The live API against its own OpenAPI document, fuzzed by schemathesis.

A `tradeflow up` stack (demo catalogue on, courier simulator off) serves ``/openapi.json``;
``schemathesis run`` sends every operation in it examples, coverage cases and fuzzed requests,
valid and invalid, with the admin token, and every answer must pass: no 5xx but 503 (which the
document declares with ``Retry-After``), a status code the document declares for that route, a
body matching the declared schema (``application/problem+json`` ``Problem`` for every error),
the declared headers, required headers enforced, deleted things gone.

Every check runs, none left out. Two rules no schema can state are applied to schema-valid
cases by ``tests/api/schemathesis_hooks.py``: a fresh ``Idempotency-Key`` each (a key is bound
to its first body) and a PSP webhook signed with the stack's secret (so fuzzed events reach the
handler); invalid cases go out as generated and must be refused.

Bounded: ``SCHEMATHESIS_MAX_EXAMPLES`` [15] cases per operation, fixed seed, one worker; the
module runs in well under two minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_launcher import ROOT, RunningStack, free_port, launched, launcher_env

pytestmark = pytest.mark.slow

MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES") or "15"
SEED = os.environ.get("SCHEMATHESIS_SEED") or "1"
EXCLUDED_CHECKS = os.environ.get("SCHEMATHESIS_EXCLUDE", "")
"""Checks to leave out (comma-separated), for a local investigation only."""


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    env = launcher_env(
        data_dir,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        TRADEFLOW_DEMO="on",
        TRADEFLOW_COURIER_SIMULATOR="off",
        TRADEFLOW_AUTH="off",
        TRADEFLOW_CHECKOUT_RATE="1000/s",
        TRADEFLOW_CHECKOUT_BURST="1000",
    )
    with launched(env) as running:
        yield running


def test_every_route_answers_as_its_openapi_says(live_api: RunningStack, tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "schemathesis"
    proc = subprocess.run(
        [
            str(cli),
            "run",
            f"{live_api.api_url}/openapi.json",
            "--checks",
            "all",
            *(["--exclude-checks", EXCLUDED_CHECKS] if EXCLUDED_CHECKS else []),
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "30",
            "--header",
            f"X-Admin-Token: {live_api.admin_token}",
            "--generation-database",
            "none",
            "--no-color",
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
            "SCHEMATHESIS_WEBHOOK_SECRET": live_api.webhook_secret,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert "API Operations:" in out and "Tested: 0" not in out, out[-3000:]
