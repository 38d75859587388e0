"""Durable label-set storage behind a small interface.

``LabelSetStore`` is what the service talks to: whole-label-set versioned writes with an
``expected_version`` for optimistic concurrency (a stale writer gets ``VersionConflictError``), so a
shared backend (PostgreSQL, one row per version) can replace the embedded ``DirectoryStore`` without
touching the API layer.

``DirectoryStore`` layout (one folder per label set, immutable per-version data files, one manifest as
the commit point)::

    <root>/FORMAT                              {"format": "trustserve.labelset-store", "version": 1}
    <root>/locks/<id>.lock                     fcntl lock serialising writers (threads and processes)
    <root>/label-sets/<id>/manifest.json       metadata + file list with sha256 + its own checksum
    <root>/label-sets/<id>/v00000007.arrays.safetensors
    <root>/label-sets/<id>/v00000007.<blob>.bin       derived data (serialised FAISS indexes)

A write creates the new version's data files (temp file + fsync + rename), then atomically replaces
``manifest.json`` the same way, fsyncs the folder, and only then removes the previous version's files.
A crash at any point leaves either the old or the new manifest, each with all its files present.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from app.labelsets.models import LabelSetMeta, is_valid_slug

MANIFEST_FORMAT = "trustserve.labelset/1"
STORE_FORMAT = {"format": "trustserve.labelset-store", "version": 1}
# a manifest names data files of its own folder only: no separators, no dots but the suffix ones
DATA_FILE = re.compile(r"^v\d{8}\.[a-z_]{1,32}\.(safetensors|bin)$")
MAX_DATA_FILE_BYTES = 4 * 2**30
MAX_MANIFEST_BYTES = 64 * 2**20
LOAD_ATTEMPTS = 5  # reads racing that many commits in a row give up (see DirectoryStore.load)


class StoreError(Exception):
    """Base class of store failures."""


class LabelSetNotFoundError(StoreError):
    """No committed label set with this id."""


class VersionConflictError(StoreError):
    """The caller's expected version is not the stored one (stale writer, or create over an existing
    id)."""

    def __init__(self, label_set_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"label set {label_set_id!r} is at version {current}, the write expected version {expected}"
        )
        self.label_set_id = label_set_id
        self.expected = expected
        self.current = current


class CorruptEntryError(StoreError):
    """A stored entry fails validation (bad checksum, missing file, unparsable metadata)."""

    def __init__(self, label_set_id: str, reason: str) -> None:
        super().__init__(f"label set {label_set_id!r} is unreadable: {reason}")
        self.label_set_id = label_set_id
        self.reason = reason


@dataclass
class StoredLabelSet:
    """One label-set version as persisted: metadata, named arrays, and opaque derived blobs."""

    meta: LabelSetMeta
    arrays: dict[str, np.ndarray]
    blobs: dict[str, bytes] = field(default_factory=dict)


class LabelSetStore(ABC):
    """Persistence contract for label sets. Implementations must make ``save`` atomic per label set."""

    @abstractmethod
    def list_ids(self) -> list[str]:
        """Ids of every stored entry, including ones that may fail to load."""

    @abstractmethod
    def load(self, label_set_id: str) -> StoredLabelSet:
        """The committed version; raises ``LabelSetNotFoundError`` or ``CorruptEntryError``."""

    @abstractmethod
    def save(self, record: StoredLabelSet, expected_version: int) -> None:
        """Commit ``record`` (whose ``meta.version`` must be ``expected_version + 1``) if the stored
        version is ``expected_version`` (0 = must not exist); else ``VersionConflictError``."""

    @abstractmethod
    def delete(self, label_set_id: str, expected_version: int | None = None) -> None:
        """Remove a label set (any version when ``expected_version`` is None)."""

    @abstractmethod
    def current_version(self, label_set_id: str) -> int:
        """Committed version, 0 when absent (used for conflict checks)."""

    @abstractmethod
    def describe(self) -> str:
        """Human description for logs and health output."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix:
    temp file in the same folder, fsync, rename over, fsync the folder (callers writing several files
    may pass ``sync_dir=False`` and fsync the folder once at the end)."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)


def parse_manifest(label_set_id: str, raw: bytes) -> dict:
    """A manifest's JSON after checking its own checksum and format (``CorruptEntryError`` otherwise)."""
    try:
        manifest = json.loads(raw)
        body = {k: v for k, v in manifest.items() if k != "checksum"}
    except (ValueError, AttributeError, RecursionError) as exc:
        raise CorruptEntryError(
            label_set_id, f"manifest.json is not valid JSON ({type(exc).__name__})"
        ) from None
    if manifest.get("checksum") != _sha256(_canonical(body)):
        raise CorruptEntryError(label_set_id, "manifest.json checksum mismatch (edited or torn write)")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptEntryError(label_set_id, f"unknown manifest format {str(manifest.get('format'))[:40]!r}")
    return manifest


def record_from_manifest(
    label_set_id: str, manifest: dict, read_file: Callable[[str, int], bytes]
) -> StoredLabelSet:
    """The label set a checked manifest describes. ``read_file(name, size)`` returns the bytes of one of
    the entry's own data files (a plain file name matching ``DATA_FILE``, never a path); each is checked
    against its size and sha256 from the manifest."""
    try:
        meta = LabelSetMeta.model_validate(manifest["meta"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise CorruptEntryError(label_set_id, f"invalid metadata ({str(exc)[:300]})") from None
    if meta.id != label_set_id or meta.version != manifest.get("version"):
        raise CorruptEntryError(label_set_id, "manifest id/version do not match the folder")
    files = manifest.get("files", {})
    if not isinstance(files, dict) or len(files) > 16:
        raise CorruptEntryError(label_set_id, "manifest file list is not a small mapping")
    contents: dict[str, bytes] = {}
    for name, entry in files.items():
        try:
            path, size, digest = entry["path"], entry["bytes"], entry["sha256"]
        except (KeyError, TypeError):
            raise CorruptEntryError(
                label_set_id, "manifest file entries need path, bytes and sha256"
            ) from None
        if not (
            isinstance(path, str)
            and DATA_FILE.fullmatch(path)
            and isinstance(name, str)
            and re.fullmatch(r"[a-z_]{1,32}", name)
            and type(size) is int
            and 0 <= size <= MAX_DATA_FILE_BYTES
            and isinstance(digest, str)
        ):
            raise CorruptEntryError(label_set_id, f"invalid manifest entry for data file {str(name)[:40]!r}")
        data = read_file(path, size)
        if len(data) != size or _sha256(data) != digest:
            raise CorruptEntryError(label_set_id, f"checksum mismatch in {path}")
        contents[name] = data
    if "arrays" not in contents:
        raise CorruptEntryError(label_set_id, "manifest lists no arrays file")
    try:
        arrays = dict(load_safetensors(contents.pop("arrays")))
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptEntryError(label_set_id, f"arrays file unreadable ({str(exc)[:200]})") from None
    return StoredLabelSet(meta=meta, arrays=arrays, blobs=contents)


def read_regular_file(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (no symlink followed, a FIFO or device never opened
    for blocking reads) of at most ``max_bytes``; None when it does not exist; ``OSError`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if info.st_size > max_bytes:
            raise OSError(f"{path.name} is larger than {max_bytes} bytes")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(max_bytes + 1)
    finally:
        os.close(fd)


class DirectoryStore(LabelSetStore):
    """Embedded store: a directory on local disk (``TRUSTSERVE_STORE_DIR``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._sets = self.root / "label-sets"
        self._locks = self.root / "locks"
        self._sets.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)
        fmt = self.root / "FORMAT"
        if fmt.exists():
            try:
                found = json.loads(fmt.read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"{fmt} is unreadable: {exc}") from exc
            if found.get("format") != STORE_FORMAT["format"] or found.get("version") != 1:
                raise StoreError(f"{self.root} is not a trustserve label-set store (FORMAT={found})")
        else:
            atomic_write_bytes(fmt, _canonical(STORE_FORMAT))
        self._remove_deleted_leftovers()

    def describe(self) -> str:
        return f"directory store at {self.root}"

    # ---- helpers -------------------------------------------------------------------------------

    def _dir(self, label_set_id: str) -> Path:
        if not is_valid_slug(label_set_id):
            raise LabelSetNotFoundError(f"invalid label-set id {label_set_id!r}")
        return self._sets / label_set_id

    @contextlib.contextmanager
    def _locked(self, label_set_id: str, *, remove: bool = False) -> Iterator[None]:
        """An exclusive fcntl lock on ``locks/<id>.lock``. The lock file is taken only when it is still
        the file at that path (a delete removes it while holding it, so no lock file outlives its label
        set and no two writers can hold different files)."""
        path = self._locks / f"{label_set_id}.lock"
        while True:
            fh = open(path, "a+b")  # noqa: SIM115 (closed below)
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    current = os.stat(path).st_ino
                except FileNotFoundError:
                    current = -1
                if current == os.fstat(fh.fileno()).st_ino:
                    break
            except BaseException:
                fh.close()
                raise
            fh.close()  # removed (or replaced) while we waited: take the new file
        try:
            yield
        finally:
            if remove:
                path.unlink(missing_ok=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def _remove_deleted_leftovers(self) -> None:
        for path in self._sets.glob(".deleted-*"):
            shutil.rmtree(path, ignore_errors=True)

    def _read_manifest(self, label_set_id: str) -> dict | None:
        try:
            raw = read_regular_file(self._dir(label_set_id) / "manifest.json", MAX_MANIFEST_BYTES)
        except OSError as exc:
            raise CorruptEntryError(label_set_id, f"manifest.json unreadable ({exc})") from None
        return None if raw is None else parse_manifest(label_set_id, raw)

    def _cleanup_unreferenced(self, folder: Path, keep: set[str]) -> None:
        for path in folder.iterdir():
            if path.name != "manifest.json" and path.name not in keep:
                path.unlink(missing_ok=True)

    # ---- interface -----------------------------------------------------------------------------

    def list_ids(self) -> list[str]:
        return sorted(p.name for p in self._sets.iterdir() if p.is_dir() and is_valid_slug(p.name))

    def current_version(self, label_set_id: str) -> int:
        try:
            manifest = self._read_manifest(label_set_id)
        except CorruptEntryError:
            return -1
        return 0 if manifest is None else int(manifest["version"])

    def load(self, label_set_id: str) -> StoredLabelSet:
        """The committed version. Readers take no lock: a write that commits between reading the manifest
        and reading its data files removes those files, so the read is retried on the newer manifest
        (a few times; a file missing under an unchanged manifest is corruption)."""
        read_data = partial(self._read_data, label_set_id)
        for _ in range(LOAD_ATTEMPTS - 1):
            manifest = self._committed_manifest(label_set_id)
            try:
                return record_from_manifest(label_set_id, manifest, read_data)
            except CorruptEntryError:
                if self.current_version(label_set_id) == manifest["version"]:
                    raise  # nothing was committed meanwhile: the entry is damaged
        return record_from_manifest(label_set_id, self._committed_manifest(label_set_id), read_data)

    def _committed_manifest(self, label_set_id: str) -> dict:
        if not self._dir(label_set_id).is_dir():
            raise LabelSetNotFoundError(label_set_id)
        manifest = self._read_manifest(label_set_id)
        if manifest is None:
            raise CorruptEntryError(label_set_id, "no manifest.json: the creating write never committed")
        return manifest

    def _read_data(self, label_set_id: str, name: str, size: int) -> bytes:
        try:
            data = read_regular_file(self._dir(label_set_id) / name, size)
        except OSError as exc:
            raise CorruptEntryError(label_set_id, f"data file {name} unreadable ({exc})") from None
        if data is None:
            raise CorruptEntryError(label_set_id, f"missing data file {name}")
        return data

    def save(self, record: StoredLabelSet, expected_version: int) -> None:
        label_set_id = record.meta.id
        if record.meta.version != expected_version + 1:
            raise ValueError(
                f"record version {record.meta.version} must be expected_version + 1 = {expected_version + 1}"
            )
        folder = self._dir(label_set_id)
        with self._locked(label_set_id):
            try:
                manifest = self._read_manifest(label_set_id) if folder.is_dir() else None
                current = 0 if manifest is None else int(manifest["version"])
            except CorruptEntryError:
                # A corrupt entry may only be overwritten by an explicit re-create (expected 0).
                current = 0 if expected_version == 0 else -1
            if current != expected_version:
                raise VersionConflictError(label_set_id, expected_version, current)
            folder.mkdir(parents=True, exist_ok=True)
            prefix = f"v{record.meta.version:08d}"
            files: dict[str, dict[str, object]] = {}
            payloads = {
                "arrays": save_safetensors({k: np.ascontiguousarray(v) for k, v in record.arrays.items()})
            }
            payloads.update(record.blobs)
            for name, data in payloads.items():
                suffix = "safetensors" if name == "arrays" else "bin"
                filename = f"{prefix}.{name}.{suffix}"
                atomic_write_bytes(folder / filename, data, sync_dir=False)
                files[name] = {"path": filename, "sha256": _sha256(data), "bytes": len(data)}
            _fsync_dir(folder)  # every data file is durable before the manifest points at it
            body = {
                "format": MANIFEST_FORMAT,
                "id": label_set_id,
                "version": record.meta.version,
                "meta": record.meta.model_dump(mode="json"),
                "files": files,
            }
            manifest_bytes = _canonical({**body, "checksum": _sha256(_canonical(body))})
            atomic_write_bytes(folder / "manifest.json", manifest_bytes)
            self._cleanup_unreferenced(folder, {str(f["path"]) for f in files.values()})

    def delete(self, label_set_id: str, expected_version: int | None = None) -> None:
        folder = self._dir(label_set_id)
        if not folder.is_dir():
            raise LabelSetNotFoundError(label_set_id)
        with self._locked(label_set_id, remove=True):
            if not folder.is_dir():
                raise LabelSetNotFoundError(label_set_id)
            if expected_version is not None:
                current = self.current_version(label_set_id)
                if current != expected_version:
                    raise VersionConflictError(label_set_id, expected_version, current)
            graveyard = self._sets / f".deleted-{label_set_id}-{uuid.uuid4().hex}"
            os.replace(folder, graveyard)
            _fsync_dir(self._sets)
            shutil.rmtree(graveyard, ignore_errors=True)
