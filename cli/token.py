"""``tradeflow token <role> <id>``: a development JWT for the local HS256 secret.

``tradeflow token customer c-1`` prints a token whose ``sub`` is ``c-1`` (``role=customer``),
signed with ``TRADEFLOW_JWT_SECRET`` or, when that is unset, the random secret kept in the
data dir (the one the API verifies with). Use it as ``Authorization: Bearer <token>``.
``courier``, ``merchant`` and ``operator`` work the same. Production tokens come from the
identity provider (RS256/ES256 against ``TRADEFLOW_JWT_PUBLIC_KEY`` / ``TRADEFLOW_JWKS_URL``),
and couriers usually get an opaque token from ``POST /v1/admin/couriers/{id}/tokens``.
"""

from __future__ import annotations

import argparse
import sys

from domain.roles import Role

HELP = "print a development JWT (customer, courier, merchant or operator) for the local secret"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("token", help=HELP, description=__doc__)
    parser.add_argument("role", choices=[r.value for r in Role])
    parser.add_argument("subject", help="the customer, courier, merchant or operator id (sub)")
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires [3600]")


def run(args: argparse.Namespace) -> int:
    from api.auth import mint_token
    from infra.settings import load_settings

    try:
        token = mint_token(load_settings(), Role(args.role), args.subject, ttl_s=args.ttl)
    except ValueError as exc:
        print(f"tradeflow token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
