"""The export cache: built once, verified on every load, corrupt or stale entries rebuilt, atomic and safe
for two processes building the same entry at once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.runtime.cache import ExportCache

FIELDS = {"model": "m", "tower": "image", "weights": "abc"}


def _builder(calls: list[int]):  # type: ignore[no-untyped-def]
    def build(folder: Path) -> dict[str, object]:
        calls.append(1)
        (folder / "model.onnx").write_bytes(b"graph" * 100)
        (folder / "sub").mkdir()
        (folder / "sub" / "extra.json").write_text("{}")
        return {"note": "built"}

    return build


def test_built_once_then_found_with_checksums(tmp_path: Path) -> None:
    cache, calls = ExportCache(tmp_path), []
    key = cache.key("m-image", FIELDS)
    entry, built = cache.get_or_build(key, FIELDS, _builder(calls))
    assert built and entry.meta == {"note": "built"}
    assert set(entry.manifest["files"]) == {"model.onnx", "sub/extra.json"}
    again, built_again = cache.get_or_build(key, FIELDS, _builder(calls))
    assert not built_again and again.path == entry.path and calls == [1]
    assert not list((tmp_path / "entries").glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_a_corrupt_entry_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    cache, calls = ExportCache(tmp_path), []
    key = cache.key("m-image", FIELDS)
    entry, _ = cache.get_or_build(key, FIELDS, _builder(calls))
    model = entry.path / "model.onnx"
    if damage == "flip":
        data = bytearray(model.read_bytes())
        data[7] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:10])
    elif damage == "delete":
        model.unlink()
    else:
        (entry.path / "manifest.json").write_text("{not json")
    assert cache.lookup(key, FIELDS) is None
    rebuilt, built = cache.get_or_build(key, FIELDS, _builder(calls))
    assert built and calls == [1, 1]
    assert (rebuilt.path / "model.onnx").read_bytes() == b"graph" * 100


def test_stale_fields_are_a_miss(tmp_path: Path) -> None:
    cache, calls = ExportCache(tmp_path), []
    key = cache.key("m-image", FIELDS)
    cache.get_or_build(key, FIELDS, _builder(calls))
    manifest = json.loads((cache.entry_path(key) / "manifest.json").read_text())
    manifest["fields"]["weights"] = "other"
    (cache.entry_path(key) / "manifest.json").write_text(json.dumps(manifest))
    assert cache.lookup(key, FIELDS) is None
    assert cache.key("m-image", FIELDS) != cache.key("m-image", {**FIELDS, "weights": "new"})


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    key = cache.key("m-image", FIELDS)

    def broken(folder: Path) -> dict[str, object]:
        (folder / "half.onnx").write_bytes(b"x")
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError, match="export crashed"):
        cache.get_or_build(key, FIELDS, broken)
    assert cache.lookup(key, FIELDS) is None
    assert not [p for p in (tmp_path / "entries").iterdir()]


def test_two_processes_building_at_once_build_once(tmp_path: Path) -> None:
    """Two replicas starting together on one cache: one builds (slowly), the other waits and reuses it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from app.runtime.cache import ExportCache
        cache = ExportCache({str(tmp_path / "cache")!r})
        fields = {FIELDS!r}
        def build(folder):
            with open({str(tmp_path / "builds.log")!r}, "a") as log:
                log.write("built\\n")
            time.sleep(1.0)
            (folder / "model.onnx").write_bytes(b"x" * 1000)
            return {{}}
        entry, built = cache.get_or_build(cache.key("m", fields), fields, build)
        print("built" if built else "reused", (entry.path / "model.onnx").stat().st_size)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outputs == ["built 1000", "reused 1000"]
    assert (tmp_path / "builds.log").read_text().count("built") == 1


def test_weight_checksums_are_memoised_and_follow_changes(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path / "cache")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 1000)
    first = cache.file_checksum(weights)
    assert cache.file_checksum(weights) == first
    assert len(list((tmp_path / "cache" / "checksums").glob("*.json"))) == 1
    weights.write_bytes(b"b" * 1001)
    assert cache.file_checksum(weights) != first
