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

from app.labelsets.store import CorruptEntryError, DirectoryStore, StoredLabelSet

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


def read_archive(data: bytes, max_bytes: int = 64 * 2**20) -> StoredLabelSet:
    """Validate and load an archive made by ``write_archive`` (checksums verified by the store code)."""
    raw = gunzip_bounded(data, max_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                members = tar.getmembers()
                if not members or len(members) > MAX_MEMBERS:
                    raise ArchiveError(f"an archive holds 2..{MAX_MEMBERS} files, found {len(members)}")
                ids = {m.name.split("/", 1)[0] for m in members}
                bad = [m.name for m in members if not (m.isfile() and _MEMBER.fullmatch(m.name))]
                if bad or len(ids) != 1:
                    raise ArchiveError(f"unexpected archive entries: {(bad or sorted(ids))[:5]}")
                label_set_id = ids.pop()
                folder = root / "label-sets" / label_set_id
                folder.mkdir(parents=True)
                for member in members:
                    source = tar.extractfile(member)
                    if source is None:
                        raise ArchiveError(f"cannot read {member.name}")
                    (folder / member.name.split("/", 1)[1]).write_bytes(source.read())
        except tarfile.TarError as exc:
            raise ArchiveError(f"not a tar archive ({exc})") from exc
        try:
            return DirectoryStore(root).load(label_set_id)
        except CorruptEntryError as exc:
            raise ArchiveError(exc.reason) from exc
