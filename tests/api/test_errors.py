"""Every error is problem+json with a stable code; no input gets a 500."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from tests.api.helpers import Api, assert_problem, order_body, unique


async def test_unknown_route_is_a_404_problem(api: Api) -> None:
    assert_problem(await api.http.get("/v1/nothing-here"), 404, "not_found")


async def test_wrong_method_is_a_405_problem(api: Api) -> None:
    r = await api.http.delete("/v1/products")
    assert_problem(r, 405, "method_not_allowed")
    assert "GET" in r.headers.get("allow", "")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        # Each method of these paths is its own route: Starlette's own 405 named only one.
        ("OPTIONS", "/v1/orders/o-1/refunds", "GET, HEAD, POST"),
        ("PUT", "/v1/admin/couriers/k-1/tokens", "DELETE, POST"),
        ("DELETE", "/v1/orders", "GET, HEAD, POST"),
    ],
)
async def test_a_405_allows_every_method_of_the_path(
    api: Api, method: str, path: str, allow: str
) -> None:
    r = await api.http.request(method, path, headers=api.admin)
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allow


@pytest.mark.parametrize(
    ("price", "accepted"),
    [(1299, True), (1299.0, True), (1299.5, False), (True, False), ("1299", False)],
)
async def test_integers_are_json_schema_integers(api: Api, price: Any, accepted: bool) -> None:
    """``1299.0`` is an integer to JSON Schema (the OpenAPI says ``integer``); a fraction, a
    bool or a string is not, and pydantic's lax coercion must not turn them into one."""
    r = await api.http.put(
        f"/v1/admin/products/{unique('sku')}",
        json={"name": "x", "price_cents": price, "currency": "USD"},
        headers=api.admin,
    )
    if accepted:
        assert r.status_code == 200, r.text
        assert r.json()["price_cents"] == 1299
    else:
        assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize("lng", [False, "121.47", None])
async def test_a_coordinate_is_a_json_number(api: Api, lng: Any) -> None:
    r = await api.http.put(
        "/v1/admin/locations/main",
        json={"name": "Main", "lat": 31.23, "lng": lng},
        headers=api.admin,
    )
    assert_problem(r, 422, "validation_error")


async def test_malformed_json_is_a_422_validation_error(api: Api) -> None:
    r = await api.http.post(
        "/v1/orders",
        content=b'{"customer_id": "c-1", "items": [',
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    body = assert_problem(r, 422, "validation_error")
    assert body["errors"]


async def test_admin_needs_a_token_and_the_right_one(api: Api) -> None:
    body = {"name": "x", "price_cents": 1, "currency": "USD"}
    assert_problem(await api.http.put("/v1/admin/products/S", json=body), 401, "unauthorized")
    r = await api.http.put("/v1/admin/products/S", json=body, headers={"X-Admin-Token": "nope"})
    assert_problem(r, 403, "forbidden")
    r = await api.http.put(
        "/v1/admin/couriers/k",
        json={"lat": 0, "lng": 0, "available": True},
        headers={"X-Admin-Token": ""},
    )
    assert_problem(r, 401, "unauthorized")


def body_with(**overrides: Any) -> dict[str, Any]:
    return order_body("c", [("S", 1)]) | overrides


GARBAGE_BODIES: list[Any] = [
    None,
    [],
    "text",
    12,
    {},
    {"customer_id": None},
    {"customer_id": ["a"], "items": "x"},
    body_with(items=[{"sku": "S", "quantity": "2x"}]),
    body_with(items=[{"sku": "S", "quantity": 10**30}]),
    body_with(items=[{"sku": "S", "quantity": 1.5}]),
    body_with(items=[{"sku": "\u0000", "quantity": 1}]),
    body_with(items=[{"sku": "x" * 65, "quantity": 1}]),
    body_with(items=[[1, 2]]),
    body_with(delivery={"address": "a", "lat": "NaN", "lng": 0}),
    body_with(delivery=None),
    body_with(payment={"token": ""}),
    body_with(customer_id="c" * 129),
    body_with(customer_id="\u0000"),
    body_with(location_id=""),
]


@pytest.mark.parametrize("body", GARBAGE_BODIES)
async def test_garbage_orders_are_422_not_500(api: Api, body: Any) -> None:
    r = await api.http.post("/v1/orders", json=body, headers={"Idempotency-Key": unique("k")})
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("PUT", "/v1/admin/products/S1", b'{"name": "x", "price_cents": -1, "currency": "USD"}'),
        ("PUT", "/v1/admin/products/S1", b'{"name": "x", "price_cents": 1.5, "currency": "USD"}'),
        ("PUT", "/v1/admin/products/S1", b'{"name": "x", "price_cents": 1, "currency": "usd"}'),
        ("PUT", "/v1/admin/products/S1", b'{"name": "x", "price_cents": 1e12, "currency": "USD"}'),
        ("PUT", "/v1/admin/products/S1", b'{"name": "", "price_cents": 1, "currency": "USD"}'),
        ("PUT", "/v1/admin/inventory/S1", b'{"location_id": "main", "available": -1}'),
        ("PUT", "/v1/admin/inventory/S1", b'{"location_id": "main"}'),
        ("PUT", "/v1/admin/locations/L1", b'{"name": "x", "lat": 100, "lng": 0}'),
        ("PUT", "/v1/admin/couriers/k1", b'{"lat": 0, "lng": 0, "available": "yes"}'),
        ("PUT", "/v1/admin/couriers/k1", b'{"lat": Infinity, "lng": 0, "available": true}'),
        (
            "POST",
            "/v1/orders",
            b'{"customer_id": "c", "items": [{"sku": "S", "quantity": 1}], '
            b'"delivery": {"address": "a", "lat": 1e400, "lng": 0}, "payment": {"token": "t"}}',
        ),
        (
            "POST",
            "/v1/orders",
            b'{"customer_id": "c", "items": [{"sku": "S", "quantity": 1}], '
            b'"delivery": {"address": "a", "lat": NaN, "lng": 0}, "payment": {"token": "t"}}',
        ),
        ("POST", "/v1/orders/o_1/cancel", b'{"reason": 5}'),
        ("POST", "/v1/orders/o_1/cancel", b"[]"),
        ("POST", "/v1/deliveries/o_1/events", b'{"courier_id": "k", "type": "teleported"}'),
        ("POST", "/v1/deliveries/o_1/events", b"not json"),
        ("GET", "/v1/products?limit=0", b""),
        ("GET", "/v1/products?limit=201", b""),
        ("GET", "/v1/products?limit=abc", b""),
        ("GET", "/v1/products?cursor=%%%", b""),
        ("GET", "/v1/products?cursor=eyJhIjoxfQ", b""),
        ("GET", "/v1/orders?status=SHIPPED", b""),
        ("GET", "/v1/orders?cursor=bm9wZQ", b""),
        ("GET", "/v1/products/" + "x" * 65, b""),
        ("GET", "/v1/products/a%00b", b""),
        ("GET", "/v1/orders/a%01b", b""),
    ],
)
async def test_malformed_requests_everywhere_are_422(
    api: Api, method: str, path: str, content: bytes
) -> None:
    headers = {"Content-Type": "application/json", "Idempotency-Key": unique("k")} | api.admin
    r = await api.http.request(method, path, content=content or None, headers=headers)
    assert_problem(r, 422, "validation_error")


async def test_database_outage_is_a_503_not_a_500(api: Api) -> None:
    await api.sql("DROP TABLE couriers")  # the nearest thing to a broken database in-process
    r = await api.http.get("/v1/couriers/k-1")
    assert_problem(r, 503, "database_unavailable")
    assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize("bug", [KeyError("a bug"), RuntimeError("a bug")])
async def test_a_bug_in_a_handler_is_a_500_internal_error_with_the_trace_id_it_logged(
    api: Api, caplog: pytest.LogCaptureFixture, bug: Exception
) -> None:
    async def boom() -> None:
        raise bug

    api.app.add_api_route("/test-only/boom", boom)
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        r = await api.http.get("/test-only/boom")
    body = assert_problem(r, 500, "internal_error")
    assert "retry-after" not in r.headers  # a retry would meet the same bug
    trace_id = body["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), trace_id
    [record] = [rec for rec in caplog.records if trace_id in rec.getMessage()]
    assert record.exc_info is not None and record.exc_info[1] is bug


async def test_a_connection_failing_outside_the_clients_is_still_a_503(api: Api) -> None:
    async def unreachable() -> None:
        raise ConnectionRefusedError("nothing listens there")

    api.app.add_api_route("/test-only/unreachable", unreachable)
    r = await api.http.get("/test-only/unreachable")
    assert_problem(r, 503, "internal_unavailable")
    assert r.headers["retry-after"] == "1"
