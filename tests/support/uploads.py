"""Test uploads: images as multipart PNG files, and class folders on disk (one folder per label)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from PIL import Image


def png_files(images: Iterable[Image.Image], field: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    """``images`` as the ``files=`` of a multipart request, each a PNG under ``field``."""
    out = []
    for i, image in enumerate(images):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        out.append((field, (f"{i}.png", buf.getvalue(), "image/png")))
    return out


def write_class_folders(
    root: Path,
    labels: Iterable[str],
    per_class: int,
    seed: int,
    image_for: Callable[[str, int], Image.Image],
    extras: Mapping[str, str] = {},
) -> Path:
    """``root/<label>/<i>.png`` (``image_for(label, seed + 100 * class index + i)``), plus the text files
    ``extras`` names (path relative to ``root`` -> content)."""
    for c, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image_for(label, seed + 100 * c + i).save(root / label / f"{i}.png")
    for name, text in extras.items():
        (root / name).write_text(text)
    return root
