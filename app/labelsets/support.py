"""Support images: labelled images whose image-space features become the class prototypes (TrustVLM's
P_c = normalised mean of the support features, kept as running sums and counts), encoded with the label
set's aspect policy (both policies for ``preprocess: auto``) in its image space (both spaces for
``image_space: auto``). Each image's encodings are also kept
(bounded, ``app.labelsets.support_features``) for the leave-one-out self-selection, which runs here,
whenever the support images change (``app.labelsets.self_selection``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from PIL import Image

from app.engine.engine import ClassificationEngine
from app.errors import Conflict, InvalidInput, shown
from app.labelsets import support_features
from app.labelsets.models import COUNTS, SUMS, LabelSetMeta, LabelSetView
from app.labelsets.repository import LabelSetRepository
from app.labelsets.selection import policies_for, spaces_for
from app.labelsets.self_selection import apply_selection, support_selection
from app.labelsets.store import StoredLabelSet
from app.labelsets.support_features import append_support, kept_count
from app.trust.prototypes import PrototypeBank
from app.vlm.preprocessing import AspectPolicy

Images = Sequence[Image.Image] | Sequence[bytes]


Encoded = dict[AspectPolicy, tuple[np.ndarray, dict[str, np.ndarray]]]  # p -> (embeddings, {space: f})


async def encode(
    engine: ClassificationEngine, images: Images, policy: AspectPolicy | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, features in the model's own image space) under the aspect ``policy``."""
    embeddings, features = await encode_in_spaces(engine, images, policy)
    return embeddings, features["own"]


async def encode_in_spaces(
    engine: ClassificationEngine,
    images: Images,
    policy: AspectPolicy | None = None,
    spaces: Sequence[str] = ("own",),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(embeddings, {space: raw features}) for decoded images or uploaded files under the aspect
    ``policy`` (the engine decodes files a batch at a time, after checking the request's pixel budget)."""
    if all(isinstance(image, bytes) for image in images):
        encoded = await engine.encode_uploads(list(images), policy=policy, spaces=spaces)  # type: ignore[arg-type]
    else:
        encoded = await engine.encode_images(list(images), policy=policy, spaces=spaces)  # type: ignore[arg-type]
    return encoded.embeddings, {space: encoded.features_in(space) for space in spaces}


def label_set_spaces(engine: ClassificationEngine, meta: LabelSetMeta) -> tuple[str, ...]:
    """The image spaces the label set encodes in (one; every one the model has for ``image_space: auto``)."""
    try:
        return spaces_for(meta.image_space, engine.image_spaces())
    except ValueError as exc:
        raise InvalidInput(str(exc), code="no_independent_image_space") from exc


async def encode_policies(engine: ClassificationEngine, images: Images, meta: LabelSetMeta) -> Encoded:
    """The images under every aspect policy the label set uses (one; both for ``preprocess: auto``), in
    every image space it uses."""
    spaces = await usable_spaces(engine, meta)
    return {p: await encode_in_spaces(engine, images, p, spaces) for p in policies_for(meta.preprocess)}


async def usable_spaces(engine: ClassificationEngine, meta: LabelSetMeta) -> tuple[str, ...]:
    """``label_set_spaces``, loading the independent space first when it is wanted; ``auto`` drops it
    when it cannot be loaded (a fixed ``independent`` then fails with a clear 422)."""
    spaces = label_set_spaces(engine, meta)
    auto_independent = "independent" in spaces and meta.image_space == "auto"
    if auto_independent and not await asyncio.to_thread(engine.independent_loadable):
        return label_set_spaces(engine, meta)
    return spaces


def check_auto_room(meta: LabelSetMeta, kept: int, adding: int) -> None:
    """``InvalidInput`` when an ``auto`` label set would exceed the kept-image bound (its prototypes
    under the other policy or space are rebuilt from the kept images, so it cannot keep only some)."""
    bound = support_features.MAX_KEPT_SUPPORT_IMAGES
    auto = [name for name in ("preprocess", "image_space") if getattr(meta, name) == "auto"]
    if auto and kept + adding > bound:
        raise InvalidInput(
            f"a label set with {' and '.join(auto)} 'auto' keeps every support image's encodings: at "
            f"most {bound} support images (has {kept}, adding {adding}); fix {auto[0]} for more",
            code="too_many_support_images",
        )


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
        asked = repo.get_meta(label_set_id)
        class_indices(asked, labels)
        check_auto_room(asked, kept_count(repo.entry(label_set_id).record.arrays), len(images))
        encoded = await encode_policies(self.engine, images, asked)
        async with repo.lock(label_set_id):
            entry = repo.entry(label_set_id)
            meta = entry.record.meta
            if (meta.preprocess, meta.image_space) != (asked.preprocess, asked.image_space) or (
                meta.policy not in encoded or meta.space not in encoded[meta.policy][1]
            ):
                raise Conflict("the label set's preprocess or image_space setting changed meanwhile; retry")
            check_auto_room(meta, kept_count(entry.record.arrays), len(images))
            features = encoded[meta.policy][1][meta.space]
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
            append_support(record.arrays, classes, encoded)
            await self.reselect(record)
            view = await repo.commit(record, meta.version)
        added = {meta.labels[i]: int(n) for i, n in zip(*np.unique(classes, return_counts=True))}
        return view, added

    async def reselect(self, record: StoredLabelSet) -> None:
        """The support images' leave-one-out choice of α / policy, written into ``record`` (a new version
        without calibration); a thread, since the bootstrap takes a moment (never per request)."""
        engine = self.engine
        chosen = await asyncio.to_thread(
            support_selection,
            record,
            default_policy=engine.preset.preprocess,
            fallback_alpha=engine.preset.trust.alpha,
            logit_scale=engine.logit_scale,
            logit_bias=engine.logit_bias,
        )
        if chosen is not None:
            apply_selection(record, chosen)
