"""``tradeflow check <what>``: prove an invariant from the ledgers; exit 1 naming each
offending row when it does not hold.

    tradeflow check stock [--database-url URL] [--redis-url URL | --no-redis]
    tradeflow check money [--database-url URL] [--psp-url URL]

To add a check, write its ``add_arguments(parser)`` and ``run(args) -> int`` (importing its
heavy modules inside ``run``) and list it in ``CHECKS``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cli.checks import CheckReport

HELP = "prove an invariant from the ledgers (exit 1 and name the rows when it fails)"


@dataclass(frozen=True)
class Check:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _connection_arguments(parser: argparse.ArgumentParser, *, redis: bool) -> None:
    parser.add_argument(
        "--database-url", help="database to check (default: DATABASE_URL / the embedded SQLite)"
    )
    if redis:
        parser.add_argument(
            "--redis-url", help="Redis holding the hot counters (default: REDIS_URL)"
        )
        parser.add_argument(
            "--no-redis", action="store_true", help="check the database only, not the hot counters"
        )


def _outcome(name: str, report: CheckReport[Any]) -> int:
    """Print what the check found; the exit status: 0 passed, 1 failed."""
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"{name} check OK: {report.summary()}")
        return 0
    for v in report.violations:
        print(f"FAIL {v}")
    print(f"{name} check FAILED: {report.problems()} in {report.summary()}")
    return 1


# ------------------------------------------------------------------------------------ stock


def _stock_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_arguments(parser, redis=True)


def _run_stock(args: argparse.Namespace) -> int:
    return asyncio.run(_stock(args))


async def _stock(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    from cli.checks import check_stock
    from cli.seed import redact_url
    from infra.redis import make_redis
    from infra.settings import Settings, to_async_url
    from store.db import make_engine, make_sessionmaker

    settings = Settings()
    db_url = to_async_url(args.database_url) if args.database_url else settings.async_database_url
    engine = make_engine(db_url, pool_size=2)
    redis = None if args.no_redis else make_redis(args.redis_url or settings.redis_url)
    try:
        report = await check_stock(make_sessionmaker(engine), redis=redis)
    except SQLAlchemyError as e:
        print(f"stock check could not read {redact_url(db_url)}: {e}")
        return 2
    except (RedisError, OSError) as e:
        print(f"stock check could not read the hot counters in Redis: {e} (--no-redis skips them)")
        return 2
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()
    return _outcome("stock", report)


# ------------------------------------------------------------------------------------ money


def _money_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_arguments(parser, redis=False)
    parser.add_argument(
        "--psp-url", help="PSP whose ledger to reconcile with (default: TRADEFLOW_PSP_URL)"
    )
    parser.add_argument(
        "--order",
        action="append",
        dest="orders",
        metavar="ORDER_ID",
        help="check only this order (repeatable); default: every order with a payment",
    )


def _run_money(args: argparse.Namespace) -> int:
    return asyncio.run(_money(args))


async def _money(args: argparse.Namespace) -> int:
    import httpx
    from sqlalchemy.exc import SQLAlchemyError

    from cli.checks import check_money
    from cli.seed import redact_url
    from infra.settings import Settings, to_async_url
    from store.db import make_engine, make_sessionmaker

    settings = Settings()
    db_url = to_async_url(args.database_url) if args.database_url else settings.async_database_url
    psp_url = args.psp_url or settings.resolved_psp_url
    engine = make_engine(db_url, pool_size=2)
    psp = httpx.AsyncClient(base_url=psp_url, timeout=httpx.Timeout(30.0, connect=3.0))
    try:
        report = await check_money(make_sessionmaker(engine), psp, order_ids=args.orders)
    except SQLAlchemyError as e:
        print(f"money check could not read {redact_url(db_url)}: {e}")
        return 2
    except (httpx.HTTPError, ValueError, KeyError) as e:
        print(f"money check could not read the PSP ledger at {psp_url}: {e!r}")
        return 2
    finally:
        await psp.aclose()
        await engine.dispose()
    return _outcome("money", report)


CHECKS: dict[str, Check] = {
    "stock": Check(
        help="available + reserved + sold == stocked per location and SKU, reservations match,"
        " none held by an ended order, Redis hot counters match the DB",
        add_arguments=_stock_arguments,
        run=_run_stock,
    ),
    "money": Check(
        help="per order, tradeflow's payment record equals the PSP ledger (authorized, captured,"
        " voided, refunded), refunded <= captured <= authorized, no dangling authorization",
        add_arguments=_money_arguments,
        run=_run_money,
    ),
}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("check", help=HELP, description=HELP)
    checks = parser.add_subparsers(dest="check", metavar="<what>", required=True)
    for name, check in CHECKS.items():
        sub = checks.add_parser(name, help=check.help, description=check.help)
        check.add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    return CHECKS[args.check].run(args)
