"""Every process reads its configuration here, from the environment (names in api.md)."""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


def _on_off(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"on", "1", "true", "yes"}:
        return True
    if text in {"off", "0", "false", "no"}:
        return False
    raise ValueError(f"expected on/off, got {value!r}")


def _secret_file(data_dir: Path, name: str, nbytes: int = 24) -> str:
    """A random secret kept per data dir, so restarts keep the same value."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    data_dir: Path = Field(default=Path(".data"), alias="TRADEFLOW_DATA_DIR")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    temporal_address: str = Field(default="127.0.0.1:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
    temporal_ui_port: int = Field(default=8233, alias="TEMPORAL_UI_PORT")
    api_port: int = Field(default=8000, alias="API_PORT")
    psp_port: int = Field(default=8100, alias="PSP_PORT")
    bind_host: str = Field(default="127.0.0.1", alias="BIND_HOST")
    admin_token: str | None = Field(default=None, alias="TRADEFLOW_ADMIN_TOKEN")
    webhook_secret: str | None = Field(default=None, alias="TRADEFLOW_WEBHOOK_SECRET")
    courier_simulator: bool = Field(default=True, alias="TRADEFLOW_COURIER_SIMULATOR")
    payment_timeout_s: float = Field(default=900.0, alias="TRADEFLOW_PAYMENT_TIMEOUT_S", gt=0)
    offer_timeout_s: float = Field(default=30.0, alias="TRADEFLOW_OFFER_TIMEOUT_S", gt=0)
    max_offers: int = Field(default=5, alias="TRADEFLOW_MAX_OFFERS", ge=1)
    reservation_ttl_s: float | None = Field(default=None, alias="TRADEFLOW_RESERVATION_TTL_S", gt=0)
    """Unconfirmed reservations lapse after this; default: payment timeout + 120 s."""
    sweep_interval_s: float = Field(default=300.0, alias="TRADEFLOW_SWEEP_INTERVAL_S", gt=0)
    """How often the inventory sweeper schedule runs."""
    reconcile_interval_s: float = Field(default=60.0, alias="TRADEFLOW_RECONCILE_INTERVAL_S", gt=0)
    """How often the reconciler schedule runs (docs/operations.md)."""
    reconcile_grace_s: float = Field(default=60.0, alias="TRADEFLOW_RECONCILE_GRACE_S", ge=0)
    """The reconciler leaves rows younger than this alone (an API may still be starting them)."""
    reconcile_restart_within_s: float = Field(
        default=900.0, alias="TRADEFLOW_RECONCILE_RESTART_WITHIN_S", ge=0
    )
    """An order nobody started is restarted up to this age; older, it is failed (NOT_STARTED)."""
    psp_action_delay_s: float = Field(default=3.0, alias="TRADEFLOW_PSP_ACTION_DELAY_S", ge=0)
    checkout_rate: str = Field(default="10/s", alias="TRADEFLOW_CHECKOUT_RATE")
    checkout_burst: int = Field(default=20, alias="TRADEFLOW_CHECKOUT_BURST", ge=1)
    demo: bool = Field(default=True, alias="TRADEFLOW_DEMO")
    psp_url: str | None = Field(default=None, alias="TRADEFLOW_PSP_URL")
    """Base URL of the PSP; defaults to the simulator on ``PSP_PORT``."""
    api_url: str | None = Field(default=None, alias="TRADEFLOW_API_URL")
    """Base URL of the API, for the courier simulator; defaults to ``API_PORT``."""
    otel_exporter: str = Field(default="none", alias="TRADEFLOW_OTEL_EXPORTER")
    """``none``, ``console`` or ``otlp`` (then OTEL_EXPORTER_OTLP_ENDPOINT applies)."""
    task_queues: str = Field(default="orders,dispatch", alias="TRADEFLOW_TASK_QUEUES")
    worker_metrics_port: int = Field(default=0, alias="TRADEFLOW_WORKER_METRICS_PORT", ge=0)
    """Prometheus port for the worker's Temporal SDK metrics; 0 turns them off."""
    merchant_webhook_url: str | None = Field(default=None, alias="TRADEFLOW_MERCHANT_WEBHOOK_URL")
    """Where order paid/cancelled and refund events are POSTed (max effort); unset: off."""
    merchant_secret: str | None = Field(default=None, alias="TRADEFLOW_MERCHANT_SECRET")
    """HMAC secret of merchant notifications; default: random per data dir."""
    sim_courier_prefix: str = Field(default="k-", alias="TRADEFLOW_SIM_COURIER_PREFIX")
    """The courier simulator plays the couriers whose ids start with this."""
    courier_step_s: float = Field(default=2.0, alias="TRADEFLOW_COURIER_STEP_S", ge=0)
    """Simulated courier: seconds between accept, pick-up and delivery."""
    psp_rate: str = Field(default="50/s", alias="TRADEFLOW_PSP_RATE")
    """Calls to the PSP, all workers together (GCRA in Redis)."""
    psp_burst: int = Field(default=100, alias="TRADEFLOW_PSP_BURST", ge=1)
    psp_breaker_window_s: float = Field(default=10.0, alias="TRADEFLOW_PSP_BREAKER_WINDOW_S", gt=0)
    """Sliding window the PSP breaker judges error and slow-call rates over."""
    psp_breaker_min_calls: int = Field(default=50, alias="TRADEFLOW_PSP_BREAKER_MIN_CALLS", ge=1)
    psp_breaker_failure_rate: float = Field(
        default=0.5, alias="TRADEFLOW_PSP_BREAKER_FAILURE_RATE", gt=0, le=1
    )
    psp_breaker_slow_call_s: float = Field(
        default=2.0, alias="TRADEFLOW_PSP_BREAKER_SLOW_CALL_S", gt=0
    )
    psp_breaker_slow_call_rate: float = Field(
        default=0.8, alias="TRADEFLOW_PSP_BREAKER_SLOW_CALL_RATE", gt=0, le=1
    )
    psp_breaker_open_s: float = Field(default=5.0, alias="TRADEFLOW_PSP_BREAKER_OPEN_S", gt=0)
    psp_breaker_probes: int = Field(default=3, alias="TRADEFLOW_PSP_BREAKER_PROBES", ge=1)
    """Calls let through at once while the breaker is half-open."""
    psp_breaker_probe_successes: int = Field(
        default=2, alias="TRADEFLOW_PSP_BREAKER_PROBE_SUCCESSES", ge=1
    )
    """Successful half-open probes that close the breaker (capped at the probe count)."""
    zone_resolution: int = Field(default=7, alias="TRADEFLOW_ZONE_RESOLUTION", ge=0, le=15)
    """H3 resolution of delivery zones (7: hexagons of ~1.4 km edge)."""
    lock_redis_urls: str | None = Field(default=None, alias="TRADEFLOW_LOCK_REDIS_URLS")
    """Comma-separated independent Redis nodes for zone leases (Redlock); default: REDIS_URL."""

    @property
    def lock_redis_url_list(self) -> list[str]:
        urls = [u.strip() for u in (self.lock_redis_urls or "").split(",") if u.strip()]
        return urls or [self.redis_url]

    auth: str = Field(default="auto", alias="TRADEFLOW_AUTH")
    """``auto`` (on unless ``BIND_HOST`` is loopback), ``on`` or ``off``; see api/auth.py."""
    jwt_secret: str | None = Field(default=None, alias="TRADEFLOW_JWT_SECRET", repr=False)
    """HS256 key of customer/courier/staff JWTs; default: random per data dir (unless a public
    key or JWKS URL is set, then HS256 is off)."""
    jwt_public_key: str | None = Field(default=None, alias="TRADEFLOW_JWT_PUBLIC_KEY")
    """RS256/ES256 verification key: PEM text, or the path of a PEM file."""
    jwks_url: str | None = Field(default=None, alias="TRADEFLOW_JWKS_URL")
    jwt_issuer: str = Field(default="tradeflow", alias="TRADEFLOW_JWT_ISSUER", min_length=1)
    jwt_audience: str = Field(default="tradeflow", alias="TRADEFLOW_JWT_AUDIENCE", min_length=1)
    jwt_leeway_s: float = Field(default=30.0, alias="TRADEFLOW_JWT_LEEWAY_S", ge=0, le=300)
    auth_failure_rate: str = Field(default="1/s", alias="TRADEFLOW_AUTH_FAILURE_RATE")
    """Refused credentials per client address, sustained (GCRA in Redis)."""
    auth_failure_burst: int = Field(default=20, alias="TRADEFLOW_AUTH_FAILURE_BURST", ge=1)

    @field_validator("auth", mode="before")
    @classmethod
    def _parse_auth(cls, v: object) -> str:
        text = str(v).strip().lower()
        if text == "auto":
            return "auto"
        return "on" if _on_off(text) else "off"

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) < 32:
            raise ValueError("TRADEFLOW_JWT_SECRET must be at least 32 bytes (HS256 key)")
        return v

    @field_validator("auth_failure_rate")
    @classmethod
    def _check_auth_failure_rate(cls, v: str) -> str:
        parse_rate(v)
        return v

    @field_validator("courier_simulator", "demo", mode="before")
    @classmethod
    def _parse_on_off(cls, v: object) -> bool:
        return _on_off(v)

    @field_validator("checkout_rate")
    @classmethod
    def _check_rate(cls, v: str) -> str:
        parse_rate(v)
        return v

    @property
    def checkout_rate_per_s(self) -> float:
        return parse_rate(self.checkout_rate)

    @field_validator("psp_rate")
    @classmethod
    def _check_psp_rate(cls, v: str) -> str:
        parse_rate(v)
        return v

    @property
    def psp_rate_per_s(self) -> float:
        return parse_rate(self.psp_rate)

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

    @property
    def resolved_admin_token(self) -> str:
        return self.admin_token or _secret_file(self.data_dir, "admin_token")

    @property
    def resolved_merchant_secret(self) -> str:
        return self.merchant_secret or _secret_file(self.data_dir, "merchant_secret")

    @property
    def resolved_jwt_secret(self) -> str | None:
        """The HS256 key, or None when JWTs are verified with a public key / JWKS only."""
        if self.jwt_secret:
            return self.jwt_secret
        if self.jwt_public_key or self.jwks_url:
            return None
        return _secret_file(self.data_dir, "jwt_secret", nbytes=32)

    @property
    def resolved_webhook_secret(self) -> str:
        return self.webhook_secret or _secret_file(self.data_dir, "webhook_secret")


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


@lru_cache
def get_settings() -> Settings:
    return Settings()
