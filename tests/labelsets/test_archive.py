"""Label-set archives are read from memory, member by member, and a manifest can only name the archive's
own files: no host path, FIFO, device, link, sparse or extension member is ever opened or expanded."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from app.labelsets.archive import ArchiveError, read_archive, tar_members, write_archive
from app.labelsets.store import CorruptEntryError, DirectoryStore
from tests.labelsets.test_store import make_record
from tests.reliability import hostile


def _tar(*infos: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in infos:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return raw.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **extra: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def test_an_export_round_trips() -> None:
    record = make_record()
    loaded = read_archive(write_archive(record))
    assert loaded.meta.labels == record.meta.labels
    assert set(loaded.arrays) == set(record.arrays)


@pytest.mark.parametrize(
    ("archive", "why"),
    [
        (gzip.decompress(hostile.sparse_tar_gz("a/v00000001.arrays.safetensors")), "plain files"),
        (
            _tar((_info("a/v00000001.arrays.safetensors", tarfile.SYMTYPE, linkname="/etc/passwd"), b"")),
            "plain",
        ),
        (_tar((_info("a/v00000001.arrays.safetensors", tarfile.FIFOTYPE), b"")), "plain files"),
        (_tar((_info("a/v00000001.arrays.safetensors", tarfile.DIRTYPE), b"")), "plain files"),
        (_tar((_info("a/../../etc/passwd", size=3), b"abc")), "unexpected"),
        (_tar((_info("a/manifest.json", size=3, pax_headers={"comment": "x" * 600}), b"abc")), "plain files"),
        (
            _tar((_info("a/manifest.json", size=3), b"abc"), (_info("a/manifest.json", size=3), b"abc")),
            "unexpected",
        ),
    ],
)
def test_only_plain_member_files_are_read(archive: bytes, why: str) -> None:
    with pytest.raises(ArchiveError) as err:
        tar_members(archive)
    assert why in str(err.value)


def test_a_member_cannot_claim_more_bytes_than_the_archive_holds() -> None:
    archive = bytearray(_tar((_info("a/manifest.json", size=3), b"abc")))
    header = tarfile.TarInfo.frombuf(bytes(archive[:512]), "utf-8", "strict")
    header.size = 2**33
    archive[:512] = header.tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(ArchiveError, match="holds fewer"):
        tar_members(bytes(archive))


@pytest.mark.parametrize("path", ["/dev/zero", "/etc/hostname", "../../x", "v00000001.other.safetensors"])
def test_a_manifest_names_only_its_own_members(path: str) -> None:
    body = hostile.rewrite_manifest(write_archive(make_record()), hostile.point_file_at(path, 10))
    started = time.monotonic()
    with pytest.raises(ArchiveError):
        read_archive(body)
    assert time.monotonic() - started < 2


def test_a_deeply_nested_manifest_is_refused() -> None:
    body = hostile.rewrite_manifest(
        write_archive(make_record()), lambda b: None, raw_manifest=hostile.deep_manifest()
    )
    with pytest.raises(ArchiveError, match="not valid JSON"):
        read_archive(body)


def test_the_store_never_opens_a_fifo_link_or_device_it_finds_in_its_folder(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.save(make_record(), expected_version=0)
    folder = tmp_path / "label-sets" / "animals"
    [arrays] = folder.glob("*.arrays.safetensors")
    for replace_with in ("fifo", "symlink"):
        arrays.unlink()
        if replace_with == "fifo":
            os.mkfifo(arrays)
        else:
            arrays.symlink_to("/dev/zero")
        started = time.monotonic()
        with pytest.raises(CorruptEntryError, match="unreadable"):
            DirectoryStore(tmp_path).load("animals")
        assert time.monotonic() - started < 2


def test_deleting_removes_the_lock_file(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.save(make_record(), expected_version=0)
    assert (tmp_path / "locks" / "animals.lock").exists()
    store.delete("animals")
    assert not (tmp_path / "locks" / "animals.lock").exists()
    store.save(make_record(), expected_version=0)  # a new lock file, taken normally
    assert store.load("animals").meta.version == 1
