"""`tradeflow up` with the payload codec (cli/up.py): the key ring is created in the data dir,
the dev server's UI is pointed at the API's codec endpoint, and the demo orders' histories on
that server are encrypted yet decode through the endpoint, from the UI's origin."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, WorkflowExecution
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client

from infra.codec import ENCODING, KeyRing
from tests.integration.test_launcher import RunningStack, free_port, launched, launcher_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("up-codec") / "data"
    env = launcher_env(
        data_dir,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        TRADEFLOW_DEMO="on",
        TRADEFLOW_COURIER_SIMULATOR="off",
        TRADEFLOW_AUTH="off",
    )
    with launched(env) as running:
        yield running


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def first_input_payload(address: str) -> Payload:
    client = await Client.connect(address)  # no codec: what anyone with server access sees
    for _ in range(100):
        ids = [w.id async for w in client.list_workflows('WorkflowType = "OrderWorkflow"')]
        if ids:
            break
        await asyncio.sleep(0.2)
    assert ids, "the demo placed no order"
    resp = await client.workflow_service.get_workflow_execution_history(
        GetWorkflowExecutionHistoryRequest(
            namespace=client.namespace, execution=WorkflowExecution(workflow_id=ids[0])
        )
    )
    started = resp.history.events[0].workflow_execution_started_event_attributes
    return started.input.payloads[0]


def test_up_creates_the_key_ring_and_points_the_ui_at_the_codec_endpoint(
    stack: RunningStack,
) -> None:
    key_file = stack.data_dir / "codec_keys.json"
    ring = KeyRing.load(key_file)
    assert ring.current in ring.keys
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert any(line.strip().startswith("payload codec:") for line in stack.output)

    argv = cmdline(stack.children["temporal"])
    assert argv[argv.index("--ui-codec-endpoint") + 1] == f"{stack.api_url}/codec"


def test_histories_on_the_server_are_encrypted_and_decode_through_the_endpoint(
    stack: RunningStack,
) -> None:
    payload = asyncio.run(first_input_payload(stack.temporal_address))
    assert payload.metadata["encoding"] == ENCODING
    assert b"delivery" not in payload.SerializeToString()

    body = {"payloads": [json_format.MessageToDict(payload)]}
    with httpx.Client(base_url=stack.api_url, timeout=10) as http:
        preflight = http.options(
            "/codec/decode",
            headers={
                "Origin": stack.ui_url,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == stack.ui_url
        r = http.post(
            "/codec/decode",
            json=body,
            headers={"Origin": stack.ui_url, "X-Namespace": "default"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == stack.ui_url
    [decoded] = r.json()["payloads"]
    plain = json_format.ParseDict(decoded, Payload())
    assert plain.metadata["encoding"] == b"json/plain"
    assert "address" in json.loads(plain.data)["delivery"]
