"""The emoji evaluation set: extraction of the npm tarball (kept members only, bounded, checked), the
sub-category index, and ``load_dataset("emoji")`` on a small package built here in the real layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.trust import emoji
from app.trust.datasets import load_dataset
from app.trust.emoji import EmojiFetchError, emoji_index, extract_emoji_package, fetch_emoji


def _png(colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent, hidden colour black
    image.paste((*colour, 255), (16, 16, 48, 48))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _entries() -> list[dict[str, object]]:
    """Two sub-categories with 20+ images and one with 3 (dropped)."""
    groups = {"animal-mammal": 22, "food-fruit": 20, "tiny-group": 3}
    entries, order = [], 0
    for group, count in groups.items():
        for _ in range(count):
            order += 1
            entries.append(
                {
                    "image": f"{order:04x}.png",
                    "subcategory": group,
                    "has_img_google": True,
                    "sort_order": order,
                }
            )
    entries.append(
        {"image": "ffff.png", "subcategory": "food-fruit", "has_img_google": False, "sort_order": 0}
    )
    return entries


def _add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), kind
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tarball(path: Path, *, extra: list[tuple[str, bytes, bytes]] = ()) -> Path:  # type: ignore[assignment]
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "package/emoji.json", json.dumps(_entries()).encode())
        _add(tar, "package/LICENSE", b"MIT")
        _add(tar, "package/README.md", b"not kept")
        for e in _entries():
            colour = (200, 40, 40) if e["subcategory"] == "animal-mammal" else (40, 200, 40)
            _add(tar, f"package/img/google/64/{e['image']}", _png(colour))
        _add(tar, "package/img/google/sheets/sheet.png", b"not kept")
        for name, data, kind in extra:
            _add(tar, name, data, kind)
    return path


def test_extracts_only_the_kept_members(tmp_path: Path) -> None:
    tarball = make_tarball(
        tmp_path / "pkg.tgz", extra=[("package/img/google/64/../../../evil.png", b"x", tarfile.REGTYPE)]
    )
    counts = extract_emoji_package(tarball, tmp_path / "out")
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert "emoji.json" in files and "LICENSE" in files and "README.md" not in files
    assert all(f.startswith("img/google/64/") for f in files if f.endswith(".png"))
    assert not (tmp_path / "evil.png").exists()
    assert counts["kept"] == 2 + 46  # emoji.json, LICENSE, every 64 px PNG


def test_refuses_links_and_oversized_members(tmp_path: Path) -> None:
    link = make_tarball(
        tmp_path / "link.tgz", extra=[("package/img/google/64/abcd.png", b"", tarfile.SYMTYPE)]
    )
    with pytest.raises(EmojiFetchError, match="not a regular file"):
        extract_emoji_package(link, tmp_path / "a")
    big = make_tarball(
        tmp_path / "big.tgz",
        extra=[("package/img/google/64/abce.png", b"0" * (emoji.MAX_PNG_BYTES + 1), tarfile.REGTYPE)],
    )
    with pytest.raises(EmojiFetchError, match="the bound is"):
        extract_emoji_package(big, tmp_path / "b")


def test_fetch_checks_the_pinned_integrity_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = make_tarball(tmp_path / "pkg.tgz")
    with pytest.raises(EmojiFetchError, match="integrity"):
        fetch_emoji(tmp_path / "data", tarball=tarball)
    assert not emoji.is_fetched(tmp_path / "data")
    monkeypatch.setattr(emoji, "EMOJI_INTEGRITY", emoji._integrity(tarball))
    root = fetch_emoji(tmp_path / "data", tarball=tarball)
    assert emoji.is_fetched(tmp_path / "data") and (root / "emoji.json").is_file()
    assert fetch_emoji(tmp_path / "data", tarball=tmp_path / "missing.tgz") == root  # cached: not read again


def test_index_keeps_subcategories_with_enough_images(tmp_path: Path) -> None:
    extract_emoji_package(make_tarball(tmp_path / "pkg.tgz"), tmp_path / "out")
    paths, labels, names, meta = emoji_index(tmp_path / "out")
    assert names == ["mammal", "fruit"]  # worded labels, emoji.json order; "tiny-group" dropped
    assert np.bincount(labels).tolist() == [22, 20]
    assert meta["subcategories"] == ["animal-mammal", "food-fruit"] and len(paths) == 42


def test_load_dataset_emoji_splits_and_composites_alpha_on_white(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = make_tarball(tmp_path / "pkg.tgz")
    monkeypatch.setattr(emoji, "EMOJI_INTEGRITY", emoji._integrity(tarball))
    monkeypatch.setenv("TRUSTSERVE_DATASETS_DIR", str(tmp_path / "data"))
    fetch_emoji(tarball=tarball)
    train, test = load_dataset("emoji", "train"), load_dataset("emoji", "test")
    assert len(train) + len(test) == 42 and train.class_names == ["mammal", "fruit"]
    pixel = np.asarray(test.images[0])
    assert pixel.shape == (64, 64, 3) and (pixel[0, 0] == 255).all()  # transparent corner -> white


def test_cli_fetch_with_a_local_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import cli

    tarball = make_tarball(tmp_path / "pkg.tgz")
    monkeypatch.setenv("TRUSTSERVE_DATASETS_DIR", str(tmp_path / "data"))
    bad = CliRunner().invoke(cli, ["datasets", "fetch", "emoji", "--tarball", str(tarball)])
    assert bad.exit_code == 1 and "integrity" in bad.output
    monkeypatch.setattr(emoji, "EMOJI_INTEGRITY", emoji._integrity(tarball))
    ok = CliRunner().invoke(cli, ["datasets", "fetch", "emoji", "--tarball", str(tarball)])
    assert ok.exit_code == 0, ok.output
    assert "emoji dataset in" in ok.output
