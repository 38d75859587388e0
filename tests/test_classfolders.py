"""app.classfolders: class folders from zip / tar / tar.gz uploads and from a folder on disk; every bound is
checked before the data it guards is read."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from app.api.errors import http_status
from app.classfolders import (
    SKIPPED_NAMES_SHOWN,
    ArchiveLimits,
    ClassFolderError,
    archive_kind,
    class_of,
    read_class_archive,
    read_class_folder,
)
from tests.conftest import image_bytes

LIMITS = ArchiveLimits(max_members=64, max_bytes=2**20)


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None, dirs: list[str] = ()) -> bytes:  # type: ignore[assignment]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("cat/1.jpg", "cat"),
        ("photos/cat/1.JPG", "cat"),
        ("a photo of a dog\\x.png", "a photo of a dog"),
        ("./cat/./1.png", "cat"),
        ("cat/notes.txt", None),
        ("cat/.hidden.png", None),
        (".git/cat/1.png", None),
        ("__MACOSX/cat/._1.png", None),
        ("README.md", None),
    ],
)
def test_each_image_belongs_to_the_folder_that_holds_it(name: str, label: str | None) -> None:
    assert class_of(name) == label


@pytest.mark.parametrize("name", ["../cat/1.png", "cat/../../1.png", "/etc/cat/1.png", "1.png"])
def test_dishonest_names_are_refused(name: str) -> None:
    with pytest.raises(ClassFolderError):
        class_of(name)


def test_archive_kind_comes_from_the_bytes_never_from_a_name() -> None:
    assert archive_kind(make_zip({"a/1.png": b"x"})) == "zip"
    assert archive_kind(make_tar({"a/1.png": b"x"})) == "tar"
    assert archive_kind(gzip.compress(make_tar({"a/1.png": b"x"}))) == "gzip"
    with pytest.raises(ClassFolderError) as err:
        archive_kind(b"BZh91AY&SY" + b"\x00" * 300)
    assert err.value.code == "unsupported_archive"


@pytest.mark.parametrize("form", ["zip", "stored zip", "tar", "tar.gz"])
def test_every_archive_form_gives_the_same_images(form: str) -> None:
    members = {
        "set/cat/1.png": image_bytes(seed=1),
        "set/cat/2.png": image_bytes(seed=2),
        "set/dog/1.png": image_bytes(seed=3),
        "set/README.txt": b"not an image",
        "set/dog/.DS_Store": b"junk",
    }
    data = {
        "zip": lambda: make_zip(members),
        "stored zip": lambda: make_zip(members, zipfile.ZIP_STORED),
        "tar": lambda: make_tar(members, dirs=["set", "set/cat"]),
        "tar.gz": lambda: gzip.compress(make_tar(members)),
    }[form]()
    images = read_class_archive(data, LIMITS)
    assert images.labels == ["cat", "cat", "dog"] and images.classes == ["cat", "dog"]
    assert images.files == [members["set/cat/1.png"], members["set/cat/2.png"], members["set/dog/1.png"]]
    assert images.skipped == 2 and set(images.skipped_names) == {"set/README.txt", "set/dog/.DS_Store"}


def test_links_are_skipped_never_followed() -> None:
    data = make_tar(
        {"cat/1.png": image_bytes()}, links={"cat/2.png": "/etc/passwd", "dog/x.png": "../cat/1.png"}
    )
    images = read_class_archive(data, LIMITS)
    assert images.labels == ["cat"] and images.skipped == 2


def test_entry_count_is_bounded_before_the_entries_are_parsed() -> None:
    members = {f"cat/{i}.txt": b"" for i in range(70)}  # skipped files count too
    for data in (make_zip(members), make_tar(members), gzip.compress(make_tar(members))):
        with pytest.raises(ClassFolderError) as err:
            read_class_archive(data, LIMITS)
        assert http_status(err.value) == 413 and err.value.code == "archive_too_many_entries"


def test_expanded_bytes_are_bounded_from_the_headers_and_while_inflating() -> None:
    big = {"cat/1.png": b"\x00" * (LIMITS.max_bytes + 1)}  # compresses to ~1 KB
    zipped = make_zip(big)
    assert len(zipped) < 10_000
    with pytest.raises(ClassFolderError) as err:
        read_class_archive(zipped, LIMITS)
    assert http_status(err.value) == 413 and err.value.code == "archive_too_large"
    with pytest.raises(ClassFolderError) as err:
        read_class_archive(gzip.compress(make_tar(big)), LIMITS)
    assert http_status(err.value) == 413
    # the sum counts, not just each entry
    halves = {f"cat/{i}.png": b"\x00" * (LIMITS.max_bytes // 2 + 1) for i in range(2)}
    with pytest.raises(ClassFolderError):
        read_class_archive(make_zip(halves), LIMITS)


def test_a_zip_that_lies_about_a_size_is_refused() -> None:
    data = bytearray(make_zip({"cat/1.png": b"A" * 1000}, zipfile.ZIP_STORED))
    # shrink the declared size in the central directory: zipfile must not hand out more than it declared
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(ClassFolderError):
        read_class_archive(bytes(data), LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        make_zip({"cat/1.png": b"x"})[:40],  # truncated
        b"\x1f\x8b" + b"\x00" * 40,  # broken gzip
        gzip.compress(b"plain text, not a tar"),
        make_tar({"cat/1.png": b"x" * 2000})[:1200],  # cut inside the data
    ],
)
def test_broken_archives_are_clear_errors(data: bytes) -> None:
    with pytest.raises(ClassFolderError) as err:
        read_class_archive(data, LIMITS)
    assert 400 <= http_status(err.value) < 500 and str(err.value)


def test_an_image_outside_any_folder_is_an_error_not_a_guess() -> None:
    with pytest.raises(ClassFolderError) as err:
        read_class_archive(make_zip({"1.png": image_bytes()}), LIMITS)
    assert err.value.code == "image_outside_class_folder"


def test_skipped_names_shown_are_bounded_but_counted_in_full() -> None:
    members = {f"cat/{i}.txt": b"" for i in range(SKIPPED_NAMES_SHOWN + 5)}
    images = read_class_archive(make_zip(members), LIMITS)
    assert images.skipped == SKIPPED_NAMES_SHOWN + 5 and len(images.skipped_names) == SKIPPED_NAMES_SHOWN


def test_read_class_folder(tmp_path: Path) -> None:
    for label, n in (("dog", 2), ("cat", 1)):
        (tmp_path / label).mkdir()
        for i in range(n):
            (tmp_path / label / f"{i}.png").write_bytes(image_bytes(seed=i))
    (tmp_path / "cat" / "notes.txt").write_text("x")
    (tmp_path / "cat" / "nested").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "top.png").write_bytes(image_bytes())
    folder = read_class_folder(tmp_path)
    assert folder.labels == ["cat", "dog"] and folder.count == 3
    assert [p.name for p in folder.images["dog"]] == ["0.png", "1.png"]
    assert {p.name for p in folder.skipped} == {"notes.txt", "nested", "top.png"}
    with pytest.raises(ClassFolderError):
        read_class_folder(tmp_path / "empty")
    with pytest.raises(ClassFolderError):
        read_class_folder(tmp_path / "missing")
