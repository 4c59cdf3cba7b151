"""Demo catalogue, stock and couriers, written through the admin API (so caches stay right).

Seeding never takes back what happened since: the first run for a database writes everything
and leaves a marker ``<data>/.seeded``; later runs only create what is missing, so a second
``tradeflow up`` keeps stock levels, prices and couriers as earlier orders and operators left
them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cli.procs import say

MAIN_LOCATION = "main"
MAIN_LAT, MAIN_LNG = 31.2304, 121.4737
DEMO_CUSTOMER = "demo-customer"


@dataclass(frozen=True)
class DemoProduct:
    sku: str
    name: str
    price_cents: int
    stock: int
    hot: bool = False
    """Flash-sale SKU: pre-deducted in Redis before the database reservation."""


DEMO_PRODUCTS = (
    DemoProduct("SKU-1", "Espresso beans 1kg", 1299, stock=100),
    DemoProduct("SKU-2", "Oat milk 1l", 249, stock=200),
    DemoProduct("SKU-3", "Sourdough loaf", 450, stock=50),
    DemoProduct("SKU-4", "Avocados, pack of 4", 599, stock=80),
    DemoProduct("SKU-5", "Dark chocolate 100g", 349, stock=150),
    DemoProduct("SKU-6", "Limited-edition grinder", 4999, stock=10, hot=True),
)

#: Couriers around the main store (offsets of a few hundred metres).
DEMO_COURIERS = {
    "k-1": (0.0020, 0.0015),
    "k-2": (-0.0030, 0.0025),
    "k-3": (0.0045, -0.0020),
    "k-4": (-0.0015, -0.0040),
    "k-5": (0.0060, 0.0050),
}


class SeedError(Exception):
    pass


def _marker(data_dir: Path) -> Path:
    return data_dir / ".seeded"


def is_first_seed(data_dir: Path, database: str) -> bool:
    """True unless this data dir was seeded before for the same database."""
    try:
        recorded = json.loads(_marker(data_dir).read_text()).get("database")
    except (FileNotFoundError, ValueError, AttributeError):
        return True
    return recorded != database


def seed_demo(
    api_url: str,
    admin_token: str,
    *,
    data_dir: Path,
    database: str,
    place_orders: bool = True,
    report: Callable[[str], None] = say,
) -> None:
    """Write the demo data through the admin API; raise ``SeedError`` if the API refuses."""
    first = is_first_seed(data_dir, database)
    headers = {"X-Admin-Token": admin_token}
    with httpx.Client(base_url=api_url, headers=headers, timeout=10) as http:
        created: list[str] = []

        def missing(path: str, **params: str) -> bool:
            if first or _get(http, path, params) == 404:
                created.append(path.rsplit("/", 2)[-2] + " " + path.rsplit("/", 1)[-1])
                return True
            return False

        if first:
            body = {"name": "Main store", "lat": MAIN_LAT, "lng": MAIN_LNG}
            _put(http, f"/v1/admin/locations/{MAIN_LOCATION}", body)
        for p in DEMO_PRODUCTS:
            if missing(f"/v1/products/{p.sku}"):
                body = {
                    "name": p.name,
                    "price_cents": p.price_cents,
                    "currency": "USD",
                    "hot": p.hot,
                }
                _put(http, f"/v1/admin/products/{p.sku}", body)
            if missing(f"/v1/inventory/{p.sku}", location_id="main"):
                _put(
                    http,
                    f"/v1/admin/inventory/{p.sku}",
                    {"location_id": "main", "available": p.stock},
                )
        for courier_id, (dlat, dlng) in DEMO_COURIERS.items():
            if missing(f"/v1/couriers/{courier_id}"):
                body = {"lat": MAIN_LAT + dlat, "lng": MAIN_LNG + dlng, "available": True}
                _put(http, f"/v1/admin/couriers/{courier_id}", body)
        if first and place_orders:
            _place_demo_orders(http, report, customer_token())
    if first:
        report(
            f"seeded demo catalogue: {len(DEMO_PRODUCTS)} products with stock at 'main', "
            f"couriers {', '.join(DEMO_COURIERS)}"
        )
    elif created:
        report(f"demo data already seeded; re-created what was missing: {', '.join(created)}")
    else:
        report("demo data already seeded for this data dir; kept stock and prices as they are")
    _marker(data_dir).write_text(json.dumps({"database": database}) + "\n")


def customer_token() -> dict[str, str]:
    """The demo customer's ``Authorization`` (a JWT for the local secret), for an API with
    authentication on; empty when no local secret can sign one (a public-key issuer)."""
    from api.auth import mint_token
    from domain.roles import Role
    from infra.settings import load_settings

    try:
        return {
            "Authorization": f"Bearer {mint_token(load_settings(), Role.CUSTOMER, DEMO_CUSTOMER)}"
        }
    except ValueError:
        return {}


def _place_demo_orders(
    http: httpx.Client, report: Callable[[str], None], auth: dict[str, str]
) -> None:
    """Two orders so the UI has something to show; best effort (the key makes them idempotent)."""
    orders = [
        (
            "demo-order-1",
            [{"sku": "SKU-2", "quantity": 2}, {"sku": "SKU-3", "quantity": 1}],
            "tok_ok",
        ),
        ("demo-order-2", [{"sku": "SKU-5", "quantity": 3}], "tok_action"),
    ]
    for key, items, token in orders:
        body = {
            "customer_id": DEMO_CUSTOMER,
            "location_id": "main",
            "items": items,
            "delivery": {"address": "1 Demo Street", "lat": 31.2330, "lng": 121.4760},
            "payment": {"token": token},
        }
        try:
            r = http.post("/v1/orders", json=body, headers={"Idempotency-Key": key, **auth})
        except httpx.HTTPError as exc:
            report(f"warning: demo order {key} not placed: {exc!r}")
            continue
        if r.status_code in (200, 202):
            report(f"placed demo order {r.json().get('order_id')} ({token})")
        else:
            report(f"warning: demo order {key} not placed: HTTP {r.status_code} {r.text[:200]}")


def _get(http: httpx.Client, path: str, params: dict[str, str]) -> int:
    try:
        return http.get(path, params=params).status_code
    except httpx.HTTPError as exc:
        raise SeedError(f"GET {path} failed: {exc!r}") from exc


def _put(http: httpx.Client, path: str, body: dict[str, object]) -> None:
    try:
        r = http.put(path, json=body)
    except httpx.HTTPError as exc:
        raise SeedError(f"PUT {path} failed: {exc!r}") from exc
    if r.status_code != 200:
        raise SeedError(f"PUT {path} answered HTTP {r.status_code}: {r.text[:300]}")


# `tradeflow seed`: the same against a running API (e.g. one started without the launcher).
HELP = "write the demo catalogue, stock and couriers through the admin API"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("seed", help=HELP, description=HELP)
    parser.add_argument(
        "--no-orders", action="store_true", help="do not place the two demo orders on first seed"
    )


def run(args: argparse.Namespace) -> int:
    from infra.settings import load_settings

    settings = load_settings()
    try:
        seed_demo(
            settings.resolved_api_url,
            settings.resolved_admin_token,
            data_dir=settings.data_dir,
            database=redact_url(settings.sync_database_url),
            place_orders=not args.no_orders,
        )
    except SeedError as exc:
        say(f"error: {exc}")
        return 1
    return 0


def redact_url(url: str) -> str:
    """The URL without its password, fit for logs and marker files."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}{at}{host}"
