"""Crash safety of the directory store: writer processes are SIGKILLed at random moments (often in the
middle of a write), then the store is reopened and every label set verified — content intact, no
acknowledged write lost, no concurrent update lost."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from app.labelsets.store import CorruptEntryError, DirectoryStore, LabelSetNotFoundError
from tests.labelsets.crash_writer import IDS, expected_arrays, write_forever


def _spawn_writer(store_dir: Path, seed: int) -> tuple[int, int]:
    """Fork a writer process; returns (pid, read end of its report pipe)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: write until killed
        os.close(read_fd)
        try:
            write_forever(str(store_dir), write_fd, seed)
        finally:
            os._exit(1)
    os.close(write_fd)
    return pid, read_fd


def _read_all(fd: int) -> list[tuple[str, str, int]]:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    lines = b"".join(chunks).decode().splitlines()
    return [
        (kind, label_set_id, int(v)) for kind, label_set_id, v in (line.split() for line in lines if line)
    ]


def _verify(store_dir: Path, committed: dict[str, int], begun: dict[str, int]) -> None:
    store = DirectoryStore(store_dir)
    for label_set_id in IDS:
        if label_set_id not in begun:
            continue
        try:
            record = store.load(label_set_id)
        except (LabelSetNotFoundError, CorruptEntryError) as exc:
            # allowed only when no write of this label set was ever acknowledged
            assert committed.get(label_set_id, 0) == 0, f"{label_set_id}: committed data lost ({exc})"
            assert isinstance(exc, LabelSetNotFoundError) or "never committed" in exc.reason
            continue
        version = record.meta.version
        assert committed.get(label_set_id, 0) <= version <= begun[label_set_id], (label_set_id, version)
        for name, value in expected_arrays(label_set_id, version).items():
            np.testing.assert_array_equal(record.arrays[name], value)
        assert int(record.arrays["counter"][0]) == version, "an update was lost"
        assert record.blobs["prototype_index"] == f"{label_set_id}-{version}".encode() * 1000


def run_trials(store_dir: Path, trials: int, writers: int, seed: int) -> dict[str, int]:
    """Kill ``writers`` concurrent writer processes ``trials`` times; verify after each kill."""
    rng = np.random.default_rng(seed)
    committed: dict[str, int] = defaultdict(int)
    begun: dict[str, int] = defaultdict(int)
    stats = {"trials": 0, "writes_committed": 0, "killed_mid_write": 0, "conflicts_retried": 0}
    for trial in range(trials):
        procs = [_spawn_writer(store_dir, seed * 1000 + trial * 10 + w) for w in range(writers)]
        time.sleep(float(rng.uniform(0.01, 0.12)))
        for pid, _ in procs:
            os.kill(pid, signal.SIGKILL)
        for pid, fd in procs:
            os.waitpid(pid, 0)
            events = _read_all(fd)
            open_writes = 0
            for kind, label_set_id, version in events:
                if kind == "B":
                    begun[label_set_id] = max(begun[label_set_id], version)
                    open_writes += 1
                else:
                    committed[label_set_id] = max(committed[label_set_id], version)
                    stats["writes_committed"] += 1
                    open_writes -= 1
            mid_write = int(bool(events) and events[-1][0] == "B")
            stats["killed_mid_write"] += mid_write
            stats["conflicts_retried"] += open_writes - mid_write
        _verify(store_dir, committed, begun)
        stats["trials"] += 1
    # leftovers of killed writes are removed by the next write
    store = DirectoryStore(store_dir)
    for label_set_id in IDS:
        if committed.get(label_set_id):
            record = store.load(label_set_id)
            record.meta = record.meta.model_copy(update={"version": record.meta.version + 1})
            record.arrays.update(expected_arrays(label_set_id, record.meta.version))
            record.arrays["counter"] = record.arrays["counter"] + 1
            store.save(record, expected_version=record.meta.version - 1)
            files = sorted(p.name for p in (store_dir / "label-sets" / label_set_id).iterdir())
            assert len(files) == 3 and not any(name.startswith(".tmp-") for name in files), files
    return stats


def test_sigkill_during_writes_fast(tmp_path: Path) -> None:
    stats = run_trials(tmp_path, trials=20, writers=2, seed=1)
    print("crash test (fast):", stats)
    assert stats["trials"] == 20
    assert stats["killed_mid_write"] >= 10, stats  # the kills really land inside writes
    assert stats["writes_committed"] > 20


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sigkill_during_writes_long(tmp_path: Path) -> None:
    stats = run_trials(tmp_path, trials=300, writers=3, seed=2)
    print("crash test (long):", stats)
    assert stats["killed_mid_write"] >= 150, stats
