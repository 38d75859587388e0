"""A stored label-set version → the immutable ``LabelSetView`` classify reads: checks that its arrays are
what this server's model would have stored, prototypes (with the adaptation cache), the FAISS prototype
index (stored or rebuilt), and whether its calibration applies to what is served now."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from app.labelsets.adaptation import adapted_prototypes
from app.labelsets.basis import arrays_digest, calibration_problem, serving_numerics
from app.labelsets.index import IndexParams, VectorIndex, serving_index
from app.labelsets.models import (
    CACHE_ARRAYS,
    CACHE_CLASS,
    CACHE_FEATURES,
    CACHE_SCORES,
    COUNTS,
    PROTOTYPE_INDEX,
    SUMS,
    TEXT,
    CalibrationBasis,
    LabelSetView,
)
from app.labelsets.store import StoredLabelSet
from app.labelsets.support_features import check_support_arrays, support_array_names

if TYPE_CHECKING:
    from app.engine.engine import ClassificationEngine

log = logging.getLogger(__name__)


def check_arrays(record: StoredLabelSet, engine: ClassificationEngine) -> None:
    """``ValueError`` unless the arrays are exactly what this server's model would have stored for the
    labels: names, dtypes, shapes, embedding and feature widths, finite values, counts ≥ 0, a bounded
    adaptation cache. Run on import and when stored entries are loaded (a mismatch is then reported as
    unavailable instead of failing every classify)."""
    meta, arrays = record.meta, record.arrays
    required, optional = {TEXT, SUMS, COUNTS}, set(CACHE_ARRAYS)
    names = set(arrays)
    if not required <= names or names - required - optional - support_array_names():
        raise ValueError(
            f"expected arrays {sorted(required)} (+ the adaptation cache, kept support encodings), "
            f"got {sorted(names)}"
        )
    c = len(meta.labels)
    text, sums, counts = arrays[TEXT], arrays[SUMS], arrays[COUNTS]
    dim = engine.backend.embedding_dim
    if text.dtype.kind != "f" or text.ndim != 2 or text.shape[0] != c or text.shape[1] != meta.embedding_dim:
        raise ValueError(f"text embeddings {text.dtype}{text.shape}, expected ({c}, {meta.embedding_dim})")
    if text.shape[1] != int(dim):
        raise ValueError(f"text embeddings have dimension {text.shape[1]}; this model's is {dim}")
    if not np.isfinite(text).all() or not np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-3):
        raise ValueError("text embeddings must be finite and L2-normalised")
    if counts.dtype.kind not in "iu" or counts.shape != (c,) or (counts < 0).any():
        raise ValueError(f"prototype counts {counts.dtype}{counts.shape} must be ({c},) integers ≥ 0")
    if meta.space not in engine.image_spaces():
        raise ValueError(
            f"the label set uses the {meta.space} image space; this model has {engine.image_spaces()}"
        )
    feature_dim = engine.feature_dim if meta.space == "own" else engine.independent_encoder()[0].dim
    if sums.dtype.kind != "f" or sums.ndim != 2 or sums.shape[0] != c or not np.isfinite(sums).all():
        raise ValueError(f"prototype sums {sums.dtype}{sums.shape} must be finite ({c}, F)")
    if sums.shape[1] == 0:
        if counts.any() or meta.feature_dim is not None:
            raise ValueError("support counts without prototype sums")
    elif sums.shape[1] != meta.feature_dim or (feature_dim is not None and sums.shape[1] != feature_dim):
        raise ValueError(
            f"prototype sums have width {sums.shape[1]}; this model's image space has {feature_dim}"
        )
    check_support_arrays(arrays, c, meta.embedding_dim, meta.feature_dim, meta.space)
    present = [name for name in optional if name in arrays]
    if present:
        if len(present) != len(optional) or sums.shape[1] == 0:
            raise ValueError("an adaptation cache needs class, features and scores (and prototypes)")
        cls, feats, scores = arrays[CACHE_CLASS], arrays[CACHE_FEATURES], arrays[CACHE_SCORES]
        n = cls.shape[0] if cls.ndim == 1 else -1
        if (
            cls.dtype.kind not in "iu"
            or n < 0
            or n > c * meta.adaptation.max_per_class
            or ((cls < 0) | (cls >= c)).any()
            or feats.shape != (n, sums.shape[1])
            or scores.shape != (n,)
            or not (np.isfinite(feats).all() and np.isfinite(scores).all())
        ):
            raise ValueError("the adaptation cache does not match the labels and prototypes")


def build_view(
    record: StoredLabelSet, engine: ClassificationEngine, index_params: IndexParams
) -> LabelSetView:
    """Immutable snapshot: prototypes (with the adaptation cache), the FAISS prototype index (stored or
    rebuilt), the basis the decision score is computed from now and whether the calibration applies."""
    meta, arrays = record.meta, record.arrays
    text = np.ascontiguousarray(arrays[TEXT], dtype=np.float32)
    sums, counts = arrays[SUMS], arrays[COUNTS].astype(np.int64)
    n_classes = len(meta.labels)
    if text.shape[0] != n_classes or sums.shape[0] != n_classes or counts.shape != (n_classes,):
        raise ValueError(
            f"array shapes do not match {n_classes} labels: text {text.shape}, sums {sums.shape}, "
            f"counts {counts.shape}"
        )
    cache_class = arrays.get(CACHE_CLASS, np.zeros(0, np.int64)).astype(np.int64)
    has_prototype = counts > 0
    if sums.shape[1] == 0:
        prototypes = np.zeros((n_classes, 0), np.float32)
    else:
        prototypes = adapted_prototypes(
            sums,
            counts,
            cache_class,
            arrays.get(CACHE_FEATURES, np.zeros((0, sums.shape[1]), np.float32)),
            meta.adaptation.max_weight,
        )
    index = index_from(record.blobs.get(PROTOTYPE_INDEX), prototypes, has_prototype, index_params)
    for array in (text, prototypes, has_prototype, counts):
        array.setflags(write=False)
    basis = CalibrationBasis(
        arrays_sha256=arrays_digest(text, prototypes, has_prototype),
        logit_scale=engine.logit_scale,
        logit_bias=engine.logit_bias,
        towers=serving_numerics(engine.space_towers(meta.space)),
    )
    problem = None
    if meta.calibration is not None:
        problem = calibration_problem(
            meta.calibration,
            basis,
            alpha=meta.alpha,
            visual_temperature=meta.visual_temperature,
            trust_score=meta.trust_score,
        )
    return LabelSetView(
        id=meta.id,
        version=meta.version,
        labels=tuple(meta.labels),
        templates=tuple(meta.templates),
        model=meta.model,
        aux_encoder=meta.aux_encoder,
        text_embeddings=text,
        prototypes=prototypes,
        has_prototype=has_prototype,
        support_counts=counts,
        index=index,
        alpha=meta.alpha,
        visual_temperature=meta.visual_temperature,
        trust_score=meta.trust_score,
        calibration=meta.calibration,
        basis=basis,
        calibration_problem=problem,
        adaptation=meta.adaptation,
        adapted=bool(cache_class.size),
        policy=meta.policy,
        selection_evidence=meta.selection.evidence if meta.selection is not None else "fixed",
        space=meta.space,
        space_encoder=engine.space_encoder_id(meta.space),
    )


def index_from(
    blob: bytes | None, vectors: np.ndarray, present: np.ndarray, params: IndexParams
) -> VectorIndex | None:
    """The stored index when it matches the vectors and the setting's kind, else a fresh one."""
    if vectors.shape[1] == 0 or not present.any():
        return None
    ids = np.flatnonzero(present).astype(np.int64)
    return serving_index(vectors[ids], ids, params, blob)  # HNSW: built in the background
