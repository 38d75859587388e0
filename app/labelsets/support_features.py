"""Per-image support encodings of a label set, kept beside the running prototype sums (issue 14).

Leave-one-out selection needs each support image's embedding and image-space feature, which the running
sums lose; and a label set with ``preprocess: auto`` must be able to rebuild its prototypes under the other
aspect policy when the selection switches. Stored arrays, per encoded policy ``p``:

- ``support_classes`` (N,) int64: the class of each kept support image (shared by the policies);
- ``support_embeddings.<p>`` (N, D) float32 and ``support_features.<p>`` (N, F) float32.

Bounded: at most ``MAX_KEPT_SUPPORT_IMAGES`` images are kept (the first ones; a label set with a fixed
policy keeps adding to its running sums beyond that, and its selection evidence then says n). An ``auto``
label set refuses more, since its prototypes under the other policy are rebuilt from these arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping

import numpy as np

from app.vlm.preprocessing import ASPECT_POLICIES, AspectPolicy

SUPPORT_CLASSES = "support_classes"
MAX_KEPT_SUPPORT_IMAGES = 1024  # × (D + F) float32 per policy: 7 MB at the offline model's 384 + 1280
# (+ 5 MB per policy for the independent space's 1,280)
SPACES = ("own", "independent")  # app.engine.engine.OWN_SPACE / INDEPENDENT_SPACE
Encodings = Mapping[AspectPolicy, tuple[np.ndarray, Mapping[str, np.ndarray]]]  # p -> (emb, {space: f})


def embeddings_name(policy: AspectPolicy) -> str:
    return f"support_embeddings.{policy}"


def features_name(policy: AspectPolicy, space: str = "own") -> str:
    return f"support_features.{policy}" if space == "own" else f"support_features.{policy}.{space}"


def support_array_names() -> set[str]:
    """Every array name this module may store (for the label set's array check)."""
    names = {SUPPORT_CLASSES}
    for policy in ASPECT_POLICIES:
        names |= {embeddings_name(policy), *(features_name(policy, s) for s in SPACES)}
    return names


def kept_count(arrays: Mapping[str, np.ndarray]) -> int:
    return int(arrays[SUPPORT_CLASSES].shape[0]) if SUPPORT_CLASSES in arrays else 0


def kept_policies(arrays: Mapping[str, np.ndarray]) -> list[AspectPolicy]:
    return [p for p in ASPECT_POLICIES if embeddings_name(p) in arrays]


def kept_spaces(arrays: Mapping[str, np.ndarray], policy: AspectPolicy) -> list[str]:
    """The image spaces whose features are kept under ``policy``."""
    return [s for s in SPACES if features_name(policy, s) in arrays]


def complete_policies(arrays: Mapping[str, np.ndarray], counts: np.ndarray) -> list[AspectPolicy]:
    """Policies whose kept encodings are every support image behind the prototypes (``counts``): only
    those can rebuild the prototypes (e.g. not a label set that outgrew the bound with a fixed policy)."""
    if kept_count(arrays) != int(np.asarray(counts).sum()):
        return []
    return kept_policies(arrays)


def append_support(arrays: MutableMapping[str, np.ndarray], classes: np.ndarray, encodings: Encodings) -> int:
    """Append embeddings and features per policy and space for ``classes`` up to the bound; returns how
    many were kept. Every (policy, space) already stored must be given (the arrays stay row-aligned)."""
    stored = {(p, s) for p in kept_policies(arrays) for s in kept_spaces(arrays, p)}
    given = {(p, s) for p, (_, feats) in encodings.items() for s in feats}
    if stored and stored != given:
        raise ValueError(f"support encodings for {sorted(given)}, stored for {sorted(stored)}")
    room = max(MAX_KEPT_SUPPORT_IMAGES - kept_count(arrays), 0)
    take = min(room, int(classes.size))
    if take == 0:
        return 0
    cls = np.asarray(classes[:take], dtype=np.int64)
    arrays[SUPPORT_CLASSES] = np.concatenate([arrays.get(SUPPORT_CLASSES, np.zeros(0, np.int64)), cls])
    for policy, (emb, feats) in encodings.items():
        named = [(embeddings_name(policy), emb), *((features_name(policy, s), f) for s, f in feats.items())]
        for name, new in named:
            part = np.asarray(new[:take], dtype=np.float32)
            old = arrays.get(name, np.zeros((0, part.shape[1]), np.float32))
            arrays[name] = np.concatenate([old, part])
    return take


def kept_support(
    arrays: Mapping[str, np.ndarray], policy: AspectPolicy, space: str = "own"
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(embeddings, features in ``space``, classes) of the kept support images under ``policy``, or None."""
    if features_name(policy, space) not in arrays or kept_count(arrays) == 0:
        return None
    return arrays[embeddings_name(policy)], arrays[features_name(policy, space)], arrays[SUPPORT_CLASSES]


def prototype_state(
    arrays: Mapping[str, np.ndarray], policy: AspectPolicy, num_classes: int, space: str = "own"
) -> tuple[np.ndarray, np.ndarray]:
    """(sums (C, F) float64, counts (C,)) of the prototypes under ``policy`` in ``space`` from the kept
    images."""
    kept = kept_support(arrays, policy, space)
    if kept is None:
        raise ValueError(f"no support features kept under {policy!r} in the {space} image space")
    _, feats, classes = kept
    sums = np.zeros((num_classes, feats.shape[1]))
    np.add.at(sums, classes, feats.astype(np.float64))
    return sums, np.bincount(classes, minlength=num_classes).astype(np.int64)


def remove_class(arrays: MutableMapping[str, np.ndarray], index: int) -> None:
    """Drop the kept images of class ``index`` and renumber the classes after it."""
    if SUPPORT_CLASSES not in arrays:
        return
    cls = arrays[SUPPORT_CLASSES]
    keep = cls != index
    for policy in kept_policies(arrays):
        for name in (
            embeddings_name(policy),
            *(features_name(policy, s) for s in kept_spaces(arrays, policy)),
        ):
            arrays[name] = arrays[name][keep]
    arrays[SUPPORT_CLASSES] = np.where(cls[keep] > index, cls[keep] - 1, cls[keep])


def drop_policies(arrays: MutableMapping[str, np.ndarray], policies: Iterable[AspectPolicy]) -> None:
    for policy in policies:
        arrays.pop(embeddings_name(policy), None)
        for space in SPACES:
            arrays.pop(features_name(policy, space), None)
    if not kept_policies(arrays):
        arrays.pop(SUPPORT_CLASSES, None)


def drop_spaces(arrays: MutableMapping[str, np.ndarray], spaces: Iterable[str]) -> None:
    """Drop the kept features of ``spaces`` under every policy (the embeddings stay)."""
    for policy in kept_policies(arrays):
        for space in spaces:
            arrays.pop(features_name(policy, space), None)


def complete_spaces(
    arrays: Mapping[str, np.ndarray], counts: np.ndarray, policies: Iterable[AspectPolicy]
) -> list[str]:
    """Spaces kept for every support image behind the prototypes under every one of ``policies``."""
    usable = set(complete_policies(arrays, counts))
    wanted = list(policies)
    if not wanted or not set(wanted) <= usable:
        return []
    return [s for s in SPACES if all(features_name(p, s) in arrays for p in wanted)]


def check_support_arrays(
    arrays: Mapping[str, np.ndarray],
    num_classes: int,
    embedding_dim: int,
    feature_dim: int | None,
    served_space: str = "own",
) -> None:
    """``ValueError`` unless the kept support arrays are consistent: aligned rows, known classes, the
    model's widths (``feature_dim``: the prototypes', in ``served_space``), finite values, within the
    bound."""
    names = set(arrays) & support_array_names()
    if not names:
        return
    if SUPPORT_CLASSES not in arrays or not kept_policies(arrays):
        raise ValueError("kept support arrays need their classes and at least one policy's features")
    cls = arrays[SUPPORT_CLASSES]
    n = cls.shape[0] if cls.ndim == 1 else -1
    if (
        cls.dtype.kind not in "iu"
        or n < 0
        or n > MAX_KEPT_SUPPORT_IMAGES
        or ((cls < 0) | (cls >= num_classes)).any()
    ):
        raise ValueError("kept support classes must be ≤ the bound, integers of known classes")
    orphans = {features_name(p, s) for p in ASPECT_POLICIES for s in SPACES} & set(arrays)
    for policy in kept_policies(arrays):
        emb = arrays[embeddings_name(policy)]
        if emb.shape != (n, embedding_dim) or not np.isfinite(emb).all():
            raise ValueError(f"kept support embeddings under {policy!r} do not match their classes")
        if not kept_spaces(arrays, policy):
            raise ValueError(f"kept support encodings under {policy!r} have no image-space features")
        for space in kept_spaces(arrays, policy):
            feats = arrays[features_name(policy, space)]
            orphans.discard(features_name(policy, space))
            if feats.ndim != 2 or feats.shape[0] != n or feats.shape[1] < 1:
                raise ValueError(f"kept support features under {policy!r} do not match their classes")
            if space == served_space and feature_dim is not None and feats.shape[1] != feature_dim:
                raise ValueError(
                    f"kept support features have width {feats.shape[1]}, prototypes {feature_dim}"
                )
            if not np.isfinite(feats).all():
                raise ValueError("kept support encodings must be finite")
    if orphans:
        raise ValueError(f"kept support features without their embeddings: {sorted(orphans)}")
