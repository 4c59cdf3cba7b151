"""Customer PII is encrypted in Temporal (infra/codec.py), against the real dev server.

An order placed through the real API and run by the real workers, all with the codec on (as
``infra.temporal.connect`` makes every client and worker), is delivered; then the raw history of
each of its workflows, as the server stores and serves it, holds neither the delivery address
nor its coordinates, while the codec still reads them back, the search attributes still find
the order, and the API's codec endpoint decrypts a payload of that history for an operator.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from api.app import create_app
from cli.history import REPLAY_WORKFLOWS
from domain.messages import CheckoutInput, OrderView
from domain.names import delivery_workflow_id, order_workflow_id
from infra.codec import ENCODING
from infra.temporal import data_converter
from tests.api.helpers import ADMIN_TOKEN, closed_port, make_settings
from tests.conftest import REDIS_URL, TEMPORAL_CLI
from tests.support import MAIN, order_stack, wait_for_view

pytestmark = pytest.mark.slow

ADDRESS = "742 Evergreen Terrace, Springfield"
LAT, LNG = MAIN[0] + 0.0123457, MAIN[1] + 0.0065432


async def raw_history(client: Client, workflow_id: str) -> History:
    """The history exactly as the server serves it (no data converter involved)."""
    history = History()
    token = b""
    while True:
        resp = await client.workflow_service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id),
                next_page_token=token,
            )
        )
        history.events.extend(resp.history.events)
        token = resp.next_page_token
        if not token:
            return history


def plaintexts(value: float) -> list[bytes]:
    """How a coordinate could appear: JSON repr, and rounded forms a log line might use."""
    return [repr(value).encode(), f"{value:.6f}".encode(), f"{value:.5f}".encode()]


async def test_an_order_history_on_the_server_holds_no_address_or_coordinates(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, sqlite_url, REDIS_URL=REDIS_URL)
    assert settings.codec, "the codec is on by default"
    client = Client(**{**dev_env.client.config(), "data_converter": data_converter(settings)})
    assert settings.resolved_codec_key_file.exists()  # created in the data dir on first use

    run = uuid.uuid4().hex[:8]
    sku, customer, courier = f"SKU-codec-{run}", f"c-codec-{run}", f"k-codec-{run}"
    async with order_stack(client, sqlite_url, tmp_path / "psp.db") as stack:
        await stack.seed_product(sku, 1299, 5)
        await stack.seed_courier(courier, 0.5)
        app = create_app(
            settings,
            temporal_client=client,
            orders_task_queue=stack.orders_queue,
            dispatch_task_queue=stack.dispatch_queue,
            migrate_on_start=False,
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=30
            ) as http,
        ):
            r = await http.post(
                "/v1/orders",
                json={
                    "customer_id": customer,
                    "location_id": "main",
                    "items": [{"sku": sku, "quantity": 1}],
                    "delivery": {"address": ADDRESS, "lat": LAT, "lng": LNG},
                    "payment": {"token": "tok_ok"},
                },
                headers={"Idempotency-Key": f"codec-{run}"},
            )
            assert r.status_code == 202, r.text
            order_id = r.json()["order_id"]
            handle = client.get_workflow_handle(order_workflow_id(order_id), result_type=OrderView)
            await wait_for_view(handle, lambda v: v.delivery.offered_to == courier, within=60)
            for event in ("accepted", "picked_up", "delivered"):
                await stack.courier_says(order_id, courier, event)
            view = await handle.result()
            assert view.status == "DELIVERED"

            workflow_ids = [
                order_workflow_id(order_id),
                delivery_workflow_id(order_id),
            ]
            histories = {w: await raw_history(client, w) for w in workflow_ids}
            for workflow_id, history in histories.items():
                raw = history.SerializeToString()
                assert len(history.events) > 5, workflow_id
                assert ADDRESS.encode() not in raw and b"Evergreen" not in raw, workflow_id
                for needle in plaintexts(LAT) + plaintexts(LNG):
                    assert needle not in raw, (workflow_id, needle)
                assert customer.encode() in raw or workflow_id != order_workflow_id(order_id)

            # The payloads are there, encrypted: the order's input decodes to the address.
            started = histories[order_workflow_id(order_id)].events[0]
            assert started.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
            [payload] = started.workflow_execution_started_event_attributes.input.payloads
            assert payload.metadata["encoding"] == ENCODING
            [inp] = await client.data_converter.decode([payload], [CheckoutInput])
            assert (inp.delivery.address, inp.delivery.lat, inp.delivery.lng) == (ADDRESS, LAT, LNG)
            # Without the key the history is unreadable.
            with pytest.raises(Exception, match="encoding"):
                await dev_env.client.data_converter.decode([payload], [CheckoutInput])

            # An encrypted history replays on workers with the key (the replay tests' path).
            replayer = Replayer(workflows=REPLAY_WORKFLOWS, data_converter=client.data_converter)
            for workflow_id in workflow_ids:
                history = await client.get_workflow_handle(workflow_id).fetch_history()
                await replayer.replay_workflow(history)

            # Search attributes are not encoded: visibility still finds the order by them.
            query = f'CustomerId = "{customer}" AND OrderStatus = "DELIVERED"'
            found: list[str] = []
            for _ in range(100):
                found = [w.id async for w in client.list_workflows(query)]
                if found:
                    break
                await asyncio.sleep(0.1)
            assert found == [order_workflow_id(order_id)]

            # The codec endpoint (what the UI calls) decrypts that payload for an operator.
            body = {"payloads": [json_format.MessageToDict(payload)]}
            r = await http.post(
                "/codec/decode",
                json=body,
                headers={"X-Namespace": client.namespace, "X-Admin-Token": ADMIN_TOKEN},
            )
            assert r.status_code == 200, r.text
            [decoded] = r.json()["payloads"]
            plain = json_format.ParseDict(decoded, Payload())
            assert ADDRESS.encode() in plain.data

            # Temporal's own CLI, a remote-codec client like the web UI, over real HTTP.
            port = closed_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
                )
            )
            serving = asyncio.create_task(server.serve())
            try:
                for _ in range(200):
                    if server.started:
                        break
                    await asyncio.sleep(0.05)
                show = [
                    str(TEMPORAL_CLI),
                    "workflow",
                    "show",
                    "--workflow-id",
                    order_workflow_id(order_id),
                    "--address",
                    dev_env.client.service_client.config.target_host,
                    "--namespace",
                    client.namespace,
                    "--output",
                    "json",
                ]
                codec = [
                    "--codec-endpoint",
                    f"http://127.0.0.1:{port}/codec",
                    "--codec-header",
                    f"X-Admin-Token={ADMIN_TOKEN}",
                ]
                for argv, readable in ((show, False), (show + codec, True)):
                    proc = await asyncio.create_subprocess_exec(
                        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
                    )
                    out, err = await proc.communicate()
                    assert proc.returncode == 0, err.decode()
                    first = json.loads(out)["events"][0]
                    [shown] = first["workflowExecutionStartedEventAttributes"]["input"]["payloads"]
                    shown_payload = json_format.ParseDict(shown, Payload())
                    assert (ADDRESS.encode() in shown_payload.data) is readable, argv
                    assert (shown_payload.metadata["encoding"] == ENCODING) is not readable
            finally:
                server.should_exit = True
                await serving
