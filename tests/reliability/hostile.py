"""The hostile requests of the security review (issue 12), built by code: import archives whose manifest
points outside the archive, a GNU-sparse tar member, audio at absurd rates and channel counts, a text-
encoding flood, compressible giant PNGs, path-hostile labels, format-string templates, JSON element
floods. Shared by ``tests/reliability/test_resource_budget.py`` and ``benchmarks/reliability/hostile.py``.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from tests.reliability.images import _png, encode, noise


# -- label-set archives ----------------------------------------------------------------------------
def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def read_members(archive: bytes) -> dict[str, bytes]:
    """Every member of a (trusted, test-made) .tar.gz, by name."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive)), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def pack_members(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def rewrite_manifest(
    archive: bytes,
    change: Callable[[dict[str, Any]], None],
    *,
    members: Callable[[dict[str, bytes]], None] | None = None,
    raw_manifest: bytes | None = None,
) -> bytes:
    """An exported archive with its manifest changed by ``change`` and the manifest checksum recomputed
    (what an attacker does: the checksum protects against accidents, not against a forger)."""
    files = read_members(archive)
    name = next(n for n in files if n.endswith("/manifest.json"))
    manifest = json.loads(files[name])
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    change(body)
    files[name] = raw_manifest or _canonical(
        {**body, "checksum": hashlib.sha256(_canonical(body)).hexdigest()}
    )
    if members is not None:
        members(files)
    return pack_members(files)


def point_file_at(path: str, size: int = 2**40) -> Callable[[dict[str, Any]], None]:
    """Manifest change: the arrays file is ``path`` (any file on the server's host)."""

    def change(body: dict[str, Any]) -> None:
        body["files"]["arrays"]["path"] = path
        body["files"]["arrays"]["bytes"] = size

    return change


def deep_manifest(depth: int = 100_000) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _octal(value: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, value)) + b"\0"


def sparse_tar_gz(name: str, declared_size: int = 2 * 2**30) -> bytes:
    """A gzip'd tar holding one GNU-sparse member ``name`` that declares ``declared_size`` bytes (all one
    hole): ~100 bytes on the wire, ``declared_size`` bytes of zeros for a reader that extracts it."""
    header = bytearray(tarfile.TarInfo(name).tobuf(format=tarfile.GNU_FORMAT))[:512]
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = _octal(0, 12)  # first sparse entry: offset 0, 0 bytes of data
    header[398:410] = _octal(0, 12)
    header[483:495] = _octal(declared_size, 12)  # real size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return gzip.compress(bytes(header) + b"\0" * 1024, mtime=0)


# -- audio -----------------------------------------------------------------------------------------
def wav_at_rate(rate: int = 1, samples: int = 16_000) -> bytes:
    """A mono WAV whose header claims ``rate`` Hz (16,000 samples at 1 Hz: resampling ×16,000)."""
    buffer = io.BytesIO()
    wave = (0.5 * np.sin(np.linspace(0, 200 * np.pi, samples))).astype(np.float32)
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@functools.lru_cache(maxsize=2)
def silent_flac(channels: int = 8, seconds: float = 600.0, rate: int = 48_000) -> bytes:
    """A silent FLAC: almost nothing on the wire, ``channels × seconds × rate`` float samples decoded."""
    buffer = io.BytesIO()
    block = np.zeros((rate, channels), np.int16)
    with sf.SoundFile(buffer, "w", rate, channels, format="FLAC", subtype="PCM_16") as out:
        for _ in range(int(seconds)):
            out.write(block)
    return buffer.getvalue()


# -- images ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def compressible_png(side: int = 6324, alpha: bool = False) -> bytes:
    """A one-colour ``side``² RGB (or RGBA) PNG: ~40 M pixels (the per-image limit) in about 100 KB."""
    pixel = b"\x80\x40\x20\xc0" if alpha else b"\x80\x40\x20"
    row = b"\x00" + pixel * side  # filter byte + pixels
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    return _png(side, side, 8, 6 if alpha else 2, idat)


@functools.lru_cache(maxsize=2)
def large_jpeg(side: int = 6000) -> bytes:
    """A ``side``² JPEG of smooth gradients (decodable at 1/8 scale by draft mode)."""
    ramp = Image.linear_gradient("L").resize((side, side))
    img = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90), ramp))
    return encode(img, "JPEG", quality=30)


@functools.lru_cache(maxsize=128)
def noise_png(side: int, seed: int = 0) -> bytes:
    return encode(noise((side, side), seed=seed), "PNG")


def small_png() -> bytes:
    return encode(noise((32, 32)), "PNG")


# -- JSON bodies -----------------------------------------------------------------------------------
def text_flood(labels: int = 1000, templates: int = 32) -> dict[str, Any]:
    """Ad-hoc classify with ``labels × templates`` distinct prompts (issue 12: 1,000 × 32, ~100 KB)."""
    return {
        "images": [base64.b64encode(small_png()).decode()],
        "labels": [f"flood label {i:05d} {'x' * 60}" for i in range(labels)],
        "templates": [f"variant {j} of a photo of a {{}}." for j in range(templates)],
    }


def json_element_flood(size_bytes: int = 30 * 2**20) -> bytes:
    """A classify body whose ``labels`` holds millions of tiny objects (~64 B of Python object each)."""
    n = size_bytes // 3
    return b'{"labels":[' + b"{}," * (n - 1) + b'{}],"images":[]}'


def hostile_labels() -> list[list[str]]:
    """Label lists a label set must refuse (path-hostile, control characters, case duplicates, huge)."""
    return [
        ["cat", "../../victim"],
        ["cat", ".."],
        ["cat", "a/b"],
        ["cat", "nul\x00byte"],
        ["cat", "esc\x1b[31m"],
        ["Cat", "cat"],
        ["cat", "x" * 5_000_000],
    ]


HOSTILE_TEMPLATES = ["{{}}{0:x>20000000}", "{}{}", "{0.__class__}{}", "{0}", "{label}", "no slot", "{} }"]
