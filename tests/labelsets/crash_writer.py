"""A writer process for crash tests: read-modify-write loops on a few label sets in a DirectoryStore,
reporting on ``report_fd`` each write it starts (``B id version``) and commits (``C id version``).

Every version's arrays are a pure function of (id, version), and a ``counter`` array is incremented by
one per successful write, so a verifier can check both integrity and that no update was lost.
Run as ``python -m tests.labelsets.crash_writer STORE_DIR REPORT_FD SEED`` or call ``write_forever``.
"""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np

from app.labelsets.models import LabelSetMeta
from app.labelsets.store import (
    CorruptEntryError,
    DirectoryStore,
    LabelSetNotFoundError,
    StoredLabelSet,
    VersionConflictError,
)

IDS = ("alpha", "beta", "gamma")
ROWS, DIM = 16, 1024  # 128 KiB of float64 per write: the kill often lands mid-write


def expected_arrays(label_set_id: str, version: int) -> dict[str, np.ndarray]:
    """The content every committed version must have (except ``counter``, checked separately)."""
    rng = np.random.default_rng(zlib.crc32(f"{label_set_id}:{version}".encode()))
    return {
        "text_embeddings": rng.standard_normal((3, 8)).astype(np.float32),
        "prototype_sums": rng.standard_normal((ROWS, DIM)),
    }


def _record(label_set_id: str, version: int, counter: int) -> StoredLabelSet:
    meta = LabelSetMeta(
        id=label_set_id,
        version=version,
        labels=["a", "b", "c"],
        templates=["{}"],
        model="crash-test",
        aux_encoder="crash-test",
        embedding_dim=8,
    )
    arrays = {**expected_arrays(label_set_id, version), "counter": np.array([counter], np.int64)}
    return StoredLabelSet(meta, arrays, {"prototype_index": f"{label_set_id}-{version}".encode() * 1000})


def write_forever(store_dir: str, report_fd: int, seed: int) -> None:
    store = DirectoryStore(store_dir)
    rng = np.random.default_rng(seed)
    while True:
        label_set_id = IDS[int(rng.integers(len(IDS)))]
        try:
            current = store.load(label_set_id)
            version, counter = current.meta.version, int(current.arrays["counter"][0])
        except LabelSetNotFoundError:
            version, counter = 0, 0
        except CorruptEntryError as exc:  # only a creation that never committed may be redone
            if "never committed" not in exc.reason:
                raise
            version, counter = 0, 0
        os.write(report_fd, f"B {label_set_id} {version + 1}\n".encode())
        try:
            store.save(_record(label_set_id, version + 1, counter + 1), expected_version=version)
        except VersionConflictError:
            continue
        os.write(report_fd, f"C {label_set_id} {version + 1}\n".encode())


if __name__ == "__main__":
    write_forever(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
