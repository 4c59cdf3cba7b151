"""The simulator's durable state in one SQLite file, and every state change as one transaction.

Each operation below is a plain function of a sqlite3 connection that the caller runs inside
``BEGIN IMMEDIATE``: the idempotency lookup, the intent change, the ledger row and the stored
response commit together, so two concurrent calls with one key cannot move money twice.
``PspStore`` runs those functions on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Intent statuses (Stripe's names; ``declined`` stands in for requires_payment_method).
REQUIRES_ACTION = "requires_action"
REQUIRES_CAPTURE = "requires_capture"
SUCCEEDED = "succeeded"
CANCELED = "canceled"
DECLINED = "declined"

# Ledger kinds.
AUTHORIZE = "authorize"
CAPTURE = "capture"
VOID = "void"
REFUND = "refund"

EVENT_SUCCEEDED = "payment_intent.succeeded"
EVENT_FAILED = "payment_intent.failed"

#: Test tokens and what a new intent does with them.
AUTHORIZE_AT_ONCE = frozenset({"tok_ok", "tok_flaky", "tok_slow"})
ACTION_OUTCOME: dict[str, str | None] = {
    "tok_action": EVENT_SUCCEEDED,
    "tok_action_fail": EVENT_FAILED,
    "tok_action_never": None,
}
TOKENS = AUTHORIZE_AT_ONCE | {"tok_decline"} | frozenset(ACTION_OUTCOME)
FLAKY_FAILURES = 2
"""How many calls per idempotency key ``tok_flaky`` answers with 503 before it works."""

# Idempotency scopes: one key space per endpoint.
SCOPE_CREATE = "create_intent"
SCOPE_CAPTURE = "capture"
SCOPE_REFUND = "refund"

SCHEMA = """
CREATE TABLE IF NOT EXISTS intents (
    id                TEXT PRIMARY KEY,
    order_id          TEXT NOT NULL,
    amount_cents      INTEGER NOT NULL CHECK (amount_cents > 0),
    currency          TEXT NOT NULL,
    token             TEXT NOT NULL,
    capture_method    TEXT NOT NULL,
    status            TEXT NOT NULL,
    amount_capturable INTEGER NOT NULL DEFAULT 0 CHECK (amount_capturable >= 0),
    amount_authorized INTEGER NOT NULL DEFAULT 0 CHECK (amount_authorized >= 0),
    amount_received   INTEGER NOT NULL DEFAULT 0 CHECK (amount_received >= 0),
    amount_refunded   INTEGER NOT NULL DEFAULT 0
                      CHECK (amount_refunded >= 0 AND amount_refunded <= amount_received),
    idempotency_key   TEXT NOT NULL,
    last_error        TEXT,
    action_outcome    TEXT,
    action_due_at     REAL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_intents_order ON intents (order_id, created_at);
CREATE INDEX IF NOT EXISTS ix_intents_pending_action ON intents (status, action_due_at);

CREATE TABLE IF NOT EXISTS idempotency (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code  INTEGER,
    body         TEXT,
    failures     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE IF NOT EXISTS ledger (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id     TEXT NOT NULL,
    payment_id   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    at           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_ledger_order ON ledger (order_id, seq);

CREATE TABLE IF NOT EXISTS refunds (
    id           TEXT PRIMARY KEY,
    payment_id   TEXT NOT NULL,
    order_id     TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    status       TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    event_id     TEXT PRIMARY KEY,
    payment_id   TEXT NOT NULL,
    type         TEXT NOT NULL,
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    delivered_at TEXT,
    created_at   TEXT NOT NULL
);
"""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def error_body(code: str, message: str | None = None, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code}
    if message:
        err["message"] = message
    return {"error": err, **extra}


def request_hash(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Reply:
    """An HTTP answer decided inside a transaction."""

    status_code: int
    body: dict[str, Any]
    replayed: bool = False
    """True when this is the stored answer to an earlier call with the same idempotency key."""


@dataclass(frozen=True)
class Event:
    event_id: str
    payment_id: str
    type: str
    body: bytes
    """The exact bytes that are signed and sent (the same on every retry)."""
    attempts: int = 0


@dataclass(frozen=True)
class CreateOutcome:
    reply: Reply
    intent_id: str | None = None
    """Set when this call created the intent (not on replays or refusals)."""
    action_due_at: float | None = None
    """Unix time at which the pending customer action resolves by itself, if it ever does."""
    slow: bool = False


@dataclass(frozen=True)
class ActionOutcome:
    reply: Reply
    event: Event | None = None


@dataclass
class _Ctx:
    conn: sqlite3.Connection
    now: str = field(default_factory=now_iso)


# ----------------------------------------------------------------------------- row helpers


def intent_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "order_id": row["order_id"],
        "amount_cents": row["amount_cents"],
        "currency": row["currency"],
        "status": row["status"],
        "amount_capturable": row["amount_capturable"],
        "amount_authorized": row["amount_authorized"],
        "amount_received": row["amount_received"],
        "amount_refunded": row["amount_refunded"],
        "created_at": row["created_at"],
        "last_error": row["last_error"],
    }


def _intent_row(conn: sqlite3.Connection, intent_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM intents WHERE id = ?", (intent_id,)
    ).fetchone()
    return row


def _ledger(ctx: _Ctx, intent: sqlite3.Row, kind: str, amount_cents: int) -> None:
    if amount_cents <= 0:
        return
    ctx.conn.execute(
        "INSERT INTO ledger (order_id, payment_id, kind, amount_cents, at) VALUES (?, ?, ?, ?, ?)",
        (intent["order_id"], intent["id"], kind, amount_cents, ctx.now),
    )


def _idempotency_record(conn: sqlite3.Connection, scope: str, key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT request_hash, status_code, body, failures FROM idempotency"
        " WHERE scope = ? AND key = ?",
        (scope, key),
    ).fetchone()
    return row


def _check_idempotency(rec: sqlite3.Row | None, req_hash: str) -> Reply | None:
    """The answer owed to a repeated key, or None when the call should run."""
    if rec is None:
        return None
    if rec["request_hash"] != req_hash:
        return Reply(
            409,
            error_body(
                "idempotency_key_reused",
                "this Idempotency-Key was used with different parameters",
            ),
        )
    if rec["status_code"] is not None:
        return Reply(rec["status_code"], json.loads(rec["body"]), replayed=True)
    return None


def _money_call(
    conn: sqlite3.Connection, scope: str, key: str, *, payment_id: str, amount_cents: int | None
) -> tuple[str, sqlite3.Row] | Reply:
    """How an idempotent call that moves money on an intent begins: a repeated key gets the
    answer owed to it (``_check_idempotency``), an unknown intent 404; otherwise the call runs,
    with its request hash (to remember the answer under) and the intent."""
    req_hash = request_hash({"payment_id": payment_id, "amount_cents": amount_cents})
    owed = _check_idempotency(_idempotency_record(conn, scope, key), req_hash)
    if owed is not None:
        return owed
    intent = _intent_row(conn, payment_id)
    if intent is None:
        return Reply(404, error_body("not_found", "no such payment intent"))
    return req_hash, intent


def _remember(ctx: _Ctx, scope: str, key: str, req_hash: str, reply: Reply) -> None:
    ctx.conn.execute(
        "INSERT INTO idempotency (scope, key, request_hash, status_code, body, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (scope, key) DO UPDATE SET"
        " status_code = excluded.status_code, body = excluded.body",
        (scope, key, req_hash, reply.status_code, json.dumps(reply.body), ctx.now),
    )


def _new_event(ctx: _Ctx, intent: sqlite3.Row, event_type: str) -> Event:
    event_id = new_id("evt")
    body = json.dumps(
        {
            "event_id": event_id,
            "type": event_type,
            "payment_id": intent["id"],
            "order_id": intent["order_id"],
            "amount_cents": intent["amount_cents"],
        },
        separators=(",", ":"),
    ).encode()
    ctx.conn.execute(
        "INSERT INTO events (event_id, payment_id, type, body, created_at) VALUES (?, ?, ?, ?, ?)",
        (event_id, intent["id"], event_type, body.decode(), ctx.now),
    )
    return Event(event_id=event_id, payment_id=intent["id"], type=event_type, body=body)


# ------------------------------------------------------------------------------ operations


def create_intent(
    conn: sqlite3.Connection,
    *,
    key: str,
    params: dict[str, Any],
    force_decline: bool,
    action_delay_s: float,
    now_unix: float,
) -> CreateOutcome:
    """``POST /v1/payment_intents``. ``params`` are the validated body fields."""
    ctx = _Ctx(conn)
    req_hash = request_hash(params)
    rec = _idempotency_record(conn, SCOPE_CREATE, key)
    owed = _check_idempotency(rec, req_hash)
    if owed is not None:
        return CreateOutcome(owed)

    token = params["token"]
    if token == "tok_flaky" and (rec["failures"] if rec else 0) < FLAKY_FAILURES:
        conn.execute(
            "INSERT INTO idempotency (scope, key, request_hash, failures, created_at)"
            " VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (scope, key) DO UPDATE SET failures = failures + 1",
            (SCOPE_CREATE, key, req_hash, ctx.now),
        )
        return CreateOutcome(
            Reply(503, error_body("psp_unavailable", "temporarily unavailable (tok_flaky)"))
        )

    intent_id = new_id("pi")
    amount = params["amount_cents"]
    status, capturable, last_error = REQUIRES_ACTION, 0, None
    action_outcome: str | None = None
    due_at: float | None = None
    if token in AUTHORIZE_AT_ONCE and not force_decline:
        status, capturable = REQUIRES_CAPTURE, amount
    elif token in AUTHORIZE_AT_ONCE or token == "tok_decline":
        status, last_error = DECLINED, "card_declined"
    else:
        action_outcome = ACTION_OUTCOME[token]
        if action_outcome is not None:
            due_at = now_unix + action_delay_s
    conn.execute(
        "INSERT INTO intents (id, order_id, amount_cents, currency, token, capture_method,"
        " status, amount_capturable, amount_authorized, idempotency_key, last_error,"
        " action_outcome, action_due_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            intent_id,
            params["order_id"],
            amount,
            params["currency"],
            token,
            params["capture_method"],
            status,
            capturable,
            capturable,
            key,
            last_error,
            action_outcome,
            due_at,
            ctx.now,
            ctx.now,
        ),
    )
    intent = _intent_row(conn, intent_id)
    assert intent is not None
    if status == REQUIRES_CAPTURE:
        _ledger(ctx, intent, AUTHORIZE, amount)
        reply = Reply(200, intent_json(intent))
    elif status == DECLINED:
        reply = Reply(
            402, error_body("card_declined", "the card was declined", intent=intent_json(intent))
        )
    else:
        reply = Reply(200, intent_json(intent))
    _remember(ctx, SCOPE_CREATE, key, req_hash, reply)
    return CreateOutcome(reply, intent_id=intent_id, action_due_at=due_at, slow=token == "tok_slow")


def resolve_action(
    conn: sqlite3.Connection,
    *,
    intent_id: str,
    outcome: str | None,
    scheduled: bool,
) -> ActionOutcome:
    """The customer finished (or failed) the action: move the intent and record the webhook.

    ``scheduled`` is the timer firing: it does nothing unless the intent still waits for the
    action its token promised. Otherwise (the test endpoint) ``outcome`` may override the token.
    """
    ctx = _Ctx(conn)
    intent = _intent_row(conn, intent_id)
    if intent is None:
        return ActionOutcome(Reply(404, error_body("not_found", "no such payment intent")))
    if intent["status"] != REQUIRES_ACTION:
        return ActionOutcome(
            Reply(
                409,
                error_body(
                    "intent_not_requires_action",
                    f"intent is {intent['status']}",
                    intent=intent_json(intent),
                ),
            )
        )
    event_type = intent["action_outcome"] if scheduled else outcome or intent["action_outcome"]
    if scheduled and event_type is None:
        return ActionOutcome(Reply(200, intent_json(intent)))
    event_type = event_type or EVENT_SUCCEEDED
    if event_type == EVENT_SUCCEEDED:
        conn.execute(
            "UPDATE intents SET status = ?, amount_capturable = amount_cents,"
            " amount_authorized = amount_cents, action_due_at = NULL, updated_at = ? WHERE id = ?",
            (REQUIRES_CAPTURE, ctx.now, intent_id),
        )
        _ledger(ctx, intent, AUTHORIZE, intent["amount_cents"])
    else:
        conn.execute(
            "UPDATE intents SET status = ?, last_error = ?, action_due_at = NULL, updated_at = ?"
            " WHERE id = ?",
            (DECLINED, "authentication_failed", ctx.now, intent_id),
        )
    event = _new_event(ctx, intent, event_type)
    updated = _intent_row(conn, intent_id)
    assert updated is not None
    return ActionOutcome(Reply(200, intent_json(updated)), event)


def capture(
    conn: sqlite3.Connection, *, intent_id: str, key: str, amount_cents: int | None
) -> Reply:
    """``POST /v1/payment_intents/{id}/capture``: at most one capture per intent, ever."""
    ctx = _Ctx(conn)
    begun = _money_call(conn, SCOPE_CAPTURE, key, payment_id=intent_id, amount_cents=amount_cents)
    if isinstance(begun, Reply):
        return begun
    req_hash, intent = begun
    if intent["status"] != REQUIRES_CAPTURE:
        return Reply(
            409,
            error_body(
                "intent_not_capturable",
                f"intent is {intent['status']}",
                intent=intent_json(intent),
            ),
        )
    authorized = intent["amount_capturable"]
    amount = authorized if amount_cents is None else amount_cents
    if amount > authorized:
        return Reply(
            422,
            error_body(
                "capture_exceeds_authorized",
                f"cannot capture {amount}, only {authorized} is authorized",
            ),
        )
    conn.execute(
        "UPDATE intents SET status = ?, amount_received = ?, amount_capturable = 0,"
        " updated_at = ? WHERE id = ? AND status = ?",
        (SUCCEEDED, amount, ctx.now, intent_id, REQUIRES_CAPTURE),
    )
    _ledger(ctx, intent, CAPTURE, amount)
    # A partial capture releases the rest of the hold, as card networks do.
    _ledger(ctx, intent, VOID, authorized - amount)
    updated = _intent_row(conn, intent_id)
    assert updated is not None
    reply = Reply(200, intent_json(updated))
    _remember(ctx, SCOPE_CAPTURE, key, req_hash, reply)
    return reply


def cancel(conn: sqlite3.Connection, *, intent_id: str) -> Reply:
    """``POST /v1/payment_intents/{id}/cancel``: release the hold; repeats are harmless."""
    ctx = _Ctx(conn)
    intent = _intent_row(conn, intent_id)
    if intent is None:
        return Reply(404, error_body("not_found", "no such payment intent"))
    if intent["status"] == CANCELED:
        return Reply(200, intent_json(intent))
    if intent["status"] not in (REQUIRES_ACTION, REQUIRES_CAPTURE):
        return Reply(
            409,
            error_body(
                "intent_not_cancelable",
                f"intent is {intent['status']}",
                intent=intent_json(intent),
            ),
        )
    conn.execute(
        "UPDATE intents SET status = ?, amount_capturable = 0, action_due_at = NULL,"
        " updated_at = ? WHERE id = ?",
        (CANCELED, ctx.now, intent_id),
    )
    _ledger(ctx, intent, VOID, intent["amount_capturable"])
    updated = _intent_row(conn, intent_id)
    assert updated is not None
    return Reply(200, intent_json(updated))


def refund(conn: sqlite3.Connection, *, key: str, payment_id: str, amount_cents: int) -> Reply:
    """``POST /v1/refunds``: the sum of refunds never exceeds what was captured."""
    ctx = _Ctx(conn)
    begun = _money_call(conn, SCOPE_REFUND, key, payment_id=payment_id, amount_cents=amount_cents)
    if isinstance(begun, Reply):
        return begun
    req_hash, intent = begun
    refundable = intent["amount_received"] - intent["amount_refunded"]
    if amount_cents > refundable:
        return Reply(
            422,
            error_body(
                "refund_exceeds_captured",
                f"cannot refund {amount_cents}, only {refundable} is refundable",
            ),
        )
    refund_id = new_id("re")
    conn.execute(
        "UPDATE intents SET amount_refunded = amount_refunded + ?, updated_at = ? WHERE id = ?",
        (amount_cents, ctx.now, payment_id),
    )
    conn.execute(
        "INSERT INTO refunds (id, payment_id, order_id, amount_cents, status, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (refund_id, payment_id, intent["order_id"], amount_cents, SUCCEEDED, ctx.now),
    )
    _ledger(ctx, intent, REFUND, amount_cents)
    reply = Reply(
        200,
        {
            "id": refund_id,
            "payment_id": payment_id,
            "order_id": intent["order_id"],
            "amount_cents": amount_cents,
            "status": SUCCEEDED,
            "created_at": ctx.now,
        },
    )
    _remember(ctx, SCOPE_REFUND, key, req_hash, reply)
    return reply


# ---------------------------------------------------------------------------------- reads


def get_intent(conn: sqlite3.Connection, *, intent_id: str) -> dict[str, Any] | None:
    row = _intent_row(conn, intent_id)
    return None if row is None else intent_json(row)


def list_intents(
    conn: sqlite3.Connection, *, order_id: str | None, idempotency_key: str | None
) -> list[dict[str, Any]]:
    sql = "SELECT * FROM intents WHERE 1 = 1"
    args: list[str] = []
    if order_id is not None:
        sql, args = sql + " AND order_id = ?", [*args, order_id]
    if idempotency_key is not None:
        sql, args = sql + " AND idempotency_key = ?", [*args, idempotency_key]
    rows = conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
    return [intent_json(r) for r in rows]


def ledger(conn: sqlite3.Connection, *, order_id: str | None) -> list[dict[str, Any]]:
    sql = "SELECT order_id, payment_id, kind, amount_cents, at FROM ledger"
    args: tuple[str, ...] = ()
    if order_id is not None:
        sql, args = sql + " WHERE order_id = ?", (order_id,)
    return [dict(r) for r in conn.execute(sql + " ORDER BY seq", args).fetchall()]


def pending_actions(conn: sqlite3.Connection) -> list[tuple[str, float]]:
    rows = conn.execute(
        "SELECT id, action_due_at FROM intents WHERE status = ? AND action_due_at IS NOT NULL",
        (REQUIRES_ACTION,),
    ).fetchall()
    return [(r["id"], r["action_due_at"]) for r in rows]


def undelivered_events(conn: sqlite3.Connection, *, max_attempts: int) -> list[Event]:
    rows = conn.execute(
        "SELECT event_id, payment_id, type, body, attempts FROM events"
        " WHERE delivered_at IS NULL AND attempts < ? ORDER BY created_at",
        (max_attempts,),
    ).fetchall()
    return [
        Event(r["event_id"], r["payment_id"], r["type"], r["body"].encode(), r["attempts"])
        for r in rows
    ]


def record_delivery_attempt(conn: sqlite3.Connection, *, event_id: str, delivered: bool) -> None:
    conn.execute(
        "UPDATE events SET attempts = attempts + 1,"
        " delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END WHERE event_id = ?",
        (delivered, now_iso(), event_id),
    )


# ---------------------------------------------------------------------------------- store


def _add_amount_authorized(conn: sqlite3.Connection) -> None:
    """A file written before intents kept ``amount_authorized``: add it, from the ledger."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {r["name"] for r in conn.execute("PRAGMA table_info(intents)")}
        if "amount_authorized" not in columns:
            conn.execute(
                "ALTER TABLE intents ADD COLUMN amount_authorized INTEGER NOT NULL DEFAULT 0"
                " CHECK (amount_authorized >= 0)"
            )
            conn.execute(
                "UPDATE intents SET amount_authorized = COALESCE((SELECT SUM(amount_cents)"
                " FROM ledger WHERE ledger.payment_id = intents.id AND kind = ?), 0)",
                (AUTHORIZE,),
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class PspStore:
    """A small pool of sqlite3 connections; every call is one transaction on a worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            _add_amount_authorized(conn)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _run(self, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            conn.execute(begin)
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._idle.put(conn)
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction (writers queue up front)."""
        return await asyncio.to_thread(self._run, fn, "BEGIN IMMEDIATE")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run, fn, "BEGIN")

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
