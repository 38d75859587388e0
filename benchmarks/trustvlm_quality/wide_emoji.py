"""A stress set for the aspect policy: every image of the ``emoji`` set placed at a seeded random horizontal
position on a white 3:1 canvas (192 × 64), written as an image folder (``<out>/<label>/<file>.png``).

All four public evaluation sets are square, where ``letterbox`` and ``crop`` give identical pixels; this
constructed set shows the mechanism behind the issue's clip-art numbers (a centre crop of a wide image keeps
its middle third). It is synthetic: it says what the policy does to off-centre objects, not how often they
occur. Nothing of it is committed; build it, then evaluate it as an image folder:

    python benchmarks/trustvlm_quality/wide_emoji.py --out /tmp/emoji-wide
    trustserve eval --dataset imagefolder:/tmp/emoji-wide --preprocess crop --tune --test-limit 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from app.trust.emoji import emoji_index, fetch_emoji
from app.vlm.preprocessing import rgb_on_white

WIDTH_FACTOR = 3


def build(out: Path, seed: int = 0) -> int:
    """Write the wide set; returns the number of images."""
    paths, labels, names, _ = emoji_index(fetch_emoji())
    rng = np.random.default_rng(seed)
    for path, label in zip(paths, labels, strict=True):
        emoji = rgb_on_white(Image.open(path))
        w, h = emoji.size
        canvas = Image.new("RGB", (WIDTH_FACTOR * w, h), (255, 255, 255))
        canvas.paste(emoji, (int(rng.integers(0, (WIDTH_FACTOR - 1) * w + 1)), 0))
        folder = out / names[int(label)].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        canvas.save(folder / path.name)
    return len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{build(args.out, args.seed)} images in {args.out}")


if __name__ == "__main__":
    main()
