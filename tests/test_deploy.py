"""The deployment files: Kubernetes manifests against the Kubernetes schemas, offline, and
the docker compose file's structure.

``kubernetes-validate`` ships the schemas of each Kubernetes release, so no cluster
and no network are needed. Docker cannot run here: the compose file is checked for
what would make ``docker compose up`` fail or run something other than intended.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamapi.control.rules import parse_rules
from streamapi.keys import load_keys
from streamapi.routes_file import load_routes

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
# The oldest release still commonly run and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
GRACE_PERIOD_S = 30  # STREAMAPI_SHUTDOWN_GRACE_PERIOD_S in deployment.yaml
UVICORN_MARGIN_S = 5  # cli._UVICORN_SHUTDOWN_MARGIN_S


def _manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                documents.append(document)
    return documents


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in _manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    manifests = _manifests()
    kinds = sorted({m["kind"] for m in manifests})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    for manifest in manifests:
        # strict: a misspelt or misplaced field is an error, not ignored.
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = _one("Deployment", "streamapi")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_replicas_stop_after_their_drain_and_the_load_balancers() -> None:
    pod = _one("Deployment", "streamapi")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert _env(container)["STREAMAPI_SHUTDOWN_GRACE_PERIOD_S"] == str(GRACE_PERIOD_S)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = int(pre_stop[1])
    assert sleep_s >= 5
    assert pod["terminationGracePeriodSeconds"] > sleep_s + GRACE_PERIOD_S + UVICORN_MARGIN_S
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    requests = container["resources"]["requests"]
    assert set(requests) == {"cpu", "memory"}


def test_every_reference_between_the_manifests_resolves() -> None:
    deployment = _one("Deployment", "streamapi")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one("Service", "streamapi")["spec"]["selector"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget", "streamapi")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = _one("HorizontalPodAutoscaler", "streamapi")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "streamapi")

    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    # The state URL names the Redis Service and its port.
    redis = _one("Service", "streamapi-redis")
    url = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", env["STREAMAPI_STATE_URL"])
    assert url is not None
    assert url[1] == redis["metadata"]["name"]
    assert int(url[2]) == redis["spec"]["ports"][0]["port"]
    redis_pods = _one("Deployment", "streamapi-redis")["spec"]["template"]["metadata"]
    assert redis["spec"]["selector"].items() <= redis_pods["labels"].items()
    # Every volume names a ConfigMap or Secret that exists, and every file the
    # settings name is in a mounted volume.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in volumes.values():
        if "configMap" in volume:
            _one("ConfigMap", volume["configMap"]["name"])
        if "secret" in volume:
            _one("Secret", volume["secret"]["secretName"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for setting in ("STREAMAPI_RULES_FILE", "STREAMAPI_API_KEYS_FILE"):
        path = Path(env[setting])
        assert str(path.parent) in mounts, setting
    secret_key = env["STREAMAPI_ADMIN_KEY"]["secretKeyRef"]
    assert secret_key["key"] in _one("Secret", secret_key["name"])["stringData"]


def test_the_files_in_the_configmap_and_secret_are_valid_for_streamapi(tmp_path: Path) -> None:
    config = _one("ConfigMap", "streamapi-config")["data"]
    assert parse_rules(yaml.safe_load(config["rules.yaml"]), source="rules.yaml")
    routes = tmp_path / "routes.yaml"
    routes.write_text(config["routes.yaml"], encoding="utf-8")
    assert load_routes(routes)
    keys = tmp_path / "keys.yaml"
    keys.write_text(_one("Secret", "streamapi-keys")["stringData"]["keys.yaml"], encoding="utf-8")
    assert load_keys([], keys)


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def test_compose_services_reference_only_what_exists() -> None:
    services = _compose()["services"]
    published = []
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
            # A service of a profile can only wait for one that starts with it.
            assert set(services[dependency].get("profiles", [])) <= set(
                service.get("profiles", [])
            ), f"{name} -> {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
        for port in service.get("ports", []):
            published.append(port.split(":")[0])
    assert len(published) == len(set(published)), published


def test_compose_cluster_profile_is_redis_three_replicas_and_haproxy() -> None:
    services = _compose()["services"]
    cluster = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    assert cluster == {"redis", "replica1", "replica2", "replica3", "lb"}
    lb = services["lb"]
    assert "haproxy" in lb["image"]
    assert any(v.startswith("./deploy/haproxy/haproxy.cfg:") for v in lb["volumes"])
    # The addresses haproxy.cfg reads: each a replica of the profile, on its port.
    config = HAPROXY_CONFIG.read_text(encoding="utf-8")
    variables = set(re.findall(r'"\$\{([A-Z0-9_]+)\}"', config))
    assert variables == set(lb["environment"])
    for i in (1, 2, 3):
        host, port = lb["environment"][f"REPLICA_{i}"].split(":")
        assert host in cluster
        assert port == "8080"
    for i in (1, 2, 3):
        replica = services[f"replica{i}"]
        url = replica["environment"]["STREAMAPI_STATE_URL"]
        assert url.startswith("redis://redis:6379/")
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
