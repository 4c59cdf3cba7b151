"""Who may call what: every route of the app x every actor → the status api.md promises.

One table (``MATRIX``) says it all; the cases are generated from it, and
``test_every_route_of_the_app_has_a_row`` enumerates ``app.routes`` so a route added without a
row fails. The app is the real one with ``TRADEFLOW_AUTH=on``, on the real Temporal dev server
with the real order workflows and a real database and Redis: customer A's order is offered to
courier A, then every actor calls every route.

Requests that pass the authorization layer are shaped so they change nothing an actor after
them depends on: a cancel with a malformed body (422, after authorization), a courier's
``picked_up`` before ``accepted`` (409 from the workflow), a refund before capture (409), an
order for an unknown SKU (422). So each allowed cell still shows a status that only a request
that got past the checks can produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import mint_token
from domain.roles import Role
from infra.settings import Settings
from store.schema import migrate
from tests.api.helpers import ADMIN_TOKEN, make_settings, order_body
from tests.support import order_stack
from tests.support.shop import stack_api

pytestmark = pytest.mark.slow

JWT_SECRET = "matrix-secret-" + "x" * 32
ACTORS = (
    "anonymous",
    "customer_a",
    "customer_b",
    "courier_of_order",
    "other_courier",
    "merchant",
    "operator",
    "admin_token",
)
# Column order of every row below.
A, CA, CB, KO, KX, M, OP, AT = ACTORS


def row(
    anonymous: int,
    customer_a: int,
    customer_b: int,
    courier_of_order: int,
    other_courier: int,
    merchant: int,
    operator: int,
    admin_token: int,
) -> dict[str, int]:
    return dict(zip(ACTORS, (anonymous, customer_a, customer_b, courier_of_order,
                             other_courier, merchant, operator, admin_token), strict=True))  # fmt: skip


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ACTORS, status)


@dataclass(frozen=True)
class Call:
    path: str
    """With ``{order}``, ``{sku}``, ``{courier_a}``, ``{spare}`` filled in per run."""
    json: Any = None
    headers: dict[str, str] | None = None


ORDER = "/v1/orders/{order}"
# (method, route template) -> (the request, anonymous .. admin token)
MATRIX: dict[tuple[str, str], tuple[Call, dict[str, int]]] = {
    ("GET", "/healthz"): (Call("/healthz"), everyone(200)),
    ("GET", "/readyz"): (Call("/readyz"), everyone(200)),
    ("GET", "/metrics"): (Call("/metrics"), everyone(200)),
    ("GET", "/openapi.json"): (Call("/openapi.json"), everyone(200)),
    ("GET", "/docs"): (Call("/docs"), everyone(200)),
    ("GET", "/docs/oauth2-redirect"): (Call("/docs/oauth2-redirect"), everyone(200)),
    ("GET", "/redoc"): (Call("/redoc"), everyone(200)),
    ("GET", "/v1/products"): (Call("/v1/products"), everyone(200)),
    ("GET", "/v1/products/{sku}"): (Call("/v1/products/{sku}"), everyone(200)),
    ("GET", "/v1/inventory/{sku}"): (Call("/v1/inventory/{sku}"), everyone(200)),
    ("PUT", "/v1/admin/products/{sku}"): (
        Call(
            "/v1/admin/products/{sku}", {"name": "Teapot", "price_cents": 1299, "currency": "USD"}
        ),
        row(401, 403, 403, 403, 403, 403, 200, 200),
    ),
    ("PUT", "/v1/admin/inventory/{sku}"): (
        Call("/v1/admin/inventory/{sku}", {"location_id": "main", "available": 10}),
        row(401, 403, 403, 403, 403, 403, 200, 200),
    ),
    ("PUT", "/v1/admin/locations/{location_id}"): (
        Call("/v1/admin/locations/loc-matrix", {"name": "Annex", "lat": 1.0, "lng": 2.0}),
        row(401, 403, 403, 403, 403, 403, 200, 200),
    ),
    ("PUT", "/v1/admin/couriers/{courier_id}"): (
        Call("/v1/admin/couriers/{spare}", {"lat": 1.0, "lng": 2.0, "available": False}),
        row(401, 403, 403, 403, 403, 403, 200, 200),
    ),
    ("POST", "/v1/admin/couriers/{courier_id}/tokens"): (
        Call("/v1/admin/couriers/{spare}/tokens"),
        row(401, 403, 403, 403, 403, 403, 201, 201),
    ),
    ("DELETE", "/v1/admin/couriers/{courier_id}/tokens"): (
        Call("/v1/admin/couriers/{spare}/tokens"),
        row(401, 403, 403, 403, 403, 403, 200, 200),
    ),
    ("POST", "/v1/admin/orders/{order_id}/repair"): (
        Call("/v1/admin/orders/{order}/repair", {"reason": "checked"}),  # not parked: 409
        row(401, 403, 403, 403, 403, 403, 409, 409),
    ),
    ("POST", "/v1/orders"): (
        # Customer A's own order, for a SKU that does not exist: 422 once authorized.
        Call("/v1/orders", "unknown-sku-order-of-a", {"Idempotency-Key": "matrix"}),
        row(401, 422, 403, 403, 403, 403, 403, 403),
    ),
    ("GET", "/v1/orders"): (Call("/v1/orders"), row(401, 200, 200, 403, 403, 200, 200, 200)),
    ("GET", "/v1/orders/{order_id}"): (Call(ORDER), row(401, 200, 404, 404, 404, 200, 200, 200)),
    ("POST", "/v1/orders/{order_id}/cancel"): (
        Call(ORDER + "/cancel", {"reason": 5}),
        row(401, 422, 404, 404, 404, 422, 422, 422),
    ),
    ("POST", "/v1/orders/{order_id}/refunds"): (
        Call(ORDER + "/refunds", {"amount_cents": 100, "reason": "r"}, {"Idempotency-Key": "m"}),
        row(401, 403, 403, 403, 403, 409, 409, 409),
    ),
    ("GET", "/v1/orders/{order_id}/refunds"): (
        Call(ORDER + "/refunds"),
        row(401, 200, 404, 404, 404, 200, 200, 200),
    ),
    ("GET", "/v1/orders/{order_id}/refunds/{refund_id}"): (
        # No such refund: 404 "has no refund" once authorized, 404 "no such order" before.
        Call(ORDER + "/refunds/r_none"),
        row(401, 404, 404, 404, 404, 404, 404, 404),
    ),
    ("POST", "/v1/deliveries/{order_id}/events"): (
        Call("/v1/deliveries/{order}/events", {"courier_id": "{courier_a}", "type": "picked_up"}),
        row(401, 403, 403, 409, 403, 403, 403, 403),
    ),
    ("GET", "/v1/couriers"): (Call("/v1/couriers"), row(401, 403, 403, 403, 403, 403, 200, 200)),
    ("GET", "/v1/couriers/{courier_id}"): (
        Call("/v1/couriers/{courier_a}"),
        row(401, 403, 403, 200, 403, 403, 200, 200),
    ),
    # The Temporal UI's remote codec: operators only (payloads hold customers' addresses).
    ("POST", "/codec/decode"): (
        Call("/codec/decode", {"payloads": []}),
        row(401, 403, 403, 403, 403, 403, 200, 200),
    ),
    ("POST", "/codec/encode"): (
        Call("/codec/encode", {"payloads": []}),
        row(401, 403, 403, 403, 403, 403, 200, 200),
    ),
    ("POST", "/v1/payments/webhook"): (
        Call("/v1/payments/webhook", {"event_id": "e"}),
        everyone(400),  # the PSP's signature is the credential; none here
    ),
}


def _flat_routes(app: Any) -> list[Any]:
    try:  # FastAPI 0.16x keeps included routers as lazy entries of app.routes
        from fastapi.routing import _iter_included_route_candidates
    except ImportError:  # pragma: no cover - older FastAPI flattens them itself
        return list(app.routes)
    return list(_iter_included_route_candidates(app.routes))


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, template) of every route; the OpenAPI paths double-check the enumeration."""
    out: set[tuple[str, str]] = set()
    for path, operations in app.openapi()["paths"].items():
        out |= {(method.upper(), path) for method in operations}
    for route in _flat_routes(app):
        if isinstance(route, APIRoute | Route):
            for method in route.methods or ():
                if method != "HEAD":
                    out.add((method, route.path))
    return out


def test_every_route_of_the_app_has_a_row(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}"))
    routes = app_routes(app)
    assert routes - MATRIX.keys() == set(), "routes without a row in MATRIX"
    assert MATRIX.keys() - routes == set(), "rows for routes the app does not have"


# ------------------------------------------------------------------------------- the world


@dataclass
class World:
    http: httpx.AsyncClient
    credentials: dict[str, dict[str, str]]
    names: dict[str, str]


@pytest.fixture(scope="module")
async def world(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("matrix")
    db_url = f"sqlite:///{tmp / 'tradeflow.db'}"
    migrate(db_url)
    run = uuid.uuid4().hex[:8]
    names = {
        "sku": f"SKU-{run}",
        "courier_a": f"k-a-{run}",
        "courier_b": f"k-b-{run}",
        "spare": f"k-spare-{run}",
        "customer_a": f"c-a-{run}",
        "customer_b": f"c-b-{run}",
    }
    settings = make_settings(
        tmp,
        db_url,
        TRADEFLOW_AUTH="on",
        TRADEFLOW_JWT_SECRET=JWT_SECRET,
        TRADEFLOW_OFFER_TIMEOUT_S=600,
    )
    async with contextlib.AsyncExitStack() as es:
        stack = await es.enter_async_context(order_stack(dev_env.client, db_url, tmp / "psp.db"))
        await stack.seed_product(names["sku"], 1299, 5)
        await stack.seed_courier(names["courier_a"], 0.1)
        await stack.seed_courier(names["courier_b"], 30.0, available=False)
        await stack.seed_courier(names["spare"], 40.0, available=False)
        http = await es.enter_async_context(stack_api(stack, settings, dev_env.client))
        credentials = _credentials(settings, names)
        r = await http.post(
            f"/v1/admin/couriers/{names['courier_a']}/tokens", headers=credentials[AT]
        )
        assert r.status_code == 201, r.text
        assert r.json()["token"].startswith("tfc_")
        credentials[KO] = {"Authorization": f"Bearer {r.json()['token']}"}

        r = await http.post(
            "/v1/orders",
            json=order_body(names["customer_a"], [(names["sku"], 2)]),
            headers={"Idempotency-Key": "order-a", **credentials[CA]},
        )
        assert r.status_code == 202, r.text
        names["order"] = r.json()["order_id"]
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            r = await http.get(f"/v1/orders/{names['order']}", headers=credentials[OP])
            if r.json()["delivery"]["offered_to"] == names["courier_a"]:
                break
            assert asyncio.get_running_loop().time() < deadline, r.json()
            await asyncio.sleep(0.1)
        yield World(http=http, credentials=credentials, names=names)


def _credentials(settings: Settings, names: dict[str, str]) -> dict[str, dict[str, str]]:
    def bearer(role: Role, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(settings, role, sub)}"}

    return {
        A: {},
        CA: bearer(Role.CUSTOMER, names["customer_a"]),
        CB: bearer(Role.CUSTOMER, names["customer_b"]),
        KX: bearer(Role.COURIER, names["courier_b"]),  # a courier by JWT
        M: bearer(Role.MERCHANT, "m-1"),
        OP: bearer(Role.OPERATOR, "op-1"),
        AT: {"X-Admin-Token": ADMIN_TOKEN},
    }


def _fill(value: Any, names: dict[str, str]) -> Any:
    if value == "unknown-sku-order-of-a":
        return order_body(names["customer_a"], [("SKU-does-not-exist", 1)])
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


CASES = [
    pytest.param(method, template, actor, id=f"{method} {template} as {actor}")
    for (method, template) in MATRIX
    for actor in ACTORS
]


@pytest.mark.parametrize(("method", "template", "actor"), CASES)
async def test_each_actor_gets_what_the_contract_says_on_each_route(
    world: World, method: str, template: str, actor: str
) -> None:
    call, expected = MATRIX[(method, template)]
    r = await world.http.request(
        method,
        _fill(call.path, world.names),
        json=_fill(call.json, world.names),
        headers={**(call.headers or {}), **world.credentials[actor]},
    )
    assert r.status_code == expected[actor], r.text
    if r.status_code in (401, 403) or (r.status_code == 404 and template.startswith("/v1")):
        assert r.headers["content-type"].startswith("application/problem+json")
        assert (
            r.json()["code"]
            == {401: "unauthorized", 403: "forbidden", 404: "not_found"}[r.status_code]
        )
    if r.status_code == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_another_customers_order_looks_exactly_like_one_that_does_not_exist(
    world: World,
) -> None:
    theirs = await world.http.get(
        f"/v1/orders/{world.names['order']}", headers=world.credentials[CB]
    )
    missing = await world.http.get("/v1/orders/o_missing", headers=world.credentials[CB])
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(world.names["order"], "X") == missing.json()[
        "detail"
    ].replace("o_missing", "X")


async def test_a_customer_lists_only_their_own_orders(world: World) -> None:
    mine = await world.http.get("/v1/orders", headers=world.credentials[CA])
    assert [o["order_id"] for o in mine.json()["items"]] == [world.names["order"]]
    theirs = await world.http.get("/v1/orders", headers=world.credentials[CB])
    assert theirs.json()["items"] == []
    asked = await world.http.get(
        "/v1/orders",
        params={"customer_id": world.names["customer_a"]},
        headers=world.credentials[CB],
    )
    assert asked.status_code == 403
    everything = await world.http.get("/v1/orders", headers=world.credentials[M])
    assert world.names["order"] in [o["order_id"] for o in everything.json()["items"]]
