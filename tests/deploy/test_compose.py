"""deploy/docker-compose.yml (+ the GPU override) parse as Compose files, reference only files that exist,
and agree with each other and with the server: Prometheus scrapes the service Grafana's datasource reads,
Grafana provisions the dashboard from where it is mounted, and the server settings are real settings.
Nothing is started here; .ci/containers.sh starts the stacks for real with podman-compose, so the files
must mean the same to podman-compose 1.0.3 (Debian bookworm) as to docker compose."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings
from tests.deploy.commands import COMPOSE_GPU_UP, COMPOSE_UP
from tests.deploy.manifests import REPO_ROOT, interpolate_compose, load_compose


def compose_files(command: str) -> list[Path]:
    """The ``-f`` files of a ``docker compose`` command line (docs/DEPLOY.md shows these commands)."""
    words = shlex.split(command)
    return [REPO_ROOT / value for flag, value in itertools.pairwise(words) if flag == "-f"]


DEPLOY = REPO_ROOT / "deploy"
[COMPOSE] = compose_files(COMPOSE_UP)
COMPOSE_GPU = compose_files(COMPOSE_GPU_UP)[-1]
ALL_COMPOSE_FILES = sorted(DEPLOY.glob("docker-compose*.yml"))
DOCKERFILE_STAGES = set(
    re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (REPO_ROOT / "Dockerfile").read_text(), re.M | re.I)
)


# podman-compose 1.0.3's interpolation (podman_compose.py, var_re): a default must not be empty, and
# `${VAR-x}` behaves like `${VAR:-x}` only for unset variables
_PODMAN_COMPOSE_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|(?:\{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)"
    r"(?:(?::?-(?P<default>[^}]+))|(?::?\?(?P<err>[^}]+)))?\}))"
)
# services pulled from a registry, and the image variable .ci/containers.sh points at a deploy/debian build
REGISTRY_IMAGES = {"prometheus": "PROMETHEUS_IMAGE", "postgres": "POSTGRES_IMAGE", "nginx": "NGINX_IMAGE"}
NOT_PACKAGED = {"grafana"}  # neither Debian nor any reachable registry has it: the CI stack runs without it


def interpolate_podman_compose(value: Any, env: dict[str, str]) -> Any:
    """podman-compose 1.0.3's substitution, applied to every string of the parsed file, as it does."""
    if isinstance(value, dict):
        return {k: interpolate_podman_compose(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_podman_compose(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def convert(match: re.Match[str]) -> str:
        if match["escaped"] is not None:
            return "$"
        name = match["named"] or match["braced"]
        return env[name] if name in env else match["default"] or ""

    return _PODMAN_COMPOSE_VARIABLE.sub(convert, value)


def compose_variables(path: Path) -> set[str]:
    return set(re.findall(r"\$\{(\w+)", path.read_text()))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to deploy/) for every bind mount of a service."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a container path of a service lives on the host, through its bind mounts."""
    for target, source in sorted(bind_mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not inside a bind mount")


def test_interpolation_follows_compose_rules() -> None:
    text = "a: ${X:-d}\nb: ${X-d}\nc: ${Y}\nd: $${Z}\n"
    assert yaml.safe_load(interpolate_compose(text, {"X": ""})) == {
        "a": "d",
        "b": None,
        "c": None,
        "d": "${Z}",
    }
    assert yaml.safe_load(interpolate_compose(text, {"X": "v", "Y": "w"}))["a"] == "v"


@pytest.mark.parametrize("path", ALL_COMPOSE_FILES, ids=lambda p: p.name)
def test_strict_compose_spec_parse(path: Path) -> None:
    """The Rust ``compose_spec`` parser (unknown keys are errors). YAML anchors and merge keys are resolved
    first, as Compose does."""
    compose_spec = pytest.importorskip("compose_spec", reason="the compose-spec parser is not installed")
    parsed = compose_spec.PyCompose.from_json(json.dumps(load_compose(path)))
    parsed.validate()
    assert parsed.service_names()


@pytest.mark.parametrize("path", ALL_COMPOSE_FILES, ids=lambda p: p.name)
def test_every_referenced_file_exists(path: Path) -> None:
    """Bind-mount sources, build contexts, Dockerfiles and targets, named volumes, dependencies."""
    compose = load_compose(path)
    services = compose["services"]
    for name, service in services.items():
        build = service.get("build")
        if build and "context" in build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            if context == REPO_ROOT and "target" in build:
                assert build["target"] in DOCKERFILE_STAGES, name
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name}: depends on unknown service {dependency}"


def test_stack_builds_the_runtime_image_from_the_repository(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"trustserve", "prometheus", "grafana"} <= set(services)
    build = services["trustserve"]["build"]
    assert (DEPLOY / build["context"]).resolve() == REPO_ROOT
    assert build["target"] == "runtime"


@pytest.mark.parametrize("path", [COMPOSE, DEPLOY / "docker-compose.replicas.yml"], ids=lambda p: p.name)
def test_the_slim_image_is_one_variable_away(path: Path) -> None:
    """TRUSTSERVE_BUILD_TARGET=slim builds the torch-free image for every trustserve service; the GPU
    override keeps the full image (the slim one has no CUDA)."""
    for env in ({}, {"TRUSTSERVE_BUILD_TARGET": "slim"}):
        servers = [s for s in load_compose(path, env)["services"].values() if "build" in s]
        assert servers and {s["build"]["target"] for s in servers} == {
            env.get("TRUSTSERVE_BUILD_TARGET", "runtime")
        }
    gpu = load_compose(COMPOSE_GPU, {"TRUSTSERVE_BUILD_TARGET": "slim"})
    assert gpu["services"]["trustserve"]["build"]["target"] == "runtime"


def test_prometheus_scrapes_the_server_service(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    [config_flag] = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    config_file = host_path(prometheus, config_flag.split("=", 1)[1])
    assert config_file == DEPLOY / "prometheus/prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    for rule_file in config["rule_files"]:
        assert (config_file.parent / rule_file).is_file()
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "trustserve"]
    server_ports = {p.split(":")[-1] for p in compose["services"]["trustserve"]["ports"]}
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert "trustserve:8000" in targets
    for target in targets:
        host, port = target.split(":")
        assert host in compose["services"] and port in server_ports, target


def test_grafana_provisions_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    prometheus_ports = {p.split(":")[-1] for p in compose["services"]["prometheus"]["ports"]}
    assert datasource["type"] == "prometheus"
    host, port = datasource["url"].removeprefix("http://").split(":")
    assert host == "prometheus" and port in prometheus_ports
    [provider] = yaml.safe_load((provisioning / "dashboards/trustserve.yml").read_text())["providers"]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert (dashboards / "trustserve.json").is_file()
    assert host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()


def test_server_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = load_compose(COMPOSE_GPU)
    for env in (
        compose["services"]["trustserve"]["environment"],
        gpu["services"]["trustserve"]["environment"],
    ):
        for key, value in env.items():
            assert key.removeprefix("TRUSTSERVE_").lower() in Settings.model_fields, key
            monkeypatch.setenv(key, value or "")
        Settings(models_dir=REPO_ROOT / "models")  # validates every value that was set


def test_gpu_command_layers_the_override_on_the_base_file() -> None:
    assert compose_files(COMPOSE_GPU_UP) == [COMPOSE, COMPOSE_GPU]


def test_gpu_override_reserves_an_nvidia_gpu_and_builds_cuda(compose: dict[str, Any]) -> None:
    gpu = load_compose(COMPOSE_GPU)
    assert set(gpu["services"]) <= set(compose["services"])
    server = gpu["services"]["trustserve"]
    [device] = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert re.fullmatch(r"cu\d+", server["build"]["args"]["TORCH_VARIANT"])
    assert server["environment"]["TRUSTSERVE_DEVICE"] == "cuda"


@pytest.mark.parametrize("path", ALL_COMPOSE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("variables", ["unset", "set"])
def test_podman_compose_reads_what_docker_compose_reads(path: Path, variables: str) -> None:
    """The same services, images, settings and ports under both tools, with the variables unset and set
    (an empty default such as ``${TRUSTSERVE_API_KEYS:-}`` reached the server literally under podman-compose
    and crash-looped it)."""
    env = {name: f"value-of-{name}" for name in compose_variables(path)} if variables == "set" else {}
    raw = yaml.safe_load(path.read_text())
    assert interpolate_podman_compose(raw, env) == load_compose(path, env)


@pytest.mark.parametrize("path", ALL_COMPOSE_FILES, ids=lambda p: p.name)
def test_registry_images_can_be_replaced_by_debian_builds(path: Path) -> None:
    """Each image that would come from a registry is ``${VAR:-official image}``; .ci/containers.sh sets VAR
    to an image built from deploy/debian (sites without a registry do the same, docs/DEPLOY.md)."""
    ci_script = (REPO_ROOT / ".ci/containers.sh").read_text()
    for name, service in yaml.safe_load(path.read_text())["services"].items():
        if "build" in service or name in NOT_PACKAGED:
            continue
        variable = REGISTRY_IMAGES[name]
        assert re.fullmatch(rf"\$\{{{variable}:-[^}}]+\}}", service["image"]), f"{name}: {service['image']}"
        assert f"export {variable}" in ci_script or f" {variable}" in ci_script, variable
        [image] = re.findall(rf"^{variable}=(\S+)$", ci_script, re.M)
        built_from = image.split("/")[-1].split(":")[0].removeprefix("debian-")
        assert (REPO_ROOT / f"deploy/debian/{built_from}.Containerfile").is_file(), image


def test_replicas_are_reachable_one_by_one() -> None:
    """Each replica is published on loopback, so a client (and CI) can write through one and read through
    the other; the balancer is the only port on every address."""
    replicas = load_compose(DEPLOY / "docker-compose.replicas.yml")["services"]
    ports = {name: s.get("ports", []) for name, s in replicas.items() if name.startswith("trustserve-")}
    assert len(ports) == 2
    published = [p for service_ports in ports.values() for p in service_ports]
    assert all(p.startswith("127.0.0.1:") and p.endswith(":8000") for p in published), published
    assert len(set(published)) == len(published)
