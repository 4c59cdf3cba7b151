"""Every process reads its configuration here, from the environment (README, "Configuration").

A field's variable is its name with the ``TRADEFLOW_`` prefix (``max_offers`` is
``TRADEFLOW_MAX_OFFERS``); the few unprefixed ones (``DATABASE_URL``, ``REDIS_URL``, the
Temporal address, ports and bind host) say so with an alias. A process starts with
``load_settings()`` (or the cached ``get_settings()``): the environment, then its secrets, each
from the environment or else from its file in the data dir (created there the first time).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from infra.breaker import BreakerConfig

ENV_PREFIX = "TRADEFLOW_"

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}


def parse_rate(text: str) -> float:
    """``"10/s"`` -> 10.0 events per second; ``"30/m"`` -> 0.5."""
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"rate must look like '10/s', '30/m' or '100/h', got {text!r}")
    return float(m.group(1)) / _UNIT_SECONDS[m.group(2)]


def _checked_rate(text: str) -> str:
    parse_rate(text)
    return text


Rate = Annotated[str, AfterValidator(_checked_rate)]
"""A rate as written (``"10/s"``, ``"30/m"``, ``"100/h"``), refused unless ``parse_rate`` reads it."""

_SWITCH: TypeAdapter[bool] = TypeAdapter(bool)

SECRET_BYTES = {"admin_token": 24, "webhook_secret": 24, "merchant_secret": 24, "jwt_secret": 32}
"""The secrets a data dir keeps, by field (and file) name, with their random bytes."""


def new_secret(nbytes: int = 24) -> str:
    """A URL-safe random secret that does not begin with ``-``: pasted after a command-line
    option (``tradeflow load --admin-token <token>``), such a token reads as an option."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


def _secret_file(data_dir: Path, name: str, nbytes: int = 24) -> str:
    """A random secret kept per data dir, so restarts keep the same value. Processes starting
    at once on one data dir agree: the file appears whole (a hard link of a private temporary
    file) or not at all, and whoever links second reads the first one's."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret(nbytes) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process made it first: its value holds
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path.read_text().strip()


class SecretsNotLoaded(RuntimeError):
    """A secret was read off settings that did not go through ``with_secrets()``."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", validate_by_name=True
    )

    data_dir: Path = Path(".data")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    temporal_address: str = Field(default="127.0.0.1:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
    temporal_ui_port: int = Field(default=8233, alias="TEMPORAL_UI_PORT")
    api_port: int = Field(default=8000, alias="API_PORT")
    psp_port: int = Field(default=8100, alias="PSP_PORT")
    bind_host: str = Field(default="127.0.0.1", alias="BIND_HOST")
    admin_token: str | None = Field(default=None, repr=False)
    """``X-Admin-Token`` of /v1/admin/*; default: random per data dir."""
    webhook_secret: str | None = Field(default=None, repr=False)
    """HMAC secret of the PSP's webhooks; default: random per data dir."""
    courier_simulator: bool = True
    worker_processes: int = Field(default=1, ge=1, le=16)
    """How many ``worker.py`` processes ``tradeflow up`` starts (each serves every role)."""
    payment_timeout_s: float = Field(default=900.0, gt=0)
    offer_timeout_s: float = Field(default=30.0, gt=0)
    max_offers: int = Field(default=5, ge=1)
    reservation_ttl_s: float | None = Field(default=None, gt=0)
    """Unconfirmed reservations lapse after this; default: payment timeout + 120 s."""
    sweep_interval_s: float = Field(default=300.0, gt=0)
    """How often the inventory sweeper schedule runs."""
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    """How often the reconciler schedule runs (docs/operations.md)."""
    reconcile_grace_s: float = Field(default=60.0, ge=0)
    """The reconciler leaves rows younger than this alone (an API may still be starting them)."""
    reconcile_restart_within_s: float = Field(default=900.0, ge=0)
    """An order nobody started is restarted up to this age; older, it is failed (NOT_STARTED)."""
    psp_action_delay_s: float = Field(default=3.0, ge=0)
    checkout_rate: Rate = "10/s"
    checkout_burst: int = Field(default=20, ge=1)
    demo: bool = True
    psp_url: str | None = None
    """Base URL of the PSP; defaults to the simulator on ``PSP_PORT``."""
    api_url: str | None = None
    """Base URL of the API, for the courier simulator; defaults to ``API_PORT``."""
    otel_exporter: str = "none"
    """``none``, ``console`` or ``otlp`` (then OTEL_EXPORTER_OTLP_ENDPOINT applies)."""
    task_queues: str = "orders,dispatch"
    worker_metrics_port: int = Field(default=0, ge=0)
    """Prometheus port for the worker's Temporal SDK metrics; 0 turns them off."""
    merchant_webhook_url: str | None = None
    """Where order paid/cancelled and refund events are POSTed (max effort); unset: off."""
    merchant_secret: str | None = Field(default=None, repr=False)
    """HMAC secret of merchant notifications; default: random per data dir."""
    sim_courier_prefix: str = "k-"
    """The courier simulator plays the couriers whose ids start with this."""
    courier_step_s: float = Field(default=2.0, ge=0)
    """Simulated courier: seconds between accept, pick-up and delivery."""
    sim_couriers: int = Field(default=0, ge=0)
    """0: the courier simulator plays the existing couriers (accepting at once, steps
    ``COURIER_STEP_S`` apart); N: the city simulation, N couriers around ``SIM_STORES``
    (``make up`` runs 200)."""
    sim_stores: str = (
        "main:31.2304:121.4737,north:31.2700:121.4650,east:31.2250:121.5200,west:31.2200:121.4200"
    )
    """City simulation: the stores (``id:lat:lng``, comma-separated) its couriers live around;
    created through the admin API unless they are ``main``."""
    sim_accept_p: float = Field(default=0.9, ge=0, le=1)
    """City simulation: probability that a courier accepts an offer (else it declines)."""
    sim_speed_kmh: float = Field(default=25.0, gt=0)
    sim_time_scale: float = Field(default=30.0, gt=0)
    """City simulation: simulated seconds per real second of travel."""
    psp_rate: Rate = "50/s"
    """Calls to the PSP, all workers together (GCRA in Redis)."""
    psp_burst: int = Field(default=100, ge=1)
    psp_breaker_window_s: float = Field(default=10.0, gt=0)
    """Sliding window the PSP breaker judges error and slow-call rates over."""
    psp_breaker_min_calls: int = Field(default=50, ge=1)
    psp_breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    psp_breaker_slow_call_s: float = Field(default=2.0, gt=0)
    psp_breaker_slow_call_rate: float = Field(default=0.8, gt=0, le=1)
    psp_breaker_open_s: float = Field(default=5.0, gt=0)
    psp_breaker_probes: int = Field(default=3, ge=1)
    """Calls let through at once while the breaker is half-open."""
    psp_breaker_probe_successes: int = Field(default=2, ge=1)
    """Successful half-open probes that close the breaker (capped at the probe count)."""
    zone_resolution: int = Field(default=7, ge=0, le=15)
    """H3 resolution of delivery zones (7: hexagons of ~1.4 km edge)."""
    lock_redis_urls: str | None = None
    """Comma-separated independent Redis nodes for zone leases (Redlock); default: REDIS_URL."""
    dispatch_shards: str = "0"
    """Dispatch shards a worker serving the dispatch role runs (comma-separated): a zone
    matcher service each, and the ``dispatch-<n>`` task queue of each."""
    dispatch_window_s: float = Field(default=2.0, ge=0)
    """Zone matchers collect orders this long and match them together (0: every 50 ms)."""
    dispatch_lease_ttl_s: float = Field(default=10.0, gt=0)
    """Zone lease TTL; also the shard heartbeat's: a killed shard's zones move after it."""
    dispatch_key_prefix: str = "dispatch:"
    """Redis key prefix of the geo index, the pending orders, shard heartbeats, zone leases."""
    auth: Literal["auto", "on", "off"] = "auto"
    """``auto`` (on unless ``BIND_HOST`` is loopback), ``on`` or ``off``; see api/auth.py."""
    jwt_secret: str | None = Field(default=None, repr=False)
    """HS256 key of customer/courier/staff JWTs; default: random per data dir (unless a public
    key or JWKS URL is set, then HS256 is off)."""
    jwt_public_key: str | None = None
    """RS256/ES256 verification key: PEM text, or the path of a PEM file."""
    jwks_url: str | None = None
    jwt_issuer: str = Field(default="tradeflow", min_length=1)
    jwt_audience: str = Field(default="tradeflow", min_length=1)
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    auth_failure_rate: Rate = "1/s"
    """Refused credentials per client address, sustained (GCRA in Redis)."""
    auth_failure_burst: int = Field(default=20, ge=1)
    # -- order event stream (store/outbox.py, infra/events.py) -------------------------------
    events_broker: Literal["redis", "rabbitmq", "off"] = "redis"
    """Where the outbox relay publishes order events: ``redis`` (a Redis Stream on REDIS_URL),
    ``rabbitmq`` (``TRADEFLOW_RABBITMQ_URL``) or ``off`` (events stay in the outbox)."""
    events_stream: str = "tradeflow:order-events"
    """Redis Stream key; also the RabbitMQ exchange and queue name (``:`` becomes ``.``)."""
    events_maxlen: int = Field(default=1_000_000, ge=1)
    """The stream is trimmed to about this many events."""
    rabbitmq_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    relay_batch: int = Field(default=200, ge=1, le=10_000)
    relay_poll_s: float = Field(default=0.2, gt=0)
    """How long the relay sleeps when the outbox has nothing to publish."""
    relay_lease_s: float = Field(default=10.0, gt=0)
    """One relay publishes at a time (Redis lease); a dead one's lease ends after this."""
    outbox_retention_h: float = Field(default=168.0, gt=0)
    """Published events are deleted from the outbox after this long."""
    # -- the sold-out edge and its write-behind (infra/sold_out_edge.py, api/write_behind.py) --
    edge_idempotency_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How long the Redis idempotency index keeps a checkout's key (and a sold-out loser's
    row copy): a repeat within this answers the first order; see docs/inventory.md."""
    write_behind_batch: int = Field(default=500, ge=1, le=10_000)
    """Sold-out losers written to SQL per transaction by the write-behind."""
    write_behind_linger_s: float = Field(default=0.25, ge=0)
    """The write-behind waits this long for a batch to fill once its first entry came (a row
    costs ~380 us of API CPU in batches of 20, ~180 us in batches of 100; docs/benchmarks.md)."""
    write_behind_reclaim_s: float = Field(default=30.0, gt=0)
    """Entries another API took but has not written for this long are taken over."""
    # -- worker deployment versioning and drain (worker.py, docs/operations.md) --------------
    worker_versioning: bool = False
    """Worker Deployment Versioning: workers poll as ``<deployment>:<build id>`` and pin each
    workflow to the version that started it."""
    deployment_name: str = Field(default="tradeflow", pattern=r"^[A-Za-z0-9_-]+$")
    build_id: str | None = Field(default=None, max_length=200)
    """This code's version; default: package version and git commit (``worker.py --build-id``)."""
    promote_on_start: Literal["auto", "on", "off"] = "auto"
    """``auto``: a versioned worker makes its version current when the deployment has none;
    ``on``: always (a one-step deploy); ``off``: the operator promotes it."""
    worker_grace_s: float = Field(default=8.0, ge=0)
    """On SIGTERM, running activities get this long to finish before they are cancelled."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """The worker's and the API's event loop; ``auto``: uvloop when installed (infra/eventloop.py)."""

    # -- payload codec (infra/codec.py, docs/operations.md) --------------------------------
    codec: bool = True
    """Encrypt Temporal payloads (AES-GCM, key ring); off: they are stored as plain JSON."""
    codec_key_file: Path | None = None
    """The codec key ring; default ``<data dir>/codec_keys.json``, created when missing."""
    codec_cors_origins: str | None = None
    """Comma-separated origins (Temporal web UIs) that may call ``/codec``; default: the dev
    server's UI on ``TEMPORAL_UI_PORT``."""

    @property
    def resolved_codec_key_file(self) -> Path:
        return self.codec_key_file or self.data_dir / "codec_keys.json"

    @property
    def codec_cors_origin_list(self) -> list[str]:
        if self.codec_cors_origins is not None:
            return [o.strip() for o in self.codec_cors_origins.split(",") if o.strip()]
        port = self.temporal_ui_port
        return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]

    _secrets_loaded: bool = PrivateAttr(default=False)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise _by_variable(e) from None

    # ------------------------------------------------------------------ names and parsing

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> the environment variable that sets it."""
        return {
            name: (f.alias or f"{ENV_PREFIX}{name}").upper() for name, f in cls.model_fields.items()
        }

    @classmethod
    def from_variables(cls, variables: Mapping[str, object]) -> Settings:
        """Settings as if ``variables`` (named as in the environment: ``TRADEFLOW_MAX_OFFERS``,
        ``DATABASE_URL``) were set, over the real environment. An unknown name is refused."""
        fields = {var: name for name, var in cls.variables().items()}
        unknown = sorted(k for k in variables if k.upper() not in fields)
        if unknown:
            raise ValueError(f"not a tradeflow setting: {', '.join(unknown)}")
        return cls(**{fields[k.upper()]: v for k, v in variables.items()})

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_mode(cls, v: object) -> object:
        """``auto``, or a switch as pydantic reads a bool (on/off, true/false, 1/0, yes/no)."""
        text = str(v).strip().lower()
        if text == "auto":
            return text
        try:
            return "on" if _SWITCH.validate_python(text) else "off"
        except ValidationError:
            raise ValueError(f"expected auto, on or off, got {v!r}") from None

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) < 32:
            raise ValueError("TRADEFLOW_JWT_SECRET must be at least 32 bytes (HS256 key)")
        return v

    # -------------------------------------------------------------------------- derived

    @property
    def lock_redis_url_list(self) -> list[str]:
        urls = [u.strip() for u in (self.lock_redis_urls or "").split(",") if u.strip()]
        return urls or [self.redis_url]

    @property
    def dispatch_shard_list(self) -> list[str]:
        return [x.strip() for x in self.dispatch_shards.split(",") if x.strip()]

    @property
    def checkout_rate_per_s(self) -> float:
        return parse_rate(self.checkout_rate)

    @property
    def psp_rate_per_s(self) -> float:
        return parse_rate(self.psp_rate)

    def psp_breaker_config(self) -> BreakerConfig:
        """The PSP circuit breaker's configuration, from the ``TRADEFLOW_PSP_BREAKER_*``
        variables (probe successes capped at the probe count)."""
        from infra.breaker import BreakerConfig

        return BreakerConfig(
            window_s=self.psp_breaker_window_s,
            min_calls=self.psp_breaker_min_calls,
            failure_rate=self.psp_breaker_failure_rate,
            slow_call_s=self.psp_breaker_slow_call_s,
            slow_call_rate=self.psp_breaker_slow_call_rate,
            open_s=self.psp_breaker_open_s,
            half_open_probes=self.psp_breaker_probes,
            probe_successes=min(self.psp_breaker_probe_successes, self.psp_breaker_probes),
        )

    @property
    def sync_database_url(self) -> str:
        """URL for synchronous tools (Alembic)."""
        if self.database_url:
            return to_sync_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'tradeflow.db').resolve()}"

    @property
    def async_database_url(self) -> str:
        return to_async_url(self.sync_database_url)

    @property
    def resolved_psp_url(self) -> str:
        return self.psp_url or f"http://127.0.0.1:{self.psp_port}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://127.0.0.1:{self.api_port}"

    # -------------------------------------------------------------------------- secrets

    @property
    def hs256_off(self) -> bool:
        """A public key or JWKS URL verifies JWTs: no data-dir HS256 secret is made."""
        return bool(self.jwt_public_key or self.jwks_url)

    def with_secrets(self) -> Settings:
        """The startup step that gives a process its secrets: these settings with every secret
        the environment leaves unset read from its file in the data dir, or created there
        (random, mode 0600) the first time, so restarts and sibling processes on the same data
        dir agree. The HS256 key is left unset when a public key or JWKS URL is configured."""
        missing = {
            name: _secret_file(self.data_dir, name, nbytes)
            for name, nbytes in SECRET_BYTES.items()
            if getattr(self, name) is None and not (name == "jwt_secret" and self.hs256_off)
        }
        loaded = self.model_copy(update=missing)
        loaded._secrets_loaded = True
        return loaded

    def _secret(self, name: str) -> str:
        value = getattr(self, name)
        if value is None:
            raise SecretsNotLoaded(
                f"{name} is unset: processes take their settings from load_settings() (or "
                "call Settings.with_secrets() at startup)"
            )
        return str(value)

    @property
    def resolved_admin_token(self) -> str:
        return self._secret("admin_token")

    @property
    def resolved_merchant_secret(self) -> str:
        return self._secret("merchant_secret")

    @property
    def resolved_webhook_secret(self) -> str:
        return self._secret("webhook_secret")

    @property
    def resolved_jwt_secret(self) -> str | None:
        """The HS256 key, or None when JWTs are verified with a public key / JWKS only."""
        if self.jwt_secret is None and self.hs256_off:
            return None
        return self._secret("jwt_secret")


def _by_variable(error: ValidationError) -> ValidationError:
    """``error`` with each field named by its environment variable, as the operator wrote it."""
    variables = Settings.variables()
    details: list[Any] = []
    for e in error.errors(include_url=False):
        loc = e["loc"]
        if loc and isinstance(loc[0], str) and loc[0] in variables:
            loc = (variables[loc[0]], *loc[1:])
        detail = {"type": e["type"], "loc": loc, "input": e["input"]}
        if "ctx" in e:
            detail["ctx"] = e["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(error.title, details)


def to_sync_url(url: str) -> str:
    if url.startswith("sqlite+aiosqlite:"):
        return "sqlite:" + url[len("sqlite+aiosqlite:") :]
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def to_async_url(url: str) -> str:
    url = to_sync_url(url)
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    return url  # postgresql+psycopg serves both sync and async engines


def load_settings() -> Settings:
    """A process's settings: the environment, with its secrets (``Settings.with_secrets``)."""
    return Settings().with_secrets()


@lru_cache
def get_settings() -> Settings:
    """``load_settings()``, once per process."""
    return load_settings()
