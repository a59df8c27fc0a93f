"""deploy/kubernetes validated offline: every document parses, the Kustomization names them,
the StatefulSet has what the bridge needs (stable names, probes on /healthz and /readyz,
resources, a grace above the dispatcher's shutdown grace, the key mounted from a Secret as
icareus.key_file) and the ConfigMap's bridge config loads with the bridge's own config model."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from icareus_bridge.config import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OPTIONAL = {"podmonitor.yaml"}  # needs the Prometheus Operator's CRDs: added by choice


def documents() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert docs, f"{path.name} holds no document"
        out[path.name] = docs
    return out


def one(kind: str) -> dict[str, Any]:
    found = [
        d
        for name, docs in documents().items()
        if name not in OPTIONAL
        for d in docs
        if d["kind"] == kind
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The config model reads the key file at load; the Secret's mount point does not exist here,
    # so the ConfigMap is loaded with a stand-in key file and keeps the path it names.
    folder = tmp_path_factory.mktemp("k8s")
    config = yaml.safe_load(one("ConfigMap")["data"]["bridge.yaml"])
    mounted = config["icareus"]["key_file"]
    stand_in = folder / "organization-key"
    stand_in.write_text("a-production-key\n", encoding="utf-8")
    config["icareus"]["key_file"] = str(stand_in)
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    loaded = load_settings(path)
    icareus = loaded.icareus.model_copy(update={"key_file": Path(mounted)})
    return loaded.model_copy(update={"icareus": icareus})


def container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def test_every_document_parses_and_the_kustomization_lists_them() -> None:
    docs = documents()
    kustomization = docs.pop("kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(set(docs) - OPTIONAL)
    for name, items in docs.items():
        for d in items:
            assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], name


def test_the_configmap_loads_with_the_config_model(settings: Settings) -> None:
    assert settings.icareus.key is None, "the key comes from the Secret, not the ConfigMap"
    assert settings.icareus.key_file is not None
    assert settings.planner.instance_id == "" and settings.dispatcher.instance_id == ""
    assert settings.logging.format == "json"


def test_the_statefulset_gives_stable_ids_probes_resources_and_grace(settings: Settings) -> None:
    sts = one("StatefulSet")
    spec = sts["spec"]
    service = one("Service")
    assert spec["serviceName"] == service["metadata"]["name"]
    assert 1 <= spec["replicas"] <= settings.kafka.partitions
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.dispatcher.shutdown_grace_seconds
    c = container(sts)
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert port == settings.http.port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    args = c["args"]
    assert (
        args[0] == "run" and args[args.index("--config") + 1] == "/etc/icareus-bridge/bridge.yaml"
    )


def test_the_key_is_mounted_from_a_secret_where_key_file_points(settings: Settings) -> None:
    sts = one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(sts)["volumeMounts"]}
    assert settings.icareus.key_file is not None
    key_file = PurePosixPath(str(settings.icareus.key_file))
    mount = mounts[str(key_file.parent)]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"]
    assert key_file.name in [item["path"] for item in secret["items"]]
    config_mount = mounts["/etc/icareus-bridge"]
    assert (
        volumes[config_mount["name"]]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    )


def test_service_pdb_and_scraping_select_the_bridge_pods(settings: Settings) -> None:
    sts = one("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one("Service")
    assert service["spec"]["clusterIP"] == "None"  # headless
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.http.port)
    assert annotations["prometheus.io/path"] == "/metrics"
    monitor = documents()["podmonitor.yaml"][0]
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "http"
    assert {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance"} in (
        endpoint["relabelings"]
    )
