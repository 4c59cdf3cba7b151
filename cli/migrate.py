"""``tradeflow migrate``: bring the database at ``DATABASE_URL`` to the newest schema.

``tradeflow up`` does this itself; this is for deployments where a one-shot job runs it before
the API and workers start (see docker-compose.yml).
"""

from __future__ import annotations

import argparse

from cli.procs import say

HELP = "run the database migrations (Alembic) up to the newest schema"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser("migrate", help=HELP, description=HELP)


def run(args: argparse.Namespace) -> int:
    from cli.seed import redact_url
    from infra.settings import Settings
    from store.schema import migrate

    url = Settings().sync_database_url
    say(f"migrating {redact_url(url)}")
    migrate(url)
    say("database schema is up to date")
    return 0
