"""DirectoryStore: atomic versioned writes, checksums, corrupt entries isolated, optimistic concurrency."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from app.labelsets.models import LabelSetMeta
from app.labelsets.store import (
    CorruptEntryError,
    DirectoryStore,
    LabelSetNotFoundError,
    StoredLabelSet,
    VersionConflictError,
)


def make_record(label_set_id: str = "animals", version: int = 1, seed: int = 0) -> StoredLabelSet:
    rng = np.random.default_rng(seed)
    meta = LabelSetMeta(
        id=label_set_id,
        version=version,
        labels=["cat", "dog", "cow"],
        templates=["a photo of a {}."],
        model="tiny",
        aux_encoder="vlm",
        embedding_dim=4,
    )
    arrays = {
        "text_embeddings": rng.standard_normal((3, 4)).astype(np.float32),
        "prototype_sums": rng.standard_normal((3, 5)),
        "prototype_counts": np.array([1, 0, 2], dtype=np.int64),
    }
    return StoredLabelSet(meta=meta, arrays=arrays, blobs={"prototype_index": b"\x00\x01faiss"})


def test_round_trip_is_exact(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    record = make_record()
    store.save(record, expected_version=0)
    loaded = DirectoryStore(tmp_path).load("animals")
    assert loaded.meta == record.meta
    for key, value in record.arrays.items():
        assert loaded.arrays[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded.arrays[key], value)
    assert loaded.blobs == record.blobs


def test_versioned_writes_and_old_files_removed(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.save(make_record(version=1), expected_version=0)
    store.save(make_record(version=2, seed=1), expected_version=1)
    assert store.current_version("animals") == 2
    files = sorted(p.name for p in (tmp_path / "label-sets" / "animals").iterdir())
    assert files == ["manifest.json", "v00000002.arrays.safetensors", "v00000002.prototype_index.bin"]


def test_stale_writer_gets_conflict(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.save(make_record(version=1), expected_version=0)
    with pytest.raises(VersionConflictError) as err:
        store.save(make_record(version=1), expected_version=0)  # duplicate create
    assert err.value.current == 1
    store.save(make_record(version=2), expected_version=1)
    with pytest.raises(VersionConflictError):
        store.save(make_record(version=2), expected_version=1)  # lost-update attempt
    with pytest.raises(ValueError, match="expected_version"):
        store.save(make_record(version=5), expected_version=2)


def test_concurrent_writers_never_lose_an_update(tmp_path: Path) -> None:
    """Threads race read-modify-write loops with retries; every successful increment is kept."""
    store = DirectoryStore(tmp_path)
    store.save(make_record(version=1), expected_version=0)
    successes: list[int] = []

    def worker() -> None:
        for _ in range(5):
            while True:
                rec = store.load("animals")
                v = rec.meta.version
                rec.meta = rec.meta.model_copy(update={"version": v + 1})
                rec.arrays["prototype_counts"] = rec.arrays["prototype_counts"] + 1
                try:
                    store.save(rec, expected_version=v)
                except VersionConflictError:
                    continue
                successes.append(v + 1)
                break

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.load("animals")
    assert final.meta.version == 21
    assert sorted(successes) == list(range(2, 22))
    np.testing.assert_array_equal(final.arrays["prototype_counts"], np.array([21, 20, 22]))


def test_a_read_racing_a_commit_reads_the_newer_version(tmp_path: Path) -> None:
    """Readers take no lock: when a write commits (and removes the old version's files) between a reader's
    manifest read and its data-file reads, the reader retries on the new manifest instead of reporting
    the entry as corrupt."""
    store = DirectoryStore(tmp_path)
    store.save(make_record(version=1), expected_version=0)
    read_manifest = store._read_manifest
    raced: list[int] = []

    def manifest_then_commit(label_set_id: str) -> dict | None:
        manifest = read_manifest(label_set_id)
        if not raced:  # the first read: a writer commits version 2 right after it
            raced.append(1)
            newer = store.load(label_set_id)
            newer.meta = newer.meta.model_copy(update={"version": 2})
            newer.arrays["prototype_counts"] = newer.arrays["prototype_counts"] + 1
            store.save(newer, expected_version=1)
        return manifest

    store._read_manifest = manifest_then_commit  # type: ignore[method-assign]
    record = store.load("animals")
    assert record.meta.version == 2 and raced == [1]
    np.testing.assert_array_equal(record.arrays["prototype_counts"], np.array([2, 1, 3]))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "v00000001.arrays.safetensors").write_bytes(b"garbage"), "checksum mismatch"),
        (lambda d: (d / "v00000001.prototype_index.bin").unlink(), "missing data file"),
        (lambda d: (d / "manifest.json").unlink(), "never committed"),
        (
            lambda d: (d / "manifest.json").write_text(
                (d / "manifest.json").read_text().replace('"cat"', '"lion"')
            ),
            "manifest.json checksum mismatch",
        ),
    ],
)
def test_corrupt_entry_detected_and_isolated(tmp_path: Path, damage, reason: str) -> None:
    store = DirectoryStore(tmp_path)
    store.save(make_record("animals"), expected_version=0)
    store.save(make_record("birds"), expected_version=0)
    damage(tmp_path / "label-sets" / "animals")
    reopened = DirectoryStore(tmp_path)
    with pytest.raises(CorruptEntryError, match=reason):
        reopened.load("animals")
    assert reopened.load("birds").meta.id == "birds"
    assert reopened.list_ids() == ["animals", "birds"]


def test_corrupt_entry_can_be_recreated_or_deleted(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.save(make_record(), expected_version=0)
    (tmp_path / "label-sets" / "animals" / "manifest.json").write_text("{}")
    store.save(make_record(version=1, seed=3), expected_version=0)
    assert store.load("animals").meta.version == 1
    store.delete("animals")
    with pytest.raises(LabelSetNotFoundError):
        store.load("animals")
    assert store.list_ids() == []


def test_delete_with_expected_version(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.save(make_record(), expected_version=0)
    with pytest.raises(VersionConflictError):
        store.delete("animals", expected_version=3)
    store.delete("animals", expected_version=1)
    with pytest.raises(LabelSetNotFoundError):
        store.delete("animals")


def test_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "FORMAT").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(Exception, match="not a trustserve label-set store"):
        DirectoryStore(tmp_path)


def test_unknown_and_invalid_ids_are_not_found(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    with pytest.raises(LabelSetNotFoundError):
        store.load("nope")
    with pytest.raises(LabelSetNotFoundError):
        store.load("../etc")
