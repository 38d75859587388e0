"""The export cache: exported towers on disk, keyed by everything that changes them, safe to share.

Layout under the cache root::

    entries/<name>-<hash>/manifest.json   what the entry is (its key fields) + size and sha256 of every file
    entries/<name>-<hash>/<files>          model.onnx, model.xml/.bin, tokenizer.json, assets.json, ...
    entries/<name>-<hash>/checks/*.json    parity and speed measured on a machine (the ``auto`` verdicts)
    locks/<name>-<hash>.lock               one builder at a time per entry (fcntl.flock)
    checksums/<hash>.json                  memoised sha256 of weight files (path, size, mtime)

An entry is built in a temporary folder and renamed into place, so a reader sees either nothing or a
whole entry, and two replicas starting at once on a shared cache build it once (the second waits on the
lock, then finds it). Every load re-checks sizes and sha256; a corrupt or stale entry is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.runtime.types import EXPORT_FORMAT_VERSION

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHECKS_DIR = "checks"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trustserve" / "export"


class CacheEntryError(ValueError):
    """A cache entry that does not match its manifest (corrupt, truncated, or from another key)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def canonical_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class CacheEntry:
    """A verified entry: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest.get("meta", {})

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise CacheEntryError(f"{self.path.name} has no file {name!r}")
        return self.path / name

    def read_check(self, name: str) -> dict[str, Any] | None:
        path = self.path / CHECKS_DIR / f"{name}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def write_check(self, name: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.path / CHECKS_DIR / f"{name}.json", data)


class ExportCache:
    """Exported towers and model assets under one root folder (see the module docstring)."""

    def __init__(self, root: Path | str = DEFAULT_CACHE_DIR) -> None:
        self.root = Path(root).expanduser()

    # keys ----------------------------------------------------------------------------------------------
    @staticmethod
    def key(name: str, fields: dict[str, Any]) -> str:
        """``<name>-<hash of fields>``; ``name`` is for people, the hash decides."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
        return f"{safe}-{canonical_hash({'format': EXPORT_FORMAT_VERSION, **fields})[:20]}"

    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key

    # reading -------------------------------------------------------------------------------------------
    def verify(self, key: str, fields: dict[str, Any]) -> CacheEntry:
        """The entry for ``key`` if its manifest matches ``fields`` and every file its size and sha256."""
        path = self.entry_path(key)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheEntryError(f"{path.name}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT_VERSION:
            raise CacheEntryError(f"{path.name}: manifest of another format")
        if manifest.get("fields") != json.loads(json.dumps(fields, default=str)):
            raise CacheEntryError(f"{path.name}: manifest is for other key fields (stale entry)")
        for name, info in manifest.get("files", {}).items():
            file = path / name
            try:
                size = file.stat().st_size
            except OSError as exc:
                raise CacheEntryError(f"{path.name}: missing {name}") from exc
            if size != info["size"] or sha256_file(file) != info["sha256"]:
                raise CacheEntryError(f"{path.name}: {name} is corrupt (size or sha256 differs)")
        return CacheEntry(path, manifest)

    def lookup(self, key: str, fields: dict[str, Any]) -> CacheEntry | None:
        """A verified entry, or None when absent or invalid (an invalid one is logged)."""
        try:
            return self.verify(key, fields)
        except FileNotFoundError:
            return None
        except CacheEntryError as exc:
            log.warning("export cache: %s; it will be rebuilt", exc)
            return None

    # building ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{key}.lock", "a+") as handle:
            started = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = time.monotonic() - started
            if waited > 1.0:
                log.info("export cache: waited %.1f s for another process building %s", waited, key)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_build(
        self,
        key: str,
        fields: dict[str, Any],
        build: Callable[[Path], dict[str, Any]],
    ) -> tuple[CacheEntry, bool]:
        """The verified entry for ``key``; built by ``build(tmp_folder) -> meta`` when absent or invalid.

        Returns ``(entry, built)``. ``build`` writes its files into the folder it is given; they are
        checksummed into the manifest and the folder is renamed into place under the key's lock.
        """
        entry = self.lookup(key, fields)
        if entry is not None:
            return entry, False
        with self._lock(key):
            entry = self.lookup(key, fields)  # another replica may have built it while we waited
            if entry is not None:
                return entry, False
            final = self.entry_path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{key}-"))
            try:
                meta = build(tmp)
                files = {
                    str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                    for p in sorted(tmp.rglob("*"))
                    if p.is_file()
                }
                manifest = {
                    "format": EXPORT_FORMAT_VERSION,
                    "key": key,
                    "fields": json.loads(json.dumps(fields, default=str)),
                    "files": files,
                    "meta": meta,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                write_json_atomic(tmp / MANIFEST, manifest)
                if final.exists():  # corrupt or stale: move it aside, then drop it
                    trash = final.with_name(f".trash-{key}-{os.getpid()}-{time.monotonic_ns()}")
                    os.rename(final, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return self.verify(key, fields), True

    # weight checksums ----------------------------------------------------------------------------------
    def file_checksum(self, path: Path) -> str:
        """sha256 of a weights file, memoised by (real path, size, mtime) so warm starts do not re-read it."""
        path = Path(path).resolve()
        stat = path.stat()
        memo = self.root / "checksums" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"
        stamp = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        try:
            data = json.loads(memo.read_text())
            if {k: data.get(k) for k in stamp} == stamp and isinstance(data.get("sha256"), str):
                return str(data["sha256"])
        except (OSError, json.JSONDecodeError):
            pass
        digest = sha256_file(path)
        try:
            write_json_atomic(memo, {**stamp, "sha256": digest})
        except OSError as exc:  # a read-only cache still works, it just re-hashes
            log.debug("could not memoise checksum of %s: %s", path, exc)
        return digest

    def tree_checksum(self, folder: Path, suffixes: tuple[str, ...] | None = None) -> str:
        """One checksum over the files of a folder (names + contents), e.g. a saved transformers model."""
        folder = Path(folder)
        parts = []
        for p in sorted(folder.rglob("*")):
            if p.is_file() and (suffixes is None or p.name.endswith(suffixes)):
                parts.append(f"{p.relative_to(folder)}:{self.file_checksum(p)}")
        if not parts:
            raise FileNotFoundError(f"no weight files in {folder}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
