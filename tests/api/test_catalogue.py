"""Products (cached), stock, locations and couriers; admin writes."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from tests.api.helpers import REDIS_URL, Api, assert_problem, unique


async def test_a_product_put_by_admin_is_served(api: Api) -> None:
    sku = unique("SKU")
    put = await api.put_product(sku, 1299, hot=True)
    assert put == {
        "sku": sku,
        "name": f"Product {sku}",
        "price_cents": 1299,
        "currency": "USD",
        "hot": True,
    }
    r = await api.http.get(f"/v1/products/{sku}")
    assert r.status_code == 200
    assert r.json() == put


async def test_unknown_product_is_404(api: Api) -> None:
    assert_problem(await api.http.get(f"/v1/products/{unique('nope')}"), 404, "not_found")


async def test_product_reads_go_through_the_cache_and_a_price_change_invalidates_it(
    api: Api,
) -> None:
    sku = unique("SKU")
    await api.put_product(sku, 1000)
    assert (await api.http.get(f"/v1/products/{sku}")).json()["price_cents"] == 1000

    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        cached = await redis.get(f"catalogue:product:{sku}")
        assert cached is not None and json.loads(cached)["price_cents"] == 1000
        assert 0 < await redis.pttl(f"catalogue:product:{sku}") <= 60_000

        # Behind the cache's back: the API keeps serving the cached price...
        await api.sql("UPDATE products SET price_cents = 1 WHERE sku = :s", s=sku)
        assert (await api.http.get(f"/v1/products/{sku}")).json()["price_cents"] == 1000

        # ...but an admin price change is visible on the very next read.
        await api.put_product(sku, 1500)
        assert await redis.get(f"catalogue:product:{sku}") is None
        assert (await api.http.get(f"/v1/products/{sku}")).json()["price_cents"] == 1500
    finally:
        await redis.delete(f"catalogue:product:{sku}")
        await redis.aclose()


async def test_products_are_paged_by_sku_with_an_opaque_cursor(api: Api) -> None:
    prefix = unique("P")
    skus = [f"{prefix}-{i}" for i in range(5)]
    for sku in reversed(skus):
        await api.put_product(sku)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await api.http.get("/v1/products", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [p["sku"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == skus
    assert pages == 3
    assert (await api.http.get("/v1/products")).json()["next_cursor"] is None  # default 50


async def test_hot_flag_is_kept_when_an_update_omits_it(api: Api) -> None:
    sku = unique("SKU")
    await api.put_product(sku, 100, hot=True)
    assert (await api.put_product(sku, 200))["hot"] is True
    assert (await api.put_product(sku, 200, hot=False))["hot"] is False


async def test_setting_stock_keeps_reserved_and_sold_and_moves_stocked_by_the_delta(
    api: Api,
) -> None:
    sku = unique("SKU")
    await api.put_product(sku)
    r = await api.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "main", "available": 10},
        headers=api.admin,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "sku": sku,
        "location_id": "main",
        "available": 10,
        "reserved": 0,
        "sold": 0,
    }

    # Orders hold 3 and sold 2 meanwhile (the workflows' business, simulated here).
    await api.sql("UPDATE stock SET available = 5, reserved = 3, sold = 2 WHERE sku = :s", s=sku)
    r = await api.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "main", "available": 8},
        headers=api.admin,
    )
    assert r.json() == {"sku": sku, "location_id": "main", "available": 8, "reserved": 3, "sold": 2}
    [(stocked,)] = await api.sql("SELECT stocked FROM stock WHERE sku = :s", s=sku)
    assert stocked == 8 + 3 + 2

    r = await api.http.get(f"/v1/inventory/{sku}", params={"location_id": "main"})
    assert r.json() == {"sku": sku, "location_id": "main", "available": 8, "reserved": 3, "sold": 2}
    assert (await api.http.get(f"/v1/inventory/{sku}")).status_code == 200  # main by default


async def test_stock_for_unknown_product_or_location_is_404(api: Api) -> None:
    sku = unique("SKU")
    r = await api.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "main", "available": 1},
        headers=api.admin,
    )
    assert_problem(r, 404, "not_found")
    await api.put_product(sku)
    r = await api.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "nowhere", "available": 1},
        headers=api.admin,
    )
    assert_problem(r, 404, "not_found")
    assert_problem(await api.http.get(f"/v1/inventory/{sku}"), 404, "not_found")


async def test_locations_are_upserted(api: Api) -> None:
    r = await api.http.put(
        "/v1/admin/locations/north",
        json={"name": "North", "lat": 31.3, "lng": 121.5},
        headers=api.admin,
    )
    assert r.status_code == 200
    assert r.json() == {"location_id": "north", "name": "North", "lat": 31.3, "lng": 121.5}
    r = await api.http.put(
        "/v1/admin/locations/north",
        json={"name": "North 2", "lat": 31.4, "lng": 121.5},
        headers=api.admin,
    )
    assert r.json()["name"] == "North 2"
    sku = unique("SKU")
    await api.put_product(sku)
    r = await api.http.put(
        f"/v1/admin/inventory/{sku}",
        json={"location_id": "north", "available": 4},
        headers=api.admin,
    )
    assert r.status_code == 200


async def test_courier_updates_never_touch_its_offer_or_assignment(api: Api) -> None:
    r = await api.http.put(
        "/v1/admin/couriers/k-1",
        json={"lat": 31.2, "lng": 121.4, "available": True},
        headers=api.admin,
    )
    assert r.status_code == 200
    assert r.json() == {
        "courier_id": "k-1",
        "lat": 31.2,
        "lng": 121.4,
        "available": True,
        "current_order_id": None,
        "assignment": None,
    }
    # Dispatch offers it an order (the delivery workflow's business, simulated here).
    await api.sql(
        "UPDATE couriers SET current_order_id = 'o_1', assignment = 'OFFERED' WHERE courier_id = 'k-1'"
    )
    r = await api.http.put(
        "/v1/admin/couriers/k-1",
        json={"lat": 31.25, "lng": 121.45, "available": False},
        headers=api.admin,
    )
    assert r.json()["current_order_id"] == "o_1"
    assert r.json()["assignment"] == "OFFERED"

    r = await api.http.get("/v1/couriers/k-1")
    assert r.json() == {
        "courier_id": "k-1",
        "lat": 31.25,
        "lng": 121.45,
        "available": False,
        "current_order_id": "o_1",
        "assignment": "OFFERED",
    }
    await api.http.put(
        "/v1/admin/couriers/k-2",
        json={"lat": 31.2, "lng": 121.4, "available": True},
        headers=api.admin,
    )
    listing = (await api.http.get("/v1/couriers")).json()["items"]
    assert [c["courier_id"] for c in listing] == ["k-1", "k-2"]
    available = (await api.http.get("/v1/couriers", params={"available": "true"})).json()["items"]
    assert [c["courier_id"] for c in available] == ["k-2"]
    assert_problem(await api.http.get("/v1/couriers/k-9"), 404, "not_found")
