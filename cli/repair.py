"""``tradeflow repair <order_id> --reason ...``: resume an order parked in NEEDS_ATTENTION.

Calls the API's ``POST /v1/admin/orders/{order_id}/repair`` with the admin token of this data
dir (or ``TRADEFLOW_ADMIN_TOKEN``). The order workflow runs again every compensation that had
failed for good; the operator's reason is kept in its history. Exit 0 when the order reached
its final state, 1 when compensations are still left, 2 when the repair was refused.
"""

from __future__ import annotations

import argparse
import json

import httpx

from infra.settings import load_settings

HELP = "resume the compensations of an order in NEEDS_ATTENTION, with your reason"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("repair", help=HELP, description=HELP)
    p.add_argument("order_id")
    p.add_argument("--reason", required=True, help="what you fixed; recorded with the order")
    p.add_argument("--operator", default="operator", help="who repairs it (recorded)")
    p.add_argument("--api", default=None, help="API base URL [from the settings]")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    base = args.api or settings.resolved_api_url
    try:
        r = httpx.post(
            f"{base}/v1/admin/orders/{args.order_id}/repair",
            json={"reason": args.reason, "operator": args.operator},
            headers={"X-Admin-Token": settings.resolved_admin_token},
            timeout=90.0,
        )
    except httpx.HTTPError as exc:
        print(f"error: the API at {base} did not answer: {exc}")
        return 2
    body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
    if r.status_code != 200:
        print(
            f"repair refused ({r.status_code} {body.get('code', '')}): {body.get('detail', r.text)}"
        )
        return 2
    repair = body.get("repair", {})
    print(f"order {args.order_id}: {body.get('status')}")
    if repair.get("remaining"):
        print("still failing: " + ", ".join(repair["remaining"]))
        return 1
    print(json.dumps({"order_id": args.order_id, "status": body.get("status")}))
    return 0
