"""POST/GET /v1/orders, cancel: idempotency, validation, rate limits, workflow start, reads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributeKey
from temporalio.converter import DataConverter, DefaultPayloadConverter

from domain.messages import CheckoutInput
from domain.money import DELIVERY_FEE_CENTS
from domain.names import order_workflow_id
from tests.api.conftest import ApiFactory
from tests.api.fakes import SetState
from tests.api.helpers import Api, assert_problem, closed_port, order_body, unique


async def place(api: Api, body: dict[str, Any], key: str | None = None) -> Any:
    return await api.http.post(
        "/v1/orders", json=body, headers={"Idempotency-Key": key or unique("key")}
    )


def handle(api: Api, order_id: str) -> WorkflowHandle[Any, Any]:
    assert api.temporal is not None
    return api.temporal.get_workflow_handle(order_workflow_id(order_id))


async def set_state(api: Api, order_id: str, status: str, courier_id: str | None = None) -> None:
    await handle(api, order_id).execute_update("test_set_state", SetState(status, courier_id))


async def store_status(api: Api, order_id: str, status: str) -> None:
    """What the workflow's record_order activity would write to the read model."""
    [(view,)] = await api.sql("SELECT view FROM orders WHERE order_id = :o", o=order_id)
    view = json.loads(view) if isinstance(view, str) else view
    view["status"] = status
    await api.sql(
        "UPDATE orders SET status = :s, view = :v WHERE order_id = :o",
        s=status,
        v=json.dumps(view),
        o=order_id,
    )


async def test_first_order_is_accepted_with_202_location_and_a_running_workflow(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku, 1299)
    customer = unique("c")
    r = await place(api, order_body(customer, [(sku, 2)]))

    assert r.status_code == 202, r.text
    order = r.json()
    assert r.headers["location"] == f"/v1/orders/{order['order_id']}"
    assert order["order_id"].startswith("o_") and len(order["order_id"]) == 34
    assert order["workflow_id"] == f"order-{order['order_id']}"
    assert order["customer_id"] == customer
    assert order["location_id"] == "main"
    assert order["status"] == "PENDING"
    assert order["failure_reason"] is None
    assert order["items"] == [{"sku": sku, "quantity": 2, "unit_price_cents": 1299}]
    assert order["currency"] == "USD"
    assert order["amounts"] == {
        "subtotal_cents": 2598,
        "delivery_fee_cents": DELIVERY_FEE_CENTS,
        "total_cents": 2598 + DELIVERY_FEE_CENTS,
        "authorized_cents": 0,
        "captured_cents": 0,
        "refunded_cents": 0,
    }
    assert order["payment"] == {"status": "PENDING", "payment_id": None}
    assert order["delivery"] == {"status": "NOT_STARTED", "offered_to": None, "courier_id": None}
    assert order["refunds"] == []
    assert order["timeline"] == [{"status": "PENDING", "at": order["created_at"]}]
    assert order["created_at"].endswith("Z")

    [(status, total, seq)] = await api.sql(
        "SELECT status, total_cents, seq FROM orders WHERE order_id = :o", o=order["order_id"]
    )
    assert (status, total, seq) == ("PENDING", 2598 + DELIVERY_FEE_CENTS, 0)

    h = handle(api, order["order_id"])
    inp = await h.query("test_input", result_type=CheckoutInput)
    assert inp.order_id == order["order_id"]
    assert [(li.sku, li.quantity, li.unit_price_cents) for li in inp.lines] == [(sku, 2, 1299)]
    assert inp.payment_token == "tok_ok"
    assert inp.delivery.address == "1 Main St"
    assert inp.delivery_fee_cents == DELIVERY_FEE_CENTS
    assert inp.created_at == order["created_at"]
    assert inp.timeouts.payment_timeout_s == api.settings.payment_timeout_s
    assert inp.timeouts.max_offers == api.settings.max_offers

    desc = await h.describe()
    sa = desc.typed_search_attributes
    assert sa.get(SearchAttributeKey.for_keyword("OrderStatus")) == "PENDING"
    assert sa.get(SearchAttributeKey.for_keyword("CustomerId")) == customer
    assert sa.get(SearchAttributeKey.for_int("OrderTotalCents")) == 2598 + DELIVERY_FEE_CENTS
    summary = await desc.static_summary()
    assert summary == (f"Order {order['order_id']} for {customer}: 1 lines, total 30.98 USD")


async def test_same_key_and_body_again_is_200_with_the_same_order(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    body = order_body(unique("c"), [(sku, 1)])
    first = await place(api, body, key="k-1")
    again = await place(api, body, key="k-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["order_id"] == first.json()["order_id"]
    assert again.headers["location"] == first.headers["location"]
    rows = await api.sql(
        "SELECT order_id FROM orders WHERE customer_id = :c", c=body["customer_id"]
    )
    assert len(rows) == 1


async def test_concurrent_retries_with_one_key_make_one_order(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    body = order_body(unique("c"), [(sku, 1)])
    responses = await asyncio.gather(*(place(api, body, key="same") for _ in range(10)))
    assert sorted(r.status_code for r in responses) == [200] * 9 + [202]
    assert len({r.json()["order_id"] for r in responses}) == 1
    rows = await api.sql(
        "SELECT order_id FROM orders WHERE customer_id = :c", c=body["customer_id"]
    )
    assert len(rows) == 1


async def test_same_key_with_another_body_is_422_idempotency_key_reused(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    customer = unique("c")
    assert (await place(api, order_body(customer, [(sku, 1)]), key="k")).status_code == 202
    r = await place(api, order_body(customer, [(sku, 2)]), key="k")
    assert_problem(r, 422, "idempotency_key_reused")
    # The key is per customer: another customer may use it.
    assert (await place(api, order_body(unique("c"), [(sku, 2)]), key="k")).status_code == 202


async def test_idempotency_key_is_required_and_bounded(api: Api) -> None:
    body = order_body(unique("c"), [("S", 1)])
    assert_problem(await api.http.post("/v1/orders", json=body), 400, "validation_error")
    r = await api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": "x" * 256})
    assert_problem(r, 400, "validation_error")
    r = await api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": " "})
    assert_problem(r, 400, "validation_error")


async def test_unknown_sku_is_422_before_any_order_or_workflow_exists(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    customer = unique("c")
    missing = unique("NOPE")
    r = await place(api, order_body(customer, [(sku, 1), (missing, 1)]))
    body = assert_problem(r, 422, "unknown_sku")
    assert body["skus"] == [missing]
    assert await api.sql("SELECT 1 FROM orders WHERE customer_id = :c", c=customer) == []


async def test_shape_errors_are_422_validation_error(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    c = unique("c")
    bad = [
        order_body(c, []),
        order_body(c, [(f"{sku}-{i}", 1) for i in range(101)]),
        order_body(c, [(sku, 0)]),
        order_body(c, [(sku, 1)], delivery={"address": "x", "lat": 91, "lng": 0}),
        order_body(c, [(sku, 1)], delivery={"address": "x", "lat": 0, "lng": -181}),
        order_body("", [(sku, 1)]),
    ]
    for body in bad:
        assert_problem(await place(api, body), 422, "validation_error")


async def test_unknown_location_and_mixed_currencies_are_422(api: Api) -> None:
    usd, eur = unique("USD"), unique("EUR")
    await api.put_product(usd, currency="USD")
    await api.put_product(eur, currency="EUR")
    r = await place(api, order_body(unique("c"), [(usd, 1)], location_id="atlantis"))
    assert_problem(r, 422, "unknown_location")
    r = await place(api, order_body(unique("c"), [(usd, 1), (eur, 1)]))
    assert_problem(r, 422, "currency_mismatch")


async def test_repeated_skus_are_merged_into_one_line(api: Api) -> None:
    a, b = unique("A"), unique("B")
    await api.put_product(a, 100)
    await api.put_product(b, 10)
    r = await place(api, order_body(unique("c"), [(a, 1), (b, 2), (a, 3)]))
    assert r.status_code == 202, r.text
    assert r.json()["items"] == [
        {"sku": a, "quantity": 4, "unit_price_cents": 100},
        {"sku": b, "quantity": 2, "unit_price_cents": 10},
    ]
    assert r.json()["amounts"]["subtotal_cents"] == 420


async def test_the_price_is_snapshotted_when_the_order_is_accepted(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku, 1000)
    order = (await place(api, order_body(unique("c"), [(sku, 1)]))).json()
    await api.put_product(sku, 2000)
    got = (await api.http.get(f"/v1/orders/{order['order_id']}")).json()
    assert got["items"][0]["unit_price_cents"] == 1000


async def test_too_many_orders_from_one_customer_are_429_with_retry_after(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(TRADEFLOW_CHECKOUT_RATE="1/h", TRADEFLOW_CHECKOUT_BURST=2) as api:
        sku = unique("SKU")
        await api.put_product(sku)
        customer = unique("c")
        assert (await place(api, order_body(customer, [(sku, 1)]))).status_code == 202
        assert (await place(api, order_body(customer, [(sku, 1)]))).status_code == 202
        r = await place(api, order_body(customer, [(sku, 1)]))
        assert_problem(r, 429, "rate_limited")
        assert r.headers["retry-after"].isdigit()
        assert 3500 <= int(r.headers["retry-after"]) <= 3600  # one token per hour
        # Another customer has a bucket of its own.
        assert (await place(api, order_body(unique("c"), [(sku, 1)]))).status_code == 202


async def test_checkout_fails_open_when_redis_is_down(api_factory: ApiFactory) -> None:
    async with api_factory(
        REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0", TRADEFLOW_CHECKOUT_BURST=1
    ) as api:
        sku = unique("SKU")
        await api.put_product(sku, 700)  # invalidation fails quietly
        assert (await api.http.get(f"/v1/products/{sku}")).json()["price_cents"] == 700
        customer = unique("c")
        for _ in range(3):  # burst 1, yet nothing is limited without Redis
            r = await place(api, order_body(customer, [(sku, 1)]))
            assert r.status_code == 202, r.text


async def test_temporal_down_answers_503_to_a_cancel_and_reads_from_the_read_model(
    api_factory: ApiFactory, dev_env: Any
) -> None:
    dead = await Client.connect(f"127.0.0.1:{closed_port()}", lazy=True)
    async with api_factory(temporal=dead) as api:
        sku = unique("SKU")
        await api.put_product(sku)
        body = order_body(unique("c"), [(sku, 1)])
        assert_problem(await place(api, body), 503, "temporal_unavailable")
        [(order_id,)] = await api.sql(
            "SELECT order_id FROM orders WHERE customer_id = :c", c=body["customer_id"]
        )
        r = await api.http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "changed mind"})
        assert_problem(r, 503, "temporal_unavailable")
        assert r.headers["retry-after"] == "1"
        r = await api.http.get(f"/v1/orders/{order_id}")  # the query fails: the read model answers
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "PENDING"


class _BrokenPayloadConverter(DefaultPayloadConverter):
    """A bug of tradeflow's own inside a Temporal call: the SDK raises it as it is."""

    def to_payloads(self, values: Sequence[Any]) -> list[Payload]:
        raise RuntimeError("a bug: this converter cannot encode anything")


async def test_a_bug_inside_a_temporal_call_is_a_500_not_temporal_unavailable(
    api_factory: ApiFactory, dev_env: Any
) -> None:
    live = dev_env.client
    buggy = Client(
        live.service_client,
        namespace=live.namespace,
        data_converter=dataclasses.replace(
            DataConverter.default, payload_converter_class=_BrokenPayloadConverter
        ),
    )
    async with api_factory(temporal=buggy) as api:
        sku = unique("SKU")
        await api.put_product(sku)
        r = await place(api, order_body(unique("c"), [(sku, 1)]))
        body = assert_problem(r, 500, "internal_error")
        assert "retry-after" not in r.headers
        assert body["trace_id"]


async def test_temporal_down_keeps_the_order_and_a_retry_starts_it(
    api_factory: ApiFactory, dev_env: Any
) -> None:
    dead = await Client.connect(f"127.0.0.1:{closed_port()}", lazy=True)
    body = order_body(unique("c"), [])
    async with api_factory(temporal=dead) as api:
        sku = unique("SKU")
        await api.put_product(sku)
        body["items"] = [{"sku": sku, "quantity": 1}]
        r = await place(api, body, key="k")
        assert_problem(r, 503, "temporal_unavailable")
        assert r.headers["retry-after"] == "1"
        [(order_id,)] = await api.sql(
            "SELECT order_id FROM orders WHERE customer_id = :c", c=body["customer_id"]
        )

    async with api_factory() as api:  # same database, Temporal back
        r = await place(api, body, key="k")
        assert r.status_code == 200, r.text
        assert r.json()["order_id"] == order_id
        inp = await handle(api, order_id).query("test_input", result_type=CheckoutInput)
        assert inp.order_id == order_id


async def test_get_reflects_transitions_before_the_read_model_has_them(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    order_id = (await place(api, order_body(unique("c"), [(sku, 1)]))).json()["order_id"]
    await set_state(api, order_id, "RESERVED")

    got = (await api.http.get(f"/v1/orders/{order_id}")).json()
    assert got["status"] == "RESERVED"  # from the workflow
    [(stored,)] = await api.sql("SELECT status FROM orders WHERE order_id = :o", o=order_id)
    assert stored == "PENDING"


async def test_get_of_a_terminal_order_is_served_from_the_read_model(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    order_id = (await place(api, order_body(unique("c"), [(sku, 1)]))).json()["order_id"]
    await store_status(api, order_id, "DELIVERED")
    got = (await api.http.get(f"/v1/orders/{order_id}")).json()
    assert got["status"] == "DELIVERED"


async def test_get_unknown_order_is_404(api: Api) -> None:
    assert_problem(await api.http.get("/v1/orders/o_nope"), 404, "not_found")


async def test_orders_are_listed_newest_first_and_filtered(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    alice, bob = unique("alice"), unique("bob")
    ids = []
    for _ in range(3):
        ids.append((await place(api, order_body(alice, [(sku, 1)]))).json()["order_id"])
    await place(api, order_body(bob, [(sku, 1)]))

    r = await api.http.get("/v1/orders", params={"customer_id": alice, "limit": 2})
    assert r.status_code == 200
    page1 = r.json()
    assert [o["order_id"] for o in page1["items"]] == ids[::-1][:2]
    assert page1["next_cursor"]
    page2 = (
        await api.http.get(
            "/v1/orders", params={"customer_id": alice, "limit": 2, "cursor": page1["next_cursor"]}
        )
    ).json()
    assert [o["order_id"] for o in page2["items"]] == [ids[0]]
    assert page2["next_cursor"] is None

    await store_status(api, ids[1], "CANCELLED")
    r = await api.http.get("/v1/orders", params={"customer_id": alice, "status": "CANCELLED"})
    assert [o["order_id"] for o in r.json()["items"]] == [ids[1]]
    everyone = (await api.http.get("/v1/orders")).json()["items"]
    assert len(everyone) == 4


async def test_cancel_before_pickup_is_accepted_and_repeating_it_is_200(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    order_id = (await place(api, order_body(unique("c"), [(sku, 1)]))).json()["order_id"]
    await set_state(api, order_id, "COURIER_ASSIGNED", courier_id="k-1")

    r = await api.http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "CANCELLED"
    again = await api.http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "again"})
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "CANCELLED"


async def test_cancel_after_pickup_is_409_not_cancellable(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    order_id = (await place(api, order_body(unique("c"), [(sku, 1)]))).json()["order_id"]
    await set_state(api, order_id, "OUT_FOR_DELIVERY")
    r = await api.http.post(f"/v1/orders/{order_id}/cancel", json={"reason": "late"})
    body = assert_problem(r, 409, "not_cancellable")
    assert body["order_status"] == "OUT_FOR_DELIVERY"


async def test_cancel_after_the_workflow_closed_answers_from_the_read_model(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    cancelled = (await place(api, order_body(unique("c"), [(sku, 1)]))).json()["order_id"]
    delivered = (await place(api, order_body(unique("c"), [(sku, 1)]))).json()["order_id"]

    assert (
        await api.http.post(f"/v1/orders/{cancelled}/cancel", json={"reason": "x"})
    ).status_code == 200
    await set_state(api, delivered, "DELIVERED")
    for order_id, final in ((cancelled, "CANCELLED"), (delivered, "DELIVERED")):
        await store_status(api, order_id, final)
        await handle(api, order_id).signal("test_finish")
        assert await handle(api, order_id).result() == final

    r = await api.http.post(f"/v1/orders/{cancelled}/cancel", json={"reason": "again"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "CANCELLED"
    r = await api.http.post(f"/v1/orders/{delivered}/cancel", json={"reason": "too late"})
    assert_problem(r, 409, "not_cancellable")


async def test_cancel_unknown_order_is_404(api: Api) -> None:
    r = await api.http.post("/v1/orders/o_nope/cancel", json={"reason": "x"})
    assert_problem(r, 404, "not_found")
