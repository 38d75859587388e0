"""Helpers for .ci/containers.sh: read the host's apt and pip set-up, and check running containers over HTTP.

Each check raises (exit status 1, with the reason) unless the service behaves as it should; nothing here
trusts an exit status of podman-compose. Run with the host's Python (httpx and scikit-image come with the
project's dependencies):

    python3 .ci/containers.py apt-sources          # deb822 sources for Debian's suites of this release
    python3 .ci/containers.py pip-mounts           # podman build -v flags: pip config, CA bundle, indexes
    python3 .ci/containers.py no-local-ca BUNDLE   # an image's CA bundle lacks this host's own CAs
    python3 .ci/containers.py build-inputs PATH... --extra ARG...  # digest of what an image is built from
    python3 .ci/containers.py wait-ready URL         # seconds until /readyz answered 200
    python3 .ci/containers.py check-server URL --read-key K --admin-key K
    python3 .ci/containers.py check-prometheus URL --target trustserve:8000
    python3 .ci/containers.py check-replicas URL1 URL2 --balancer URL --read-key K --admin-key K
    python3 .ci/containers.py check-runtime URL --runtime onnxruntime  # every tower served from the cache
    python3 .ci/containers.py check-multimodal URL --logs FILE [--tolerate-torch-skip]
    python containers.py torch-free                  # run INSIDE an image: no torch, no CUDA stack
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

LABELS = ["espresso", "a cat", "a rocket"]
EXPECTED = "espresso"  # scikit-image's coffee photo
MULTIMODAL_DIR = Path(__file__).resolve().parent.parent / "models" / "multimodal"
IMAGE_MODELS_DIR = "/opt/trustserve/models"
# What the slim image may log for a multimodal checkpoint whose feature extractor still runs in torch
# (EfficientNet-Lite0 for av-digits-acr; moving it onto ONNX Runtime is issue 13's phase 2). Nothing else.
TORCH_SKIP = (
    "skipping broken multimodal checkpoint {folder}: modality 'image': cannot load its pretrained "
    "extractor: No module named 'torch'"
)
# Neither may be installed in the slim image (import names; distributions are checked by prefix too)
TORCH_MODULES = ("torch", "torchvision", "open_clip", "timm", "transformers", "efficientnet_lite_pytorch")
TORCH_DISTRIBUTIONS = ("torch", "torchvision", "open-clip-torch", "timm", "transformers", "triton")
CUDA_DISTRIBUTION_PREFIX = "nvidia-"
APT_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class CheckFailed(RuntimeError):
    """A container did not behave as it should."""


# --- the host's set-up ----------------------------------------------------------------------------------


def debian_sources(release: str) -> list[tuple[str, str, str]]:
    """(uri, suite, components) of the host's apt sources for Debian's ``release`` suites (the release,
    -updates, -security, -backports); third-party repositories (other suites) are left out."""
    suite_pattern = re.compile(rf"^{re.escape(release)}(-updates|-security|-backports)?$")
    found: list[tuple[str, str, str]] = []
    for path in APT_SOURCES:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (key.strip(), value.strip())
                    for key, _, value in (line.partition(":") for line in stanza.splitlines())
                    if not key.startswith("#") and value
                )
                if "deb" not in fields.get("Types", "").split() or fields.get("Enabled", "yes") == "no":
                    continue
                for uri in fields.get("URIs", "").split():
                    for suite in fields.get("Suites", "").split():
                        if suite_pattern.match(suite):
                            found.append((uri, suite, fields.get("Components", "main")))
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and suite_pattern.match(words[2]):
                    found.append((words[1], words[2], " ".join(words[3:]) or "main"))
    if not any(suite == release for _, suite, _ in found):
        raise CheckFailed(f"no apt source for Debian {release} on this host")
    return list(dict.fromkeys(found))


def apt_sources(release: str) -> str:
    """The deb822 file a Debian image gets: the host's Debian mirrors, signed by Debian's keyring."""
    return "\n".join(
        f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: {components}\nSigned-By: {DEBIAN_KEYRING}\n"
        for uri, suite, components in debian_sources(release)
    )


def pip_config() -> dict[str, str]:
    """``pip config list`` of the host (every file and PIP_* variable pip reads)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    config = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        config[key.strip()] = value.strip().strip("'\"")
    return config


def pip_mounts() -> list[str]:
    """Read-only ``podman build -v`` mounts that give a build the host's pip set-up without baking it into
    a layer: the configuration files, and every local file or folder they name (CA bundle, constraints,
    find-links folders, file:// indexes)."""
    home = Path.home()
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), home / ".config/pip/pip.conf"]
    files += [home / ".pip/pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    paths = [f for f in files if f.is_file()]
    for key, value in pip_config().items():
        if key.startswith(":env:"):
            continue  # the build does not see the host's environment, only its files
        for word in value.split():
            path = Path(word.removeprefix("file://"))
            if word.startswith(("/", "file:///")) and path.exists():
                if key.endswith("index-url") and path.name == "simple":
                    path = path.parent  # the index pages link to files beside simple/
                paths.append(path)
    mounts: list[str] = []
    for path in dict.fromkeys(paths):
        if path.name == "pip.conf" and path.is_relative_to(home):
            target = Path("/root") / path.relative_to(home)  # the build runs as root
        else:
            target = path
        mounts += ["-v", f"{path}:{target}:ro"]
    return mounts


def local_certificates() -> set[str]:
    """The base64 bodies of the CA certificates added to this host by hand (a proxy's, a company's)."""
    bodies = set()
    for path in Path("/usr/local/share/ca-certificates").rglob("*.crt"):
        bodies |= pem_bodies(path.read_text(errors="replace"))
    return bodies


def pem_bodies(text: str) -> set[str]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return {"".join(block.split()) for block in blocks}


def check_no_local_ca(bundle: Path) -> None:
    """An image's CA bundle must not trust what this host added (the host's bundle is mounted into builds,
    never copied)."""
    leaked = local_certificates() & pem_bodies(bundle.read_text(errors="replace"))
    if leaked:
        raise CheckFailed(f"{bundle} holds {len(leaked)} of this host's own CA certificates")


def build_inputs_digest(paths: list[Path], extra: list[str]) -> str:
    """sha256 over every file under ``paths`` (names and bytes; caches excluded as in .dockerignore) and the
    ``extra`` strings (build arguments, base image ids): an image labelled with the same digest was built
    from the same inputs."""
    digest = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(f"{path.as_posix()}\0{path.stat().st_mode & 0o111}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    for value in extra:
        digest.update(f"\0{value}".encode())
    return digest.hexdigest()


# --- HTTP checks ----------------------------------------------------------------------------------------


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.25
) -> tuple[Any, float]:
    """Calls ``probe`` until it returns a truthy value; returns it with the seconds it took."""
    start = time.monotonic()
    last_error = "no answer"
    while time.monotonic() - start < timeout:
        try:
            result = probe()
            if result:
                return result, time.monotonic() - start
        except (httpx.HTTPError, CheckFailed, KeyError, ValueError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise CheckFailed(f"{what}: not within {timeout:.0f} s (last: {last_error})")


def wait_ready(url: str, timeout: float) -> float:
    """Seconds until ``GET /readyz`` answers 200."""

    def ready() -> bool:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200

    return wait_for(f"{url}/readyz", ready, timeout)[1]


def coffee_png() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, format="PNG")
    return buffer.getvalue()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def classify(url: str, key: str, label_set: str | None = None) -> dict[str, Any]:
    """The coffee photo through ``POST /v1/classify`` (multipart); the answer must be espresso."""
    data = {"label_set": label_set} if label_set else {"labels": json.dumps(LABELS)}
    response = httpx.post(
        f"{url}/v1/classify",
        files=[("image", ("coffee.png", coffee_png(), "image/png"))],
        data=data,
        headers=auth(key),
        timeout=60,
    )
    if response.status_code != 200:
        raise CheckFailed(f"classify on {url}: {response.status_code} {response.text[:300]}")
    body = response.json()
    prediction = body["results"][0]["prediction"]
    if prediction["label"] != EXPECTED:
        raise CheckFailed(f"classify on {url}: {prediction} instead of {EXPECTED}")
    if label_set and (body.get("label_set") or {}).get("id") != label_set:
        raise CheckFailed(f"classify on {url}: answered for label set {body.get('label_set')}")
    return prediction


def expect_status(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise CheckFailed(f"{what}: {response.status_code} instead of {status}: {response.text[:300]}")


def check_server(url: str, read_key: str, admin_key: str) -> None:
    """Ready; the coffee photo is espresso; the API keys are enforced (none: 401, read key: no admin
    write); /metrics is open to a scraper."""
    prediction = classify(url, read_key)
    print(f"classify: {prediction['label']} ({prediction['probability']:.4f})")
    image = [("image", ("coffee.png", coffee_png(), "image/png"))]
    no_key = httpx.post(f"{url}/v1/classify", files=image, data={"labels": json.dumps(LABELS)}, timeout=60)
    expect_status(no_key, 401, "classify without a key")
    body = {"id": f"ci-keys-{os.getpid()}", "labels": LABELS}
    read_write = httpx.post(f"{url}/v1/label-sets", json=body, headers=auth(read_key), timeout=60)
    expect_status(read_write, 403, "label-set create with the read key")
    admin_write = httpx.post(f"{url}/v1/label-sets", json=body, headers=auth(admin_key), timeout=60)
    expect_status(admin_write, 201, "label-set create with the admin key")
    deleted = httpx.delete(f"{url}/v1/label-sets/{body['id']}", headers=auth(admin_key), timeout=60)
    expect_status(deleted, 204, "label-set delete with the admin key")
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    expect_status(metrics, 200, "/metrics")
    if not re.search(r"^trustserve_images_classified_total\{.*\} [1-9]", metrics.text, re.M):
        raise CheckFailed("/metrics does not count the classified image (trustserve_images_classified_total)")
    print("API keys: 401 without a key, 403 for a write with the read key, 201/204 with the admin key")


def prometheus_get(url: str, path: str, **params: str) -> Any:
    response = httpx.get(f"{url}/api/v1/{path}", params=params, timeout=10)
    response.raise_for_status()
    body = response.json()
    if body.get("status") != "success":
        raise CheckFailed(f"Prometheus {path}: {body}")
    return body["data"]


def check_prometheus(url: str, target: str, job: str, timeout: float, min_rules: int) -> None:
    """Prometheus is ready, loaded the alert rules, and its scrape of ``target`` (a compose service name)
    is up with trustserve's own series in the database."""
    wait_for(f"{url}/-/ready", lambda: httpx.get(f"{url}/-/ready", timeout=5).status_code == 200, timeout)

    def target_up() -> dict[str, Any] | None:
        targets = prometheus_get(url, "targets", state="active")["activeTargets"]
        mine = [t for t in targets if t["labels"].get("job") == job]
        if not mine:
            raise CheckFailed(f"no active target for job {job}: {targets}")
        [entry] = [t for t in mine if t["labels"].get("instance") == target] or [None]
        if entry is None:
            raise CheckFailed(
                f"job {job} scrapes {[t['labels'].get('instance') for t in mine]}, not {target}"
            )
        if entry["health"] != "up":
            raise CheckFailed(f"target {target}: {entry['health']} {entry.get('lastError')}")
        return entry

    entry, seconds = wait_for(f"scrape of {target} up", target_up, timeout, interval=1)
    print(f"Prometheus scrapes {entry['scrapeUrl']}: up after {seconds:.1f} s")
    rules = [r for g in prometheus_get(url, "rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]
    if len(rules) < min_rules:
        raise CheckFailed(f"Prometheus loaded {len(rules)} alert rules, expected at least {min_rules}")
    query = f'trustserve_images_classified_total{{job="{job}"}} > 0'

    def classified() -> list[Any]:
        return prometheus_get(url, "query", query=query)["result"]

    series, _ = wait_for(f"Prometheus query {query}", classified, timeout, interval=1)
    print(f"{len(rules)} alert rules loaded; {query}: {[s['value'][1] for s in series]}")


def check_replicas(
    first: str, second: str, balancer: str, read_key: str, admin_key: str, timeout: float
) -> None:
    """A label set created through one replica is served by the other one (through PostgreSQL), and the
    load balancer answers with it too."""
    label_set = f"ci-coffee-{os.getpid()}"
    created = httpx.post(
        f"{first}/v1/label-sets",
        json={"id": label_set, "labels": LABELS},
        headers=auth(admin_key),
        timeout=120,
    )
    expect_status(created, 201, f"label-set create on {first}")

    def visible() -> bool:
        return httpx.get(f"{second}/v1/label-sets/{label_set}", headers=auth(read_key), timeout=10).is_success

    _, seconds = wait_for(f"label set {label_set} on {second}", visible, timeout)
    print(f"label set {label_set} created on {first}, visible on {second} after {seconds:.2f} s")
    prediction = classify(second, read_key, label_set=label_set)
    answer = f"{prediction['label']} ({prediction['probability']:.4f})"
    print(f"classify on {second} with label set {label_set}: {answer}")
    for _ in range(2):  # round robin: both replicas answer through the balancer
        classify(balancer, read_key, label_set=label_set)
    print(f"the load balancer {balancer} answers with it too")


def check_runtime(url: str, runtime: str, read_key: str) -> None:
    """Every tower of the served model runs on ``runtime`` from the export cache (a hit: nothing was
    exported at start-up, which would need torch)."""
    response = httpx.get(f"{url}/v1/models", headers=auth(read_key), timeout=10)
    expect_status(response, 200, "/v1/models")
    for model in response.json()["models"]:
        towers = model.get("runtime") or {}
        if not towers:
            raise CheckFailed(f"/v1/models: {model.get('id')} reports no runtime per tower")
        for tower, info in towers.items():
            if (info.get("runtime"), info.get("cache")) != (runtime, "hit"):
                raise CheckFailed(
                    f"{model.get('id')}/{tower} runs on {info.get('runtime')} (cache {info.get('cache')}), "
                    f"not on {runtime} from the baked export cache"
                )
        runs = ", ".join(f"{tower} {info['runtime']} (cache hit)" for tower, info in towers.items())
        print(f"{model.get('id')}: {runs}")


def log_messages(path: Path) -> list[str]:
    """The ``message`` of every JSON log line of a container (other lines as they are)."""
    messages = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            messages.append(line)
            continue
        messages.append(str(record.get("message", line)) if isinstance(record, dict) else line)
    return messages


def check_multimodal(url: str, read_key: str, logs: Path, tolerate_torch_skip: bool) -> None:
    """Every checkpoint under models/multimodal is served (a prediction from zero feature vectors answers
    200), or, with ``tolerate_torch_skip``, was skipped with exactly ``TORCH_SKIP`` in the logs."""
    expected = {
        json.loads((folder / "config.json").read_text())["name"]: folder.name
        for folder in sorted(MULTIMODAL_DIR.iterdir())
        if (folder / "config.json").is_file()
    }
    response = httpx.get(f"{url}/v1/multimodal/models", headers=auth(read_key), timeout=10)
    expect_status(response, 200, "/v1/multimodal/models")
    served = {m["name"]: m for m in response.json()["models"]}
    messages = log_messages(logs)
    for name, folder in expected.items():
        if name in served:
            inputs = {m["name"]: [0.0] * math.prod(m["input_shape"]) for m in served[name]["modalities"]}
            predicted = httpx.post(
                f"{url}/v1/multimodal/{name}/predict",
                json={"inputs": inputs},
                headers=auth(read_key),
                timeout=60,
            )
            expect_status(predicted, 200, f"multimodal predict with {name}")
            print(f"multimodal {name}: served, predict 200")
            continue
        skip = TORCH_SKIP.format(folder=f"{IMAGE_MODELS_DIR}/multimodal/{folder}")
        if tolerate_torch_skip and skip in messages:
            print(f"multimodal {name}: skipped, as expected until its extractor runs without torch: {skip}")
            continue
        related = [m for m in messages if folder in m] or ["(nothing in the logs)"]
        raise CheckFailed(f"multimodal checkpoint {name} is not served: {related[-3:]}")


def check_torch_free() -> None:
    """Run by the image's own Python: torch and the libraries built on it cannot be imported, and no
    distribution of them or of the CUDA stack is installed."""
    import importlib.metadata
    import importlib.util

    importable = [m for m in TORCH_MODULES if importlib.util.find_spec(m) is not None]
    names = sorted({(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()})
    installed = [n for n in names if n in TORCH_DISTRIBUTIONS or n.startswith(CUDA_DISTRIBUTION_PREFIX)]
    if importable or installed:
        raise CheckFailed(f"the image has torch or CUDA: importable {importable}, installed {installed}")
    print(
        f"torch-free: none of {list(TORCH_MODULES)} importable, no torch or nvidia-* among {len(names)} "
        "installed distributions"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sources = commands.add_parser("apt-sources")
    sources.add_argument("--release", default="bookworm")
    sources.add_argument("--mirror", action="store_true", help="print only the release's first mirror")
    commands.add_parser("pip-mounts")
    inputs = commands.add_parser("build-inputs")
    inputs.add_argument("paths", nargs="+", type=Path)
    inputs.add_argument("--extra", nargs="*", default=[])
    no_local_ca = commands.add_parser("no-local-ca")
    no_local_ca.add_argument("bundle", type=Path)
    ready = commands.add_parser("wait-ready")
    ready.add_argument("url")
    ready.add_argument("--timeout", type=float, default=300)
    server = commands.add_parser("check-server")
    server.add_argument("url")
    prometheus = commands.add_parser("check-prometheus")
    prometheus.add_argument("url")
    prometheus.add_argument("--target", default="trustserve:8000")
    prometheus.add_argument("--job", default="trustserve")
    prometheus.add_argument("--min-rules", type=int, default=1)
    prometheus.add_argument("--timeout", type=float, default=120)
    replicas = commands.add_parser("check-replicas")
    replicas.add_argument("first")
    replicas.add_argument("second")
    replicas.add_argument("--balancer", required=True)
    replicas.add_argument("--timeout", type=float, default=60)
    runtime = commands.add_parser("check-runtime")
    runtime.add_argument("url")
    runtime.add_argument("--runtime", required=True)
    multimodal = commands.add_parser("check-multimodal")
    multimodal.add_argument("url")
    multimodal.add_argument("--logs", type=Path, required=True)
    multimodal.add_argument("--tolerate-torch-skip", action="store_true")
    commands.add_parser("torch-free")
    for command in (server, replicas, runtime, multimodal):
        command.add_argument("--read-key", default=os.environ.get("CI_READ_KEY"))
        command.add_argument("--admin-key", default=os.environ.get("CI_ADMIN_KEY"))
    args = parser.parse_args(argv)
    try:
        if args.command == "apt-sources":
            if args.mirror:
                print(next(uri for uri, suite, _ in debian_sources(args.release) if suite == args.release))
            else:
                print(apt_sources(args.release), end="")
        elif args.command == "pip-mounts":
            print("\n".join(pip_mounts()))
        elif args.command == "build-inputs":
            print(build_inputs_digest(args.paths, args.extra))
        elif args.command == "no-local-ca":
            check_no_local_ca(args.bundle)
        elif args.command == "wait-ready":
            print(f"{wait_ready(args.url, args.timeout):.1f}")
        elif args.command == "check-server":
            check_server(args.url, args.read_key, args.admin_key)
        elif args.command == "check-prometheus":
            check_prometheus(args.url, args.target, args.job, args.timeout, args.min_rules)
        elif args.command == "check-replicas":
            check_replicas(
                args.first, args.second, args.balancer, args.read_key, args.admin_key, args.timeout
            )
        elif args.command == "check-runtime":
            check_runtime(args.url, args.runtime, args.read_key)
        elif args.command == "check-multimodal":
            check_multimodal(args.url, args.read_key, args.logs, args.tolerate_torch_skip)
        elif args.command == "torch-free":
            check_torch_free()
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
