"""Write int8 calibration images: N Fashion-MNIST *train* images (never test), as the offline model sees
them (inverted by default), to a folder: ``python -m benchmarks.runtime.calibration_images OUT --count 300``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.trust.datasets import balanced_subsample, load_dataset


def write_calibration_images(out: Path, count: int = 300, seed: int = 0) -> Path:
    """``count`` class-balanced train images of Fashion-MNIST as PNG files in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset("fashion-mnist", "train")
    for i, index in enumerate(balanced_subsample(np.asarray(train.labels), count, seed=seed)):
        path = out / f"fmnist-train-{i:04d}.png"
        if not path.exists():
            train.images[int(index)].save(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    print(write_calibration_images(args.out, args.count))


if __name__ == "__main__":
    main()
