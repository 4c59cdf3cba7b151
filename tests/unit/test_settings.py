"""Every process reads the same environment variables the same way (infra/settings.py)."""

from __future__ import annotations

import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.breaker import BreakerConfig
from infra.settings import (
    SecretsNotLoaded,
    Settings,
    load_settings,
    parse_rate,
    to_async_url,
    to_sync_url,
)

VARIABLES = list(Settings.variables().values())
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment (nothing from the caller's shell) with a private data dir."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("TRADEFLOW_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def test_defaults_match_the_documented_configuration_table(env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.temporal_address == "127.0.0.1:7233"
    assert s.temporal_namespace == "default"
    assert (s.temporal_ui_port, s.api_port, s.psp_port) == (8233, 8000, 8100)
    assert s.bind_host == "127.0.0.1"
    assert s.courier_simulator is True
    assert s.demo is True
    assert s.payment_timeout_s == 900
    assert (s.offer_timeout_s, s.max_offers) == (30, 5)
    assert s.psp_action_delay_s == 3
    assert (s.checkout_rate, s.checkout_burst) == ("10/s", 20)
    assert s.resolved_psp_url == "http://127.0.0.1:8100"
    assert s.resolved_api_url == "http://127.0.0.1:8000"


def test_each_variable_is_its_field_name_with_the_prefix_unless_it_is_unprefixed() -> None:
    variables = Settings.variables()
    unprefixed = {
        name: var for name, var in variables.items() if var != f"TRADEFLOW_{name.upper()}"
    }
    assert unprefixed == {
        "database_url": "DATABASE_URL",
        "redis_url": "REDIS_URL",
        "temporal_address": "TEMPORAL_ADDRESS",
        "temporal_namespace": "TEMPORAL_NAMESPACE",
        "temporal_ui_port": "TEMPORAL_UI_PORT",
        "api_port": "API_PORT",
        "psp_port": "PSP_PORT",
        "bind_host": "BIND_HOST",
    }


def _documented_variables() -> set[str]:
    """The variables README.md's configuration table names (``TRADEFLOW_PSP_BREAKER_*``
    spelled out from its suffixes)."""
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        first, rest = line[2:].split(" | ", 1)
        found = re.findall(r"`([A-Z][A-Z0-9_]*\*?)`", first)
        for name in found:
            if name.endswith("*"):
                names |= {name[:-1] + s for s in re.findall(r"`([A-Z][A-Z_]*)`", rest)}
            else:
                names.add(name)
    return names


def test_every_variable_the_readme_documents_is_read(env: pytest.MonkeyPatch) -> None:
    documented = _documented_variables()
    assert len(documented) > 40 and "TRADEFLOW_PSP_BREAKER_PROBE_SUCCESSES" in documented
    assert sorted(documented - set(VARIABLES)) == []


def test_each_documented_variable_sets_its_field(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "sqlite:////tmp/x.db")
    env.setenv("TRADEFLOW_PSP_BREAKER_PROBE_SUCCESSES", "1")
    env.setenv("TRADEFLOW_RECONCILE_RESTART_WITHIN_S", "60")
    env.setenv("tradeflow_max_offers", "2")  # names are read case-insensitively
    s = Settings()
    assert s.database_url == "sqlite:////tmp/x.db"
    assert s.psp_breaker_probe_successes == 1
    assert s.reconcile_restart_within_s == 60
    assert s.max_offers == 2


def test_variables_named_as_in_the_environment_set_settings_too(env: pytest.MonkeyPatch) -> None:
    s = Settings.from_variables({"TRADEFLOW_OFFER_TIMEOUT_S": 120, "REDIS_URL": "redis://r/1"})
    assert (s.offer_timeout_s, s.redis_url) == (120, "redis://r/1")
    with pytest.raises(ValueError, match="TRADEFLOW_OFER_TIMEOUT_S"):
        Settings.from_variables({"TRADEFLOW_OFER_TIMEOUT_S": 120})


def test_data_dir_defaults_to_dot_data(env: pytest.MonkeyPatch) -> None:
    env.delenv("TRADEFLOW_DATA_DIR")
    assert Settings().data_dir == Path(".data")


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("30/m", 0.5), ("3600/h", 1.0), (" 5 / sec ", 5.0), ("1.5/second", 1.5)],
)
def test_rates_are_read_as_events_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["fast", "10", "10/d", "-1/s", "/s", "ten/s", ""])
def test_malformed_rates_are_refused_with_an_example_of_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="'10/s'"):
        parse_rate(text)


def test_checkout_rate_from_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("TRADEFLOW_CHECKOUT_RATE", "120/m")
    assert Settings().checkout_rate_per_s == pytest.approx(2.0)


def test_a_bad_checkout_rate_names_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("TRADEFLOW_CHECKOUT_RATE", "lots")
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert "TRADEFLOW_CHECKOUT_RATE" in str(excinfo.value)
    assert "'10/s'" in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("on", True), ("ON", True), ("1", True), ("true", True), ("yes", True)],
        *[("off", False), ("Off", False), ("0", False), ("false", False), ("no", False)],
    ],
)
def test_switches_read_on_and_off(env: pytest.MonkeyPatch, text: str, value: bool) -> None:
    env.setenv("TRADEFLOW_COURIER_SIMULATOR", text)
    env.setenv("TRADEFLOW_DEMO", text)
    s = Settings()
    assert s.courier_simulator is value
    assert s.demo is value


@pytest.mark.parametrize("name", ["TRADEFLOW_COURIER_SIMULATOR", "TRADEFLOW_DEMO"])
def test_a_switch_that_is_neither_on_nor_off_is_refused(env: pytest.MonkeyPatch, name: str) -> None:
    env.setenv(name, "maybe")
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert name in str(excinfo.value)
    assert "valid boolean" in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "mode"),
    [("auto", "auto"), ("AUTO", "auto"), ("on", "on"), ("1", "on"), ("Off", "off")],
)
def test_auth_is_auto_or_a_switch(env: pytest.MonkeyPatch, text: str, mode: str) -> None:
    env.setenv("TRADEFLOW_AUTH", text)
    assert Settings().auth == mode


def test_an_auth_mode_that_is_no_switch_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("TRADEFLOW_AUTH", "sometimes")
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert "TRADEFLOW_AUTH" in str(excinfo.value)
    assert "auto, on or off" in str(excinfo.value)


@pytest.mark.parametrize(
    "name", ["TRADEFLOW_CHECKOUT_RATE", "TRADEFLOW_PSP_RATE", "TRADEFLOW_AUTH_FAILURE_RATE"]
)
def test_every_rate_is_checked_the_same_way(env: pytest.MonkeyPatch, name: str) -> None:
    env.setenv(name, "120/m")
    Settings()
    env.setenv(name, "often")
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert name in str(excinfo.value)
    assert "'10/s'" in str(excinfo.value)


def test_the_psp_breaker_is_configured_from_its_variables(env: pytest.MonkeyPatch) -> None:
    assert Settings().psp_breaker_config() == BreakerConfig(
        window_s=10, min_calls=50, failure_rate=0.5, slow_call_s=2, slow_call_rate=0.8,
        open_s=5, half_open_probes=3, probe_successes=2,
    )  # fmt: skip
    env.setenv("TRADEFLOW_PSP_BREAKER_WINDOW_S", "30")
    env.setenv("TRADEFLOW_PSP_BREAKER_MIN_CALLS", "8")
    env.setenv("TRADEFLOW_PSP_BREAKER_FAILURE_RATE", "0.25")
    env.setenv("TRADEFLOW_PSP_BREAKER_SLOW_CALL_S", "1.5")
    env.setenv("TRADEFLOW_PSP_BREAKER_SLOW_CALL_RATE", "0.9")
    env.setenv("TRADEFLOW_PSP_BREAKER_OPEN_S", "12")
    env.setenv("TRADEFLOW_PSP_BREAKER_PROBES", "2")
    env.setenv("TRADEFLOW_PSP_BREAKER_PROBE_SUCCESSES", "5")  # capped at the probe count
    assert Settings().psp_breaker_config() == BreakerConfig(
        window_s=30, min_calls=8, failure_rate=0.25, slow_call_s=1.5, slow_call_rate=0.9,
        open_s=12, half_open_probes=2, probe_successes=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_PORT", "eighty"),
        ("TRADEFLOW_MAX_OFFERS", "0"),
        ("TRADEFLOW_PAYMENT_TIMEOUT_S", "0"),
        ("TRADEFLOW_OFFER_TIMEOUT_S", "-5"),
        ("TRADEFLOW_CHECKOUT_BURST", "0"),
        ("TRADEFLOW_PSP_ACTION_DELAY_S", "-1"),
        ("TRADEFLOW_COURIER_STEP_S", "soon"),
    ],
)
def test_out_of_range_numbers_are_refused(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert name in str(excinfo.value)


def test_numbers_and_names_come_from_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("API_PORT", "18000")
    env.setenv("PSP_PORT", "18100")
    env.setenv("TEMPORAL_ADDRESS", "temporal:7233")
    env.setenv("TEMPORAL_NAMESPACE", "shop")
    env.setenv("TRADEFLOW_OFFER_TIMEOUT_S", "2.5")
    env.setenv("TRADEFLOW_TASK_QUEUES", "orders")
    s = Settings()
    assert (s.api_port, s.psp_port) == (18000, 18100)
    assert (s.temporal_address, s.temporal_namespace) == ("temporal:7233", "shop")
    assert s.offer_timeout_s == 2.5
    assert s.task_queues == "orders"
    assert s.resolved_psp_url == "http://127.0.0.1:18100"
    assert s.resolved_api_url == "http://127.0.0.1:18000"


def test_explicit_service_urls_win_over_ports(env: pytest.MonkeyPatch) -> None:
    env.setenv("TRADEFLOW_PSP_URL", "http://psp:8100")
    env.setenv("TRADEFLOW_API_URL", "http://api:8000")
    s = Settings()
    assert (s.resolved_psp_url, s.resolved_api_url) == ("http://psp:8100", "http://api:8000")


def test_without_database_url_the_database_is_sqlite_in_the_data_dir(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = Settings()
    db = (tmp_path / "data" / "tradeflow.db").resolve()
    assert s.sync_database_url == f"sqlite:///{db}"
    assert s.async_database_url == f"sqlite+aiosqlite:///{db}"


@pytest.mark.parametrize(
    ("given", "sync", "async_"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        ),
        (
            "postgres://u:p@db/shop",
            "postgresql+psycopg://u:p@db/shop",
            "postgresql+psycopg://u:p@db/shop",
        ),
        (
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        ),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
    ],
)
def test_database_url_serves_both_sync_tools_and_async_engines(
    env: pytest.MonkeyPatch, given: str, sync: str, async_: str
) -> None:
    env.setenv("DATABASE_URL", given)
    s = Settings()
    assert (s.sync_database_url, s.async_database_url) == (sync, async_)
    assert to_sync_url(given) == sync
    assert to_async_url(given) == async_


def test_secrets_are_random_per_data_dir_and_kept_across_restarts(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = Settings().with_secrets()
    token, secret = first.resolved_admin_token, first.resolved_webhook_secret
    assert len(token) >= 24 and len(secret) >= 24
    assert token != secret

    again = load_settings()  # a restart, or another process on the same data dir
    assert (again.resolved_admin_token, again.resolved_webhook_secret) == (token, secret)
    for name in ("admin_token", "webhook_secret", "merchant_secret", "jwt_secret"):
        mode = (tmp_path / "data" / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, "secrets must not be readable by other users"

    env.setenv("TRADEFLOW_DATA_DIR", str(tmp_path / "other"))
    elsewhere = load_settings()
    assert elsewhere.resolved_admin_token != token
    assert elsewhere.resolved_webhook_secret != secret


def test_secrets_from_the_environment_win_and_write_no_file(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("TRADEFLOW_ADMIN_TOKEN", "admin-from-env")
    env.setenv("TRADEFLOW_WEBHOOK_SECRET", "secret-from-env")
    s = Settings().with_secrets()
    assert (s.resolved_admin_token, s.resolved_webhook_secret) == (
        "admin-from-env",
        "secret-from-env",
    )
    assert not (tmp_path / "data" / "admin_token").exists()
    assert not (tmp_path / "data" / "webhook_secret").exists()


def test_secrets_are_made_by_the_startup_step_not_by_reading_them(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = Settings()
    for read in (
        lambda: s.resolved_admin_token,
        lambda: s.resolved_webhook_secret,
        lambda: s.resolved_merchant_secret,
        lambda: s.resolved_jwt_secret,
    ):
        with pytest.raises(SecretsNotLoaded):
            read()
    assert not (tmp_path / "data").exists()
    loaded = s.with_secrets()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "admin_token",
        "jwt_secret",
        "merchant_secret",
        "webhook_secret",
    ]
    assert len(loaded.resolved_jwt_secret or "") >= 32
    assert loaded.with_secrets() == loaded
    assert loaded.resolved_admin_token not in repr(loaded)
    assert loaded.resolved_jwt_secret not in repr(loaded)


def test_with_a_public_key_no_hs256_secret_is_made(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("TRADEFLOW_JWKS_URL", "https://issuer.example/jwks.json")
    s = Settings().with_secrets()
    assert s.resolved_jwt_secret is None
    assert not (tmp_path / "data" / "jwt_secret").exists()
    assert Settings().resolved_jwt_secret is None  # nothing to load


def test_processes_starting_at_once_on_one_data_dir_get_the_same_secrets(
    env: pytest.MonkeyPatch,
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        loaded = list(pool.map(lambda _: Settings().with_secrets(), range(32)))
    assert len({(s.resolved_admin_token, s.resolved_jwt_secret) for s in loaded}) == 1


def test_zone_leases_use_the_listed_redis_nodes_or_else_the_main_redis(
    env: pytest.MonkeyPatch,
) -> None:
    assert Settings().lock_redis_url_list == ["redis://127.0.0.1:6379/0"]
    assert Settings().zone_resolution == 7
    env.setenv("TRADEFLOW_LOCK_REDIS_URLS", "redis://a:7001/0, redis://b:7002/0,redis://c:7003/0")
    assert Settings().lock_redis_url_list == [
        "redis://a:7001/0",
        "redis://b:7002/0",
        "redis://c:7003/0",
    ]


def test_new_secrets_never_begin_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token beginning with "-" reads as an option after --admin-token (seen in CI)."""
    from infra import settings as settings_module

    drawn = iter(["-starts-with-dash", "ok-token"])
    monkeypatch.setattr(settings_module.secrets, "token_urlsafe", lambda n: next(drawn))
    assert settings_module.new_secret(24) == "ok-token"
