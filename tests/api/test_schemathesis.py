"""The live API against its own OpenAPI document, fuzzed by schemathesis.

A `tradeflow up` stack (demo catalogue on, courier simulator off) serves ``/openapi.json``;
``schemathesis run`` sends every operation in it examples, coverage cases and fuzzed requests,
valid and invalid, with the admin token, and every answer must pass: no 5xx but 503 (which the
document declares with ``Retry-After``), a status code the document declares for that route, a
body matching the declared schema (``application/problem+json`` ``Problem`` for every error),
the declared headers, required headers enforced, deleted things gone.

Left out, with the reason (see docs/reliability.md):
``positive_data_acceptance`` — business rules no schema can state are refused with 4xx by
design (unknown SKUs, opaque cursors, webhook signatures, strict integers such as ``1.0``);
``negative_data_rejection`` — pydantic's lax coercion accepts ``false`` for a coordinate (0.0);
``allow_header_conformance`` — a 405's ``Allow`` lists one route's methods (Starlette routes
GET and POST of one path separately).

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

from tests.integration.test_launcher import RunningStack, free_port, launched, launcher_env

pytestmark = pytest.mark.slow

MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES") or "15"
SEED = os.environ.get("SCHEMATHESIS_SEED") or "1"
EXCLUDED_CHECKS = "positive_data_acceptance,negative_data_rejection,allow_header_conformance"


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
            "--exclude-checks",
            EXCLUDED_CHECKS,
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
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert "API Operations:" in out and "Tested: 0" not in out, out[-3000:]
