"""The README story and the simulated couriers with authentication on, against `tradeflow up`.

The stack is started with ``TRADEFLOW_AUTH=on`` (as docker-compose runs it): the launcher says
so, the seeder places the demo orders with the demo customer's JWT, the courier simulator
polls as the operator and sends each courier's events with a courier token it had issued, and
``scripts/story.sh`` plays courier ``me-1`` with a customer JWT and a courier token, while an
anonymous caller is turned away.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_end_to_end import STORY
from tests.integration.test_launcher import (
    ROOT,
    RunningStack,
    launched,
    launcher_env,
    launcher_redis_url,
)

pytestmark = pytest.mark.slow

DEMO_CUSTOMER = "demo-customer"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("auth-e2e") / "data"
    redis_url = launcher_redis_url()
    env = launcher_env(
        data_dir,
        REDIS_URL=redis_url,
        TRADEFLOW_AUTH="on",
        TRADEFLOW_DEMO="on",
        TRADEFLOW_COURIER_SIMULATOR="on",
        TRADEFLOW_PSP_ACTION_DELAY_S="0",
    )
    with launched(env) as running:
        yield running


def test_the_launcher_says_auth_is_on_and_the_anonymous_are_refused(
    stack: RunningStack,
) -> None:
    assert any(re.search(r"auth:\s+on \(TRADEFLOW_AUTH=on\)", line) for line in stack.output)
    with httpx.Client(base_url=stack.api_url, timeout=10) as http:
        assert http.get("/v1/products").status_code == 200
        for method, path in [("GET", "/v1/couriers"), ("GET", "/v1/orders")]:
            r = http.request(method, path)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_demo_orders_placed_with_a_jwt_are_delivered_by_simulated_couriers_with_tokens(
    stack: RunningStack,
) -> None:
    admin = {"X-Admin-Token": stack.admin_token}
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=stack.api_url, timeout=10, headers=admin) as http:
        while True:
            r = http.get("/v1/orders", params={"customer_id": DEMO_CUSTOMER})
            assert r.status_code == 200, r.text
            statuses = [o["status"] for o in r.json()["items"]]
            if len(statuses) == 2 and set(statuses) == {"DELIVERED"}:
                break
            assert time.monotonic() < deadline, f"{statuses}\n{stack.transcript()}"
            time.sleep(0.5)
        couriers = [o["delivery"]["courier_id"] for o in r.json()["items"]]
        assert all(c.startswith("k-") for c in couriers), couriers


def test_the_story_script_plays_courier_me_1_with_a_jwt_and_a_courier_token(
    stack: RunningStack,
) -> None:
    test_demo_orders_placed_with_a_jwt_are_delivered_by_simulated_couriers_with_tokens(stack)
    env = {
        **os.environ,
        "TRADEFLOW_API_URL": stack.api_url,
        "TRADEFLOW_ADMIN_TOKEN": stack.admin_token,
        "TRADEFLOW_DATA_DIR": str(stack.data_dir),
        "STORY_TIMEOUT_S": "60",
    }
    done = subprocess.run(
        ["bash", str(STORY)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    transcript = f"--- story.sh exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, transcript + stack.transcript()
    assert re.search(r"story: order (\S+) DELIVERED", done.stdout), transcript
