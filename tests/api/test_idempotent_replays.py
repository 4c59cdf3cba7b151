"""A retry with the same Idempotency-Key and body is answered with the stored order before
anything that may have changed since the first request: the customer's rate limit, the
catalogue. And a stored order that never started is started with exactly its stored input."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client

from domain.messages import CheckoutInput
from domain.names import order_workflow_id
from tests.api.conftest import ApiFactory
from tests.api.helpers import Api, assert_problem, closed_port, order_body, unique


async def place(api: Api, body: dict[str, Any], key: str) -> Any:
    return await api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": key})


async def test_a_rate_limited_customer_retrying_with_its_key_gets_its_stored_order(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(TRADEFLOW_CHECKOUT_RATE="1/h", TRADEFLOW_CHECKOUT_BURST=1) as api:
        sku = unique("SKU")
        await api.put_product(sku)
        customer = unique("c")
        body = order_body(customer, [(sku, 1)])
        first = await place(api, body, "k-1")
        assert first.status_code == 202, first.text
        # The bucket is empty now: a new order is refused...
        assert_problem(
            await place(api, order_body(customer, [(sku, 2)]), "k-2"), 429, "rate_limited"
        )
        # ...but the retry of the accepted one is not a new order.
        again = await place(api, body, "k-1")
        assert again.status_code == 200, again.text
        assert again.json()["order_id"] == first.json()["order_id"]
        # A different body under the used key is still refused as such, not as a rate.
        assert_problem(
            await place(api, order_body(customer, [(sku, 3)]), "k-1"), 422, "idempotency_key_reused"
        )


async def test_a_retry_after_the_catalogue_changed_gets_the_stored_order_at_its_snapshot(
    api: Api,
) -> None:
    cheap, other = unique("SKU"), unique("SKU")
    await api.put_product(cheap, 1000)
    await api.put_product(other, 250)
    body = order_body(unique("c"), [(cheap, 3), (other, 1)])
    first = await place(api, body, "k")
    assert first.status_code == 202, first.text

    # Re-priced now, the cart would be refused twice over: a total past INT4 and two currencies.
    await api.put_product(cheap, 1_000_000_000)  # 3 of them are past INT32_MAX
    await api.put_product(other, 250, currency="EUR")
    again = await place(api, body, "k")
    assert again.status_code == 200, again.text
    order = again.json()
    assert order["order_id"] == first.json()["order_id"]
    assert [(i["sku"], i["unit_price_cents"]) for i in order["items"]] == [
        (cheap, 1000),
        (other, 250),
    ]
    assert order["currency"] == "USD"
    # A new order of the same cart meets today's catalogue.
    assert_problem(await place(api, body, "k-new"), 422, "currency_mismatch")


async def test_an_order_stored_while_temporal_was_down_starts_on_retry_with_its_stored_input(
    api_factory: ApiFactory,
) -> None:
    dead = await Client.connect(f"127.0.0.1:{closed_port()}", lazy=True)
    sku = unique("SKU")
    body = order_body(unique("c"), [(sku, 2)])
    async with api_factory(temporal=dead, TRADEFLOW_PAYMENT_TIMEOUT_S=111) as api:
        await api.put_product(sku, 700)
        assert_problem(await place(api, body, "k"), 503, "temporal_unavailable")
        [(order_id, stored)] = await api.sql(
            "SELECT order_id, checkout_input FROM orders WHERE customer_id = :c",
            c=body["customer_id"],
        )
        assert stored is not None  # the input is durable with the row

    # Temporal is back, but the API now runs other settings, the price moved and the
    # customer is out of tokens: the retry still starts the order it was first given.
    async with api_factory(
        TRADEFLOW_PAYMENT_TIMEOUT_S=222, TRADEFLOW_CHECKOUT_RATE="1/h", TRADEFLOW_CHECKOUT_BURST=1
    ) as api:
        await api.put_product(sku, 900)
        assert (
            await place(api, order_body(body["customer_id"], [(sku, 1)]), "x")
        ).status_code == 202
        r = await place(api, body, "k")
        assert r.status_code == 200, r.text
        assert r.json()["order_id"] == order_id
        assert api.temporal is not None
        handle = api.temporal.get_workflow_handle(order_workflow_id(order_id))
        inp = await handle.query("test_input", result_type=CheckoutInput)
        assert inp.timeouts.payment_timeout_s == 111
        assert [(li.sku, li.quantity, li.unit_price_cents) for li in inp.lines] == [(sku, 2, 700)]
