"""Labelled images laid out as class folders: each image's class is the name of the folder that directly
holds it (``cat/1.jpg`` → "cat"; ``photos/cat/1.jpg`` → "cat"), the torchvision ``ImageFolder`` layout.

Two sources, one rule:
- ``read_class_folder(dir)``: a folder with one sub-folder per class (``trustserve label-sets create
  --from-folder``); the command line reads it and uploads the images.
- ``read_class_archive(data, limits)``: a zip, tar or tar.gz of class folders uploaded to the server
  (``POST /v1/label-sets/{id}/images/archive``). It is bounded before any work is done: entries (files,
  folders, skipped files) ≤ ``limits.max_members``, the bytes it expands to ≤ ``limits.max_bytes`` (checked
  from each entry's header before its data is read, and for gzip while inflating), nothing is written to
  disk and no link is followed.

Hidden entries (a name part starting with ``.``, ``__MACOSX``) and files without an image suffix are
skipped and counted; an image outside any folder is an error (its class would be unknown).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

from app.errors import InvalidInput, TooLarge
from app.labelsets.archive import ArchiveError, gunzip_bounded

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SKIPPED_NAMES_SHOWN = 20  # skipped entries named in an answer (the count is always complete)
_ZIP_CENTRAL_ENTRY = b"PK\x01\x02"  # every zip entry has one central-directory header with this signature


class ClassFolderError(InvalidInput):
    """The upload or folder is not usable as class folders (a domain error: the API answers 422)."""

    code = "invalid_archive"


class ArchiveTooLarge(TooLarge, ClassFolderError):
    """The archive breaks a bound (entries, bytes after decompression): the API answers 413."""

    code = "archive_too_large"


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may cost: entries of any kind, and bytes after decompression."""

    max_members: int = 4096
    max_bytes: int = 32 * 2**20


@dataclass
class ClassFolderImages:
    """Image files with their class (parallel lists), plus what was skipped and why."""

    labels: list[str] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)
    skipped: int = 0
    skipped_names: list[str] = field(default_factory=list)

    def skip(self, name: str) -> None:
        self.skipped += 1
        if len(self.skipped_names) < SKIPPED_NAMES_SHOWN:
            self.skipped_names.append(name[:200])

    @property
    def classes(self) -> list[str]:
        """The classes found, sorted."""
        return sorted(set(self.labels))


def class_of(name: str) -> str | None:
    """The class of an archive or folder entry named ``name`` (``/``- or ``\\``-separated), or None when it
    is to be skipped (hidden, macOS metadata, not an image). Raises for names that cannot be honest: a
    ``..`` part, an absolute path, or an image outside any folder."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or ".." in parts:
        raise ClassFolderError(f"archive entry {name[:120]!r} has an absolute or '..' path")
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if len(parts) < 2:
        raise ClassFolderError(
            f"image {parts[-1][:120]!r} is not in a folder: put each image in a folder named after its class",
            code="image_outside_class_folder",
        )
    return parts[-2]


# -- archives ----------------------------------------------------------------------------------------
def archive_kind(data: bytes) -> str:
    """``zip``, ``gzip`` or ``tar`` from the magic bytes (never from a client-supplied name or type)."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if len(data) >= 262 and data[257:262] == b"ustar":
        return "tar"
    raise ClassFolderError("not a zip, tar or tar.gz archive of class folders", code="unsupported_archive")


def read_class_archive(data: bytes, limits: ArchiveLimits) -> ClassFolderImages:
    """The images of a zip / tar / tar.gz of class folders, with their classes (see the module doc)."""
    kind = archive_kind(data)
    if kind == "zip":
        return _read_zip(data, limits)
    if kind == "gzip":
        # the tar stream may hold one 512-byte header (plus padding) per entry on top of the file bytes
        tar_budget = limits.max_bytes + 1024 * (limits.max_members + 2)
        try:
            data = gunzip_bounded(data, tar_budget)
        except ArchiveError as exc:
            if "expands" in str(exc):
                raise ArchiveTooLarge(str(exc)) from None
            raise ClassFolderError(str(exc)) from None
        if len(data) < 262 or data[257:262] != b"ustar":
            raise ClassFolderError("the gzip file does not hold a tar archive", code="unsupported_archive")
    return _read_tar(data, limits)


def _too_many(limits: ArchiveLimits) -> ArchiveTooLarge:
    return ArchiveTooLarge(
        f"the archive holds more than {limits.max_members} entries; upload it in parts",
        code="archive_too_many_entries",
    )


def _too_large(limits: ArchiveLimits) -> ArchiveTooLarge:
    return ArchiveTooLarge(f"the archive expands to more than {limits.max_bytes} bytes; upload it in parts")


class _Budget:
    """Entries and expanded bytes spent so far, checked before each entry's data is read."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.members = 0
        self.bytes = 0

    def entry(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise _too_many(self.limits)

    def data(self, size: int) -> None:
        if size < 0 or self.bytes + size > self.limits.max_bytes:
            raise _too_large(self.limits)
        self.bytes += size


def _take(
    out: ClassFolderImages, budget: _Budget, name: str, size: int, read: Callable[[int], bytes]
) -> None:
    """One file entry of an archive: skipped (and counted) unless it is an image in a class folder; else its
    declared ``size`` is charged to the budget before ``read(size + 1)`` reads it, and the data must be
    exactly that size (a member cut short or longer than its header says is refused)."""
    label = class_of(name)
    if label is None:
        out.skip(name)
        return
    budget.data(size)
    content = read(size + 1)
    if len(content) != size:
        raise ClassFolderError(f"{name[:120]!r} is not the size its header declares")
    out.labels.append(label)
    out.files.append(content)


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.flag_bits & 0x1:
        raise ClassFolderError(f"{info.filename[:120]!r} is encrypted", code="encrypted_entry")
    with archive.open(info) as member:  # zipfile never inflates past the declared size
        return member.read(limit)


def _tar_member(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    member = tar.extractfile(info)
    return member.read(limit) if member is not None else b""


def _read_zip(data: bytes, limits: ArchiveLimits) -> ClassFolderImages:
    # zipfile parses the whole central directory when it opens the file: count its entries first (an upper
    # bound: the signature may also occur inside file data, which can only make this check stricter)
    if data.count(_ZIP_CENTRAL_ENTRY) > limits.max_members:
        raise _too_many(limits)
    budget, out = _Budget(limits), ClassFolderImages()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                budget.entry()
                if info.is_dir():
                    continue
                _take(out, budget, info.filename, info.file_size, partial(_zip_member, archive, info))
    except ClassFolderError:
        raise
    except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError) as exc:
        raise ClassFolderError(f"unreadable zip archive: {exc}"[:300]) from None
    return out


def _tar_entries(tar: tarfile.TarFile, budget: _Budget) -> Iterator[tarfile.TarInfo]:
    while True:
        info = tar.next()
        if info is None:
            return
        budget.entry()
        yield info


def _read_tar(data: bytes, limits: ArchiveLimits) -> ClassFolderImages:
    budget, out = _Budget(limits), ClassFolderImages()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in _tar_entries(tar, budget):
                if info.isdir():
                    continue
                if not info.isfile():  # links, devices, FIFOs: never followed or read
                    out.skip(info.name)
                    continue
                _take(out, budget, info.name, info.size, partial(_tar_member, tar, info))
    except ClassFolderError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
        raise ClassFolderError(f"unreadable tar archive: {exc}"[:300]) from None
    return out


# -- folders on disk (the command line) --------------------------------------------------------------
@dataclass(frozen=True)
class ClassFolder:
    """A folder of class folders: ``images[label]`` are the image paths of each class, sorted."""

    root: Path
    images: dict[str, list[Path]]
    skipped: list[Path]

    @property
    def labels(self) -> list[str]:
        return list(self.images)

    @property
    def count(self) -> int:
        return sum(len(paths) for paths in self.images.values())


def read_class_folder(root: Path) -> ClassFolder:
    """``root/<class>/<image>``: one sub-folder per class (sorted by name), the images directly inside each.
    Other files, nested folders and hidden entries are skipped (and listed). Nothing is decoded here."""
    root = Path(root)
    if not root.is_dir():
        raise ClassFolderError(f"{str(root)!r} is not a folder", code="not_a_folder")
    images: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        if not entry.is_dir():
            skipped.append(entry)
            continue
        paths = []
        for item in sorted(entry.iterdir()):
            if item.is_file() and class_of(f"{entry.name}/{item.name}") is not None:
                paths.append(item)
            elif not item.name.startswith("."):
                skipped.append(item)
        if paths:
            images[entry.name] = paths
    if not images:
        raise ClassFolderError(
            f"{str(root)!r} has no class folders with images (expected {root.name}/<class>/<image>)",
            code="no_images",
        )
    return ClassFolder(root, images, skipped)
