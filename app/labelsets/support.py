"""Support images: labelled images whose image-space features become the class prototypes (TrustVLM's
P_c = normalised mean of the support features, kept as running sums and counts)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from app.engine.engine import ClassificationEngine
from app.errors import Conflict, InvalidInput, shown
from app.labelsets.models import COUNTS, SUMS, LabelSetMeta, LabelSetView
from app.labelsets.repository import LabelSetRepository
from app.trust.prototypes import PrototypeBank

Images = Sequence[Image.Image] | Sequence[bytes]


async def encode(engine: ClassificationEngine, images: Images) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, aux features) for decoded images or uploaded files (the engine decodes files a batch
    at a time, after checking the request's pixel budget)."""
    if all(isinstance(image, bytes) for image in images):
        encoded = await engine.encode_uploads(list(images))  # type: ignore[arg-type]
    else:
        encoded = await engine.encode_images(list(images))  # type: ignore[arg-type]
    return encoded.embeddings, encoded.aux_features


def check_pairs(labels: Sequence[str], images: Images) -> None:
    """``InvalidInput`` unless there is at least one image and exactly one label per image."""
    if len(labels) != len(images):
        raise InvalidInput(f"got {len(images)} images but {len(labels)} labels; give one label per image")
    if not images:
        raise InvalidInput("no images given")


def class_indices(meta: LabelSetMeta, labels: Sequence[str]) -> np.ndarray:
    """Label names (or their decimal indices) -> class indices; ``InvalidInput`` listing unknown ones."""
    position = {label: i for i, label in enumerate(meta.labels)}
    out, unknown = [], []
    for label in labels:
        if label in position:
            out.append(position[label])
        elif label.isdigit() and int(label) < len(meta.labels):
            out.append(int(label))
        else:
            unknown.append(label)
    if unknown:
        listed = [shown(u) for u in sorted(set(unknown))[:10]]
        raise InvalidInput(
            f"unknown class(es) for label set {meta.id!r}: {listed}; "
            f"known: {meta.labels[:20]}{' …' if len(meta.labels) > 20 else ''}",
            code="unknown_class",
        )
    return np.asarray(out, dtype=np.int64)


class SupportImages:
    """Registers support images with their classes' prototypes."""

    def __init__(self, repository: LabelSetRepository, engine: ClassificationEngine) -> None:
        self.repository = repository
        self.engine = engine

    async def add(
        self,
        label_set_id: str,
        labels: Sequence[str],
        images: Images,
        expected_version: int | None = None,
    ) -> tuple[LabelSetView, dict[str, int]]:
        """Add support images (any sizes; each is preprocessed on its own) to their classes' prototypes.
        All-or-nothing: unknown classes are refused before anything is encoded. Drops the calibration."""
        repo = self.repository
        check_pairs(labels, images)
        class_indices(repo.get_meta(label_set_id), labels)
        _, features = await encode(self.engine, images)
        async with repo.lock(label_set_id):
            entry = repo.entry(label_set_id)
            meta = entry.record.meta
            classes = class_indices(meta, labels)  # re-check: a class may have gone meanwhile
            if meta.feature_dim is not None and features.shape[1] != meta.feature_dim:
                raise Conflict(
                    f"image features have dim {features.shape[1]}, label set uses {meta.feature_dim}"
                )
            record = repo.next_version(
                entry, expected_version, feature_dim=int(features.shape[1]), calibration=None
            )
            sums = record.arrays[SUMS]
            if sums.shape[1] == 0:
                sums = np.zeros((len(meta.labels), features.shape[1]))
            bank = PrototypeBank.from_arrays(sums, record.arrays[COUNTS])
            bank.add(classes, features)
            state = bank.to_arrays()
            record.arrays[SUMS], record.arrays[COUNTS] = state["sums"], state["counts"]
            view = await repo.commit(record, meta.version)
        added = {meta.labels[i]: int(n) for i, n in zip(*np.unique(classes, return_counts=True))}
        return view, added
