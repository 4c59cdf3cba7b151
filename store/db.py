"""Engine factory for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from infra.settings import to_async_url


def is_sqlite(url_or_engine: str | AsyncEngine | Engine) -> bool:
    if isinstance(url_or_engine, str):
        return url_or_engine.startswith("sqlite")
    return url_or_engine.dialect.name == "sqlite"


def _configure_sqlite(sync_engine: Engine) -> None:
    # Writers take the lock up front (BEGIN IMMEDIATE): a deferred transaction that reads and
    # then writes can deadlock against another writer, and busy_timeout cannot resolve that.
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


PING_IDLE_AFTER_S = 0.5
"""A pooled PostgreSQL connection idle this long is pinged before it is handed out."""

_CHECKED_IN = "tradeflow_checked_in"


def _ping_idle_connections(sync_engine: Engine, idle_after_s: float) -> None:
    """Pessimistic disconnect handling with a bypass window, as HikariCP's
    ``aliveBypassWindowMs`` (500 ms there too): a connection is pinged (``SELECT 1``) at
    checkout only if it sat in the pool for ``idle_after_s`` or more. ``pool_pre_ping``
    pings at every checkout, one round trip more for every transaction; under load a
    connection comes back within milliseconds and is handed out again unpinged.

    A failed ping invalidates the pool, as the pre-ping does (every connection older than
    the failure is replaced at its next checkout), and the checkout goes on with a fresh
    connection. A connection lost within the window fails on its first statement instead;
    SQLAlchemy then invalidates the pool the same way, and the caller sees the
    ``OperationalError`` it would see for a database that went away mid-transaction (an
    activity is retried by Temporal, the API answers 503). A database that restarts takes
    longer than the window, so after an outage every connection from before it is pinged.
    """
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN)
        if since is None or time.monotonic() - since < idle_after_s:
            return  # just connected, or back in the pool a moment ago
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as e:
            if dialect.is_disconnect(e, dbapi_conn, None):
                raise InvalidatePoolError(f"ping failed: {e}") from e
            raise


def make_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    url = to_async_url(url)
    if is_sqlite(url):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        _configure_sqlite(engine.sync_engine)
    else:
        engine = create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size)
        _ping_idle_connections(engine.sync_engine, PING_IDLE_AFTER_S)
    from infra.telemetry import instrument_engine, tracing_enabled

    if tracing_enabled():  # a span per SQL statement (infra/telemetry.py)
        instrument_engine(engine)
    return engine


def engine_of(sessions: async_sessionmaker[Any]) -> AsyncEngine:
    """The engine a sessionmaker made by ``make_sessionmaker`` binds its sessions to."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError(f"sessionmaker not bound to an AsyncEngine: {bind!r}")
    return bind


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
