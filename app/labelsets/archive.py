"""Export / import of one label set as a single ``.tar.gz`` archive.

The archive holds exactly the store's folder for the label set (``<id>/manifest.json`` plus its
checksummed data files), so an archive can be imported over HTTP, or unpacked into another server's
``<store>/label-sets/`` and picked up at its next start. The bytes are deterministic (sorted entries, zero
timestamps and owners): exporting the same label-set version twice gives identical archives.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import tempfile
import zlib
from pathlib import Path

from app.labelsets.store import (
    CorruptEntryError,
    DirectoryStore,
    StoredLabelSet,
    parse_manifest,
    record_from_manifest,
)

ARCHIVE_MEDIA_TYPE = "application/gzip"
MAX_MEMBERS = 16
_MEMBER = re.compile(r"^[a-z0-9][a-z0-9\-_]{0,63}/(manifest\.json|v\d{8}\.[a-z_]+\.(safetensors|bin))$")


class ArchiveError(ValueError):
    """The upload is not a valid label-set archive."""


def write_archive(record: StoredLabelSet) -> bytes:
    """The label set's store folder, as a deterministic gzip-compressed tar. The archived copy is written
    as version 1 of a fresh label set (its calibration, if any, re-pointed at that version)."""
    with tempfile.TemporaryDirectory() as tmp:
        DirectoryStore(tmp).save(as_first_version(record), expected_version=0)
        folder = Path(tmp) / "label-sets" / record.meta.id
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(folder.iterdir()):
                info = tarfile.TarInfo(f"{record.meta.id}/{path.name}")
                data = path.read_bytes()
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def as_first_version(record: StoredLabelSet, new_id: str | None = None) -> StoredLabelSet:
    """A copy of ``record`` as version 1 (optionally renamed), calibration kept and re-pointed."""
    calibration = record.meta.calibration
    if calibration is not None:
        calibration = calibration.model_copy(update={"label_set_version": 1})
    meta = record.meta.model_copy(
        update={"id": new_id or record.meta.id, "version": 1, "calibration": calibration}
    )
    return StoredLabelSet(meta, dict(record.arrays), dict(record.blobs))


def gunzip_bounded(data: bytes, max_bytes: int, chunk_bytes: int = 1 << 20) -> bytes:
    """Inflate one gzip member in 1 MB steps, refusing it as soon as the output passes ``max_bytes``
    (a gzip bomb costs at most ``max_bytes`` of memory, not its full expanded size)."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    chunks: list[bytes] = []
    total, pending = 0, data
    try:
        while True:
            chunk = inflater.decompress(pending, chunk_bytes)
            total += len(chunk)
            if total > max_bytes:
                raise ArchiveError(f"archive expands to more than {max_bytes} bytes")
            chunks.append(chunk)
            pending = inflater.unconsumed_tail
            if inflater.eof or not pending:
                break
    except zlib.error as exc:
        raise ArchiveError(f"not a gzip file ({exc})") from None
    if not inflater.eof:
        raise ArchiveError("not a gzip file (truncated)")
    return b"".join(chunks)


def tar_members(raw: bytes, max_members: int = MAX_MEMBERS) -> dict[str, bytes]:
    """The regular files of an uncompressed tar, by name. Each 512-byte header is decoded on its own
    (``tarfile.TarInfo.frombuf``) and checked before its data is touched: only plain regular files
    (no pax or GNU extension headers, sparse files, links, devices, FIFOs or folders), names of the
    label-set layout, sizes within the bytes actually present. Nothing is written to disk."""
    view = memoryview(raw)
    members: dict[str, bytes] = {}
    pos = 0
    while pos + tarfile.BLOCKSIZE <= len(raw):
        block = bytes(view[pos : pos + tarfile.BLOCKSIZE])
        if block == tarfile.NUL * tarfile.BLOCKSIZE:
            break  # end-of-archive marker
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError, ValueError) as exc:
            raise ArchiveError(f"not a tar archive ({type(exc).__name__})") from None
        name = info.name[:80]
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise ArchiveError(f"{name!r}: only plain files belong in an archive (tar type {info.type!r})")
        if not _MEMBER.fullmatch(info.name) or info.name in members:
            raise ArchiveError(f"unexpected archive entry {name!r}")
        start, end = pos + tarfile.BLOCKSIZE, pos + tarfile.BLOCKSIZE + info.size
        if info.size < 0 or end > len(raw):
            raise ArchiveError(f"{name!r} declares {info.size} bytes; the archive holds fewer")
        if len(members) == max_members:
            raise ArchiveError(f"an archive holds at most {max_members} files")
        members[info.name] = bytes(view[start:end])
        pos = start + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return members


def read_archive(data: bytes, max_bytes: int = 64 * 2**20) -> StoredLabelSet:
    """Validate and load an archive made by ``write_archive``: the manifest (and its checksum) is checked
    by the store's own code, and every file it names must be a member of this archive — a manifest can
    never make the server read anything else."""
    members = tar_members(gunzip_bounded(data, max_bytes))
    ids = {name.split("/", 1)[0] for name in members}
    if len(ids) != 1:
        raise ArchiveError(f"an archive holds one label-set folder, found {len(ids)}")
    label_set_id = ids.pop()
    manifest_bytes = members.pop(f"{label_set_id}/manifest.json", None)
    if manifest_bytes is None:
        raise ArchiveError("the archive has no manifest.json")

    def read_member(name: str, size: int) -> bytes:
        member = members.get(f"{label_set_id}/{name}")
        if member is None:
            raise ArchiveError(f"the manifest names {name!r}, which is not in the archive")
        return member

    try:
        manifest = parse_manifest(label_set_id, manifest_bytes)
        del manifest_bytes
        return record_from_manifest(label_set_id, manifest, read_member)
    except CorruptEntryError as exc:
        raise ArchiveError(exc.reason) from None
