"""``kubectl kustomize deploy/k8s`` builds, and what it builds is consistent with the server: probes on
/livez and /readyz, settings the server accepts, the store on its claim, API keys in the file format the
server reads, and the documented way to replace the keys."""

from __future__ import annotations

import base64
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.api.auth import ApiKeyAuth
from app.config import Settings
from app.vlm.presets import list_presets
from tests.deploy.commands import KUSTOMIZE_BUILD
from tests.deploy.manifests import REPO_ROOT, by_kind, kustomize

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
K8S = REPO_ROOT / shlex.split(KUSTOMIZE_BUILD)[-1]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return by_kind(kustomize(K8S))


def container(built: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    [deployment] = built["Deployment"]
    [main] = deployment["spec"]["template"]["spec"]["containers"]
    return main


def server_env(built: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """What the container sees: the settings ConfigMap, then the explicit env entries."""
    [config_map] = built["ConfigMap"]
    env = dict(config_map["data"])
    env.update({e["name"]: e["value"] for e in container(built)["env"]})
    return env


def validate_against_kubernetes_schemas(built: dict[str, list[dict[str, Any]]]) -> None:
    """Strict validation (unknown fields are errors) against Kubernetes' published OpenAPI schemas,
    shipped in the PyPI package ``kubernetes-validate``; skipped when it is not installed."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed"
    )
    version = kubernetes_validate.latest_version()
    for documents in built.values():
        for document in documents:
            kubernetes_validate.validate(document, version, strict=True)


def test_builds_every_kind(built: dict[str, list[dict[str, Any]]]) -> None:
    assert set(built) == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Service",
        "PersistentVolumeClaim",
        "Deployment",
        "HorizontalPodAutoscaler",
    }
    namespaces = {
        d["metadata"].get("namespace") for kind, docs in built.items() if kind != "Namespace" for d in docs
    }
    assert namespaces == {built["Namespace"][0]["metadata"]["name"]}


def test_probes_ports_and_resources(built: dict[str, list[dict[str, Any]]]) -> None:
    main = container(built)
    env = server_env(built)
    [port] = main["ports"]
    assert port == {"name": "http", "containerPort": int(env["TRUSTSERVE_PORT"])}
    assert env["TRUSTSERVE_HOST"] == "0.0.0.0"
    assert main["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # the model may take minutes to load: the startup probe must allow it before liveness counts
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    for kind in ("requests", "limits"):
        assert set(main["resources"][kind]) == {"cpu", "memory"}
    [service] = built["Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = built["Deployment"][0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_settings_are_accepted_by_the_server(
    built: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = server_env(built)
    unknown = {k for k in env if k.removeprefix("TRUSTSERVE_").lower() not in Settings.model_fields}
    assert not unknown, f"not settings of app/config.py: {unknown}"
    for key in [k for k in os.environ if k.startswith("TRUSTSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TRUSTSERVE_MODELS_DIR", str(REPO_ROOT / "models"))  # the image's copy of models/
    settings = Settings()
    assert settings.model in list_presets(REPO_ROOT / "models")
    assert str(settings.store_dir) in {m["mountPath"] for m in container(built)["volumeMounts"]}


def test_store_is_the_claim_and_replicas_are_pinned(built: dict[str, list[dict[str, Any]]]) -> None:
    """Directory store on a ReadWriteOnce claim: one replica, replaced not rolled (README.md there)."""
    [deployment] = built["Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [claim] = built["PersistentVolumeClaim"]
    assert volumes["store"] == {
        "name": "store",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    [hpa] = built["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def _mounted_keys_file(built: dict[str, list[dict[str, Any]]], tmp_path: Path) -> Path:
    """The API-keys file as the pod would see it, written from the built Secret."""
    main = container(built)
    keys_path = Path(server_env(built)["TRUSTSERVE_API_KEYS_FILE"])
    [mount] = [m for m in main["volumeMounts"] if m["mountPath"] == str(keys_path.parent)]
    volumes = {v["name"]: v for v in built["Deployment"][0]["spec"]["template"]["spec"]["volumes"]}
    secret_name = volumes[mount["name"]]["secret"]["secretName"]
    [secret] = [s for s in built["Secret"] if s["metadata"]["name"] == secret_name]
    local = tmp_path / keys_path.name
    local.write_bytes(base64.b64decode(secret["data"][keys_path.name]) if secret.get("data") else b"")
    return local


def test_default_secret_means_no_authentication(
    built: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    assert not ApiKeyAuth(None, _mounted_keys_file(built, tmp_path)).enabled


def test_documented_key_replacement(tmp_path: Path) -> None:
    """deploy/k8s/README.md: your own kustomization over deploy/k8s replaces the Secret from a file."""
    (tmp_path / "api-keys.txt").write_text("k3y-for-tests-1:admin\nk3y-for-tests-2\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources:\n"
        f"  - {os.path.relpath(K8S, tmp_path)}\n"
        "secretGenerator:\n"
        "  - name: trustserve-api-keys\n"
        "    behavior: replace\n"
        "    files:\n"
        "      - keys=api-keys.txt\n"
    )
    built = by_kind(kustomize(tmp_path))
    pod = tmp_path / "pod"
    pod.mkdir()
    mounted = _mounted_keys_file(built, pod)
    assert mounted.read_text() == (tmp_path / "api-keys.txt").read_text()
    assert ApiKeyAuth(None, mounted).enabled


@pytest.mark.parametrize(
    "folder",
    sorted(p.parent for p in K8S.rglob("kustomization.yaml")),
    ids=lambda p: p.relative_to(K8S).as_posix(),
)
def test_every_kustomization_builds_with_probes_and_limits(folder: Path) -> None:
    """The base and every overlay (deploy/k8s/overlays/*): probes on /livez and /readyz, limits set."""
    built = by_kind(kustomize(folder))
    validate_against_kubernetes_schemas(built)
    main = container(built)
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert set(main["resources"]["limits"]) == {"cpu", "memory"}
    [hpa] = built["HorizontalPodAutoscaler"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
