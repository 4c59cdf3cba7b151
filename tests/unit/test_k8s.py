"""deploy/k8s (kustomize) cannot be applied here (no cluster), so check what can go wrong in it:
every resource against the Kubernetes OpenAPI schemas (``kubernetes-validate``, which ships
them: nothing is downloaded), strictly (an unknown or misspelt field fails), and the references
between resources that no schema sees: selectors, Service ports, HPA targets, ConfigMap and
Secret names, probe paths and ports, the variables tradeflow reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from domain.names import ALL_TASK_QUEUES
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
"""Oldest Kubernetes the manifests must apply to (autoscaling/v2 behaviour, startupProbe)."""
KNOWN_VARIABLES = set(Settings.variables().values())
CODEC_SECRET = "tradeflow-codec-keys"
"""Created by the operator (kustomization.yaml says how): a key ring never lives in git."""


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def resources() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        path = K8S / name
        assert path.is_file(), f"kustomization.yaml lists {name}, which does not exist"
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


RESOURCES = resources()


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in RESOURCES if r["kind"] == kind}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_kustomization_is_complete() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    assert k["namespace"] == "tradeflow"
    listed = set(k["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "every manifest is listed, and only those"
    assert [i["name"] for i in k["images"]] == ["tradeflow"]
    images = {c["image"] for d in of_kind("Deployment").values() for c in pod_spec(d)["containers"]}
    assert images == {"tradeflow"}, "kustomize's images: sets the one image every pod runs"


@pytest.mark.parametrize(
    "resource", RESOURCES, ids=[f"{r['kind']}/{r['metadata']['name']}" for r in RESOURCES]
)
def test_each_resource_matches_the_kubernetes_schema(resource: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {exc.message}")


def test_the_api_the_workers_per_role_and_the_psp_simulator_are_deployed() -> None:
    deployments = of_kind("Deployment")
    assert set(deployments) == {
        "tradeflow-api",
        "tradeflow-psp",
        *(f"tradeflow-worker-{role}" for role in ALL_TASK_QUEUES),
    }
    commands = {n: pod_spec(d)["containers"][0]["command"] for n, d in deployments.items()}
    assert commands["tradeflow-api"] == ["python", "-m", "api"]
    assert commands["tradeflow-psp"] == ["python", "-m", "psp"]
    for role in ALL_TASK_QUEUES:
        assert commands[f"tradeflow-worker-{role}"] == ["python", "worker.py", "--queues", role]


def test_selectors_match_their_pods_and_services_reach_a_named_port() -> None:
    deployments = of_kind("Deployment")
    for name, d in deployments.items():
        selector = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
    for name, svc in of_kind("Service").items():
        targets = [
            d
            for d in deployments.values()
            if svc["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        ports = {
            p["name"]: p["containerPort"] for p in pod_spec(targets[0])["containers"][0]["ports"]
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    assert set(of_kind("Service")) == {"tradeflow-api", "tradeflow-psp"}


def test_every_worker_role_and_the_api_scale_with_an_hpa() -> None:
    hpas = of_kind("HorizontalPodAutoscaler")
    deployments = of_kind("Deployment")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    assert targets == {"tradeflow-api", *(f"tradeflow-worker-{r}" for r in ALL_TASK_QUEUES)}
    for hpa in hpas.values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        assert ref["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # CPU utilisation needs a CPU request to be measured against.
        container = pod_spec(deployments[ref["name"]])["containers"][0]
        assert container["resources"]["requests"]["cpu"]


def test_the_api_probes_healthz_for_liveness_and_readyz_for_readiness() -> None:
    api = pod_spec(of_kind("Deployment")["tradeflow-api"])["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"] for p in api["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert api[probe]["httpGet"]["port"] in ports, probe
    for name, d in of_kind("Deployment").items():
        container = pod_spec(d)["containers"][0]
        assert "livenessProbe" in container, name
        port = container["livenessProbe"]["httpGet"]["port"]
        assert port in {p["name"] for p in container["ports"]}, name


def test_pods_read_the_configmap_and_secret_that_exist_and_only_known_variables() -> None:
    configmaps, secrets = of_kind("ConfigMap"), of_kind("Secret")
    for cm in configmaps.values():
        unknown = {k for k in cm["data"] if k not in KNOWN_VARIABLES and not k.startswith("OTEL_")}
        assert not unknown, f"ConfigMap sets variables infra/settings.py does not read: {unknown}"
    for s in secrets.values():
        assert set(s["stringData"]) <= KNOWN_VARIABLES
    for name, d in of_kind("Deployment").items():
        spec = pod_spec(d)
        container = spec["containers"][0]
        for source in container["envFrom"]:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps, name
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, name
        for var in container.get("env", []):
            assert var["name"] in KNOWN_VARIABLES or var["name"].startswith("OTEL_"), var
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (name, mount)
        for v in volumes.values():
            if "secret" in v:
                assert v["secret"]["secretName"] in {*secrets, CODEC_SECRET}, name


def test_every_process_that_talks_to_temporal_mounts_the_codec_key_ring() -> None:
    config = of_kind("ConfigMap")["tradeflow-config"]["data"]
    assert config["TRADEFLOW_CODEC"] == "on"
    key_file = Path(config["TRADEFLOW_CODEC_KEY_FILE"])
    for name, d in of_kind("Deployment").items():
        if name == "tradeflow-psp":
            continue
        spec = pod_spec(d)
        mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
        mount = mounts[str(key_file.parent)]
        assert mount["readOnly"] is True, name
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == CODEC_SECRET, name


def test_secrets_hold_placeholders_only() -> None:
    for s in of_kind("Secret").values():
        for key, value in s["stringData"].items():
            assert "CHANGE-ME" in value, f"{key} looks like a real secret in git"


def test_workers_get_longer_to_stop_than_their_graceful_shutdown() -> None:
    """worker.py drains activities for 10 s on SIGTERM; Kubernetes must not SIGKILL sooner."""
    for role in ALL_TASK_QUEUES:
        spec = pod_spec(of_kind("Deployment")[f"tradeflow-worker-{role}"])
        assert spec["terminationGracePeriodSeconds"] > 10
