"""The key API paths again on PostgreSQL (dialect-specific upserts and ON CONFLICT)."""

from __future__ import annotations

import asyncio

import pytest

from tests.api.conftest import ApiFactory
from tests.api.helpers import assert_problem, order_body, unique

pytestmark = pytest.mark.postgres


async def test_idempotent_order_placement_on_postgres(
    api_factory: ApiFactory, postgres_url: str
) -> None:
    async with api_factory(db_url=postgres_url) as api:
        sku = unique("SKU")
        await api.put_product(sku, 250)
        body = order_body(unique("c"), [(sku, 2)])
        responses = await asyncio.gather(
            *(
                api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": "pg"})
                for _ in range(8)
            )
        )
        assert sorted(r.status_code for r in responses) == [200] * 7 + [202]
        assert len({r.json()["order_id"] for r in responses}) == 1
        other = order_body(body["customer_id"], [(sku, 3)])
        r = await api.http.post("/v1/orders", json=other, headers={"Idempotency-Key": "pg"})
        assert_problem(r, 422, "idempotency_key_reused")
        listing = (
            await api.http.get("/v1/orders", params={"customer_id": body["customer_id"]})
        ).json()
        assert [o["order_id"] for o in listing["items"]] == [responses[0].json()["order_id"]]


async def test_admin_upserts_on_postgres(api_factory: ApiFactory, postgres_url: str) -> None:
    async with api_factory(db_url=postgres_url) as api:
        sku = unique("SKU")
        await api.put_product(sku, 100, hot=True)
        assert (await api.http.get(f"/v1/products/{sku}")).json()["price_cents"] == 100
        changed = await api.put_product(sku, 120)
        assert changed["hot"] is True
        assert (await api.http.get(f"/v1/products/{sku}")).json()["price_cents"] == 120

        put = {"location_id": "main", "available": 10}
        r = await api.http.put(f"/v1/admin/inventory/{sku}", json=put, headers=api.admin)
        assert r.status_code == 200, r.text
        await api.sql("UPDATE stock SET available = 6, reserved = 4 WHERE sku = :s", s=sku)
        put["available"] = 2
        r = await api.http.put(f"/v1/admin/inventory/{sku}", json=put, headers=api.admin)
        assert r.json() == {
            "sku": sku,
            "location_id": "main",
            "available": 2,
            "reserved": 4,
            "sold": 0,
        }
        [(stocked,)] = await api.sql("SELECT stocked FROM stock WHERE sku = :s", s=sku)
        assert stocked == 6

        courier = {"lat": 31.2, "lng": 121.4, "available": True}
        r = await api.http.put("/v1/admin/couriers/k-1", json=courier, headers=api.admin)
        assert r.status_code == 200
        r = await api.http.put(
            "/v1/admin/locations/east", json={"name": "East", "lat": 1, "lng": 2}, headers=api.admin
        )
        assert r.status_code == 200
        assert (await api.http.get("/readyz")).status_code == 200
