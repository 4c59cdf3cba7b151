"""docker-compose.yml cannot be run here (no Docker engine), so check what can go wrong in it:
references between services, the variables tradeflow reads, ports, and the build."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from domain.names import SEARCH_ATTRIBUTE_TYPES
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KNOWN_VARIABLES = set(Settings.variables().values())
PORT = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}):)?(?:(?P<host>\d+):)?(?P<container>\d+)(?:/(?:tcp|udp))?$"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def tradeflow_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if "build" in s}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


def command_text(service: dict[str, Any]) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_dependencies_name_existing_services_and_usable_conditions(
    services: dict[str, dict[str, Any]],
) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dep, condition in dependencies(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            assert condition in conditions, f"{name} -> {dep}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy"


def test_tradeflow_services_read_only_variables_tradeflow_knows(
    services: dict[str, dict[str, Any]],
) -> None:
    ours = tradeflow_services(services)
    assert ours, "no service is built from the Dockerfile"
    for name, service in ours.items():
        unknown = {
            var
            for var in environment(service)
            if var not in KNOWN_VARIABLES and not var.startswith("OTEL_")
        }
        assert not unknown, f"{name} sets variables infra/settings.py does not read: {unknown}"


def test_every_tradeflow_process_runs_against_the_shared_infrastructure(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {
        "api": "python -m api",
        "worker": "python worker.py",
        "psp": "python -m psp",
        "courier-sim": "python -m cli.courier_sim",
    }
    for name, command in expected.items():
        service = services[name]
        assert command_text(service) == command
        env = environment(service)
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["BIND_HOST"] == "0.0.0.0"
        assert env["TRADEFLOW_OTEL_EXPORTER"] == "otlp"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_secrets_are_shared_and_come_from_the_operator(
    services: dict[str, dict[str, Any]],
) -> None:
    """The PSP signs webhooks the API checks: one secret for all, and never a default."""
    for name in ("api", "psp", "worker"):
        env = environment(services[name])
        for var in ("TRADEFLOW_ADMIN_TOKEN", "TRADEFLOW_WEBHOOK_SECRET"):
            assert re.fullmatch(r"\$\{" + var + r":\?[^}]*\}", env[var]), (name, var)


def test_temporal_runs_on_postgresql_with_the_custom_search_attributes(
    services: dict[str, dict[str, Any]],
) -> None:
    temporal = services["temporal"]
    assert temporal["image"].startswith("temporalio/auto-setup")
    assert environment(temporal)["DB"] == "postgres12"
    assert "postgresql" in dependencies(temporal)
    assert services["postgresql"]["image"].startswith("postgres:16")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui")
    assert "8233:8080" in services["temporal-ui"]["ports"]

    setup = services["temporal-admin-tools"]
    assert setup["image"].startswith("temporalio/admin-tools")
    script = command_text(setup)
    assert "temporal operator search-attribute create" in script
    for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
        assert re.search(rf"--name {name} --type {kind}\b", script), name
    for name in ("api", "worker"):
        assert dependencies(services[name]).get("temporal-admin-tools") == (
            "service_completed_successfully"
        )


def test_ports_are_well_formed(services: dict[str, dict[str, Any]]) -> None:
    published: list[str] = []
    for name, service in services.items():
        for port in service.get("ports") or []:
            m = PORT.match(str(port))
            assert m, f"{name}: malformed port {port!r}"
            for group in ("host", "container"):
                if m.group(group):
                    assert 1 <= int(m.group(group)) <= 65535, f"{name}: {port!r}"
            if m.group("host"):
                published.append(m.group("host"))
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"


def test_the_image_is_built_from_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name, service in tradeflow_services(services).items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context / dockerfile).is_file(), name
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert "pip install ." in text


def test_the_published_api_asks_for_credentials(services: dict[str, dict[str, Any]]) -> None:
    """Its ports are published beyond loopback: auth is on, with a JWT secret from .env."""
    env = environment(services["api"])
    assert env["TRADEFLOW_AUTH"] == "on"
    assert re.fullmatch(r"\$\{TRADEFLOW_JWT_SECRET:\?[^}]*\}", env["TRADEFLOW_JWT_SECRET"])


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (host path or volume name) of a service's volumes."""
    out: dict[str, str] = {}
    for v in service.get("volumes") or []:
        source, target = str(v).split(":")[:2]
        out[target] = source
    return out


def test_prometheus_scrapes_the_api_and_every_worker_replica(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    config_path = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((ROOT / config_path).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_port = environment(services["api"])["API_PORT"]
    [api_targets] = [c["targets"] for c in jobs["tradeflow-api"]["static_configs"]]
    assert api_targets == [f"api:{api_port}"]
    [worker_sd] = jobs["tradeflow-worker"]["dns_sd_configs"]
    assert worker_sd["names"] == ["worker"]  # each replica, not one of them
    assert (
        str(worker_sd["port"]) == environment(services["worker"])["TRADEFLOW_WORKER_METRICS_PORT"]
    )
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert dependencies(grafana)["prometheus"] == "service_healthy"
    volumes = mounts(grafana)
    provisioning = ROOT / volumes["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "tradeflow.yml").read_text())[
        "providers"
    ]
    dashboards_in_container = provider["options"]["path"]
    assert volumes[dashboards_in_container] == "./deploy/grafana"
    for name in ("prometheus", "grafana"):
        assert (
            f"{name}-data" in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]
        )


def test_the_api_and_the_workers_share_one_codec_key_ring_and_the_ui_decodes_through_the_api(
    services: dict[str, dict[str, Any]],
) -> None:
    key_file = Path(environment(services["api"])["TRADEFLOW_CODEC_KEY_FILE"])
    for name in ("migrate", "api", "worker"):
        env = environment(services[name])
        assert env["TRADEFLOW_CODEC"] == "on"
        assert env["TRADEFLOW_CODEC_KEY_FILE"] == str(key_file)
        assert mounts(services[name])[str(key_file.parent)] == "codec-keys", name
    # migrate (runs first, read-write) creates the ring; the others only read it.
    assert "tradeflow codec keys" in command_text(services["migrate"])
    for name in ("api", "worker"):
        assert any(str(v).endswith(":ro") for v in services[name]["volumes"]), name
    ui = environment(services["temporal-ui"])
    api_host_port = next(str(p).split(":")[-2] for p in services["api"]["ports"])
    assert ui["TEMPORAL_CODEC_ENDPOINT"] == f"http://localhost:{api_host_port}/codec"
    assert (
        environment(services["api"])["TRADEFLOW_CODEC_CORS_ORIGINS"] == ui["TEMPORAL_CORS_ORIGINS"]
    )
    # The image has the directory, owned by the app user (a new volume copies that).
    assert re.search(r"mkdir -p [^\n]*/keys", (ROOT / "Dockerfile").read_text())
