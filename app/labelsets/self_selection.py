"""A label set's self-selection on its stored record (issue 14): the support images' leave-one-out
evidence whenever they change, and applying a choice (α, aspect policy, image space) to a new version.

The rule and the evidence are ``app.labelsets.selection``; this module only reads the record's kept
support encodings (``app.labelsets.support_features``) and writes what was chosen. Selection runs when
support images or calibration images arrive, never per request.
"""

from __future__ import annotations

import numpy as np

from app.labelsets.adaptation import drop_cache
from app.labelsets.models import COUNTS, SUMS, TEXT, LabelSetMeta
from app.labelsets.selection import (
    SELECTED_SCORES,
    ImageSpaceSetting,
    LabelSetSelection,
    PolicyEncodings,
    PreprocessSetting,
    policies_for,
    select_for_label_set,
    spaces_for,
    support_encodings,
)
from app.labelsets.store import StoredLabelSet
from app.labelsets.support_features import (
    complete_policies,
    complete_spaces,
    drop_policies,
    drop_spaces,
    kept_count,
    kept_policies,
    kept_spaces,
    kept_support,
    prototype_state,
)
from app.vlm.preprocessing import AspectPolicy


def selects_alpha(meta: LabelSetMeta) -> bool:
    """α is chosen on evidence: selection on, and a score whose α the rule chooses."""
    return meta.selection_mode == "auto" and meta.trust_score in SELECTED_SCORES


def selects(meta: LabelSetMeta) -> bool:
    """Anything is chosen on evidence: α (``selects_alpha``), the aspect policy (``preprocess: auto``) or
    the image space (``image_space: auto``)."""
    return selects_alpha(meta) or meta.preprocess == "auto" or meta.image_space == "auto"


def support_selection(
    record: StoredLabelSet, *, default_policy: AspectPolicy, fallback_alpha: float, logit_scale: float,
    logit_bias: float,
) -> LabelSetSelection | None:  # fmt: skip
    """The choice on the kept support images (leave-one-out prototypes), or None when nothing is
    selected or no support image is kept."""
    meta, arrays = record.meta, record.arrays
    if not selects(meta):
        return None
    encodings: dict[AspectPolicy, PolicyEncodings] = {}
    usable = complete_policies(arrays, arrays[COUNTS]) if meta.preprocess == "auto" else []
    policies = usable or [p for p in kept_policies(arrays) if p == meta.policy]
    spaces = complete_spaces(arrays, arrays[COUNTS], policies) if meta.image_space == "auto" else []
    spaces = spaces or ([meta.space] if all(meta.space in kept_spaces(arrays, p) for p in policies) else [])
    for policy in policies if spaces else []:
        feats = {}
        for space in spaces:
            kept = kept_support(arrays, policy, space)
            assert kept is not None
            emb, feats[space], classes = kept
        encodings[policy] = support_encodings(
            emb, feats, classes, arrays[TEXT], logit_scale=logit_scale, logit_bias=logit_bias
        )
    if not encodings:
        return None
    default = meta.policy if meta.policy in encodings else next(iter(encodings))
    chosen = select_for_label_set(
        encodings,
        default_policy=default,
        evidence="support-loo",
        score=meta.trust_score,
        visual_temperature=meta.visual_temperature,
        fallback_alpha=fallback_alpha,
        current_space=meta.space,
    )
    if not selects_alpha(meta):  # only the policy / space was to be chosen: α stays as set
        chosen = chosen.model_copy(update={"alpha": meta.alpha})
    return chosen


def apply_selection(record: StoredLabelSet, chosen: LabelSetSelection) -> None:
    """Write the choice into ``record`` (a new version): α, the policy, the image space, the record of the
    choice. A policy or space switch rebuilds the prototypes from the kept support encodings under the new
    policy in the new space and drops the test-time adaptation cache (its features were encoded under the
    old ones)."""
    meta = record.meta
    if (chosen.policy, chosen.image_space) != (meta.policy, meta.space):
        _rebuild_prototypes(record, chosen.policy, chosen.image_space)
    meta.alpha = chosen.alpha
    meta.policy = chosen.policy
    meta.space = chosen.image_space
    meta.selection = chosen


def _rebuild_prototypes(record: StoredLabelSet, policy: AspectPolicy, space: str) -> None:
    """Prototype sums from the kept support encodings under ``policy`` in ``space`` (``ValueError`` unless
    they are every support image); drops the adaptation cache."""
    if not np.asarray(record.arrays[COUNTS]).any():
        return  # no support images yet: nothing to rebuild
    if policy not in kept_policies(record.arrays) or space not in kept_spaces(record.arrays, policy):
        raise ValueError(f"no support encodings kept under {policy!r} in the {space} image space")
    sums, counts = prototype_state(record.arrays, policy, len(record.meta.labels), space)
    if not np.array_equal(counts, record.arrays[COUNTS]):
        raise ValueError("the kept support images are not all of the prototypes' images")
    record.arrays[SUMS], record.arrays[COUNTS] = sums, counts
    record.meta.feature_dim = int(sums.shape[1])
    drop_cache(record.arrays)


def change_preprocess(record: StoredLabelSet, preprocess: PreprocessSetting, default: AspectPolicy) -> None:
    """Switch ``record`` (a new version) to another ``preprocess`` setting. Support images are never
    re-encoded: the change needs their kept encodings under every policy it uses (``ValueError``
    otherwise). The prototypes follow the new policy; encodings of a policy no longer used are dropped."""
    meta, arrays = record.meta, record.arrays
    wanted = policies_for(preprocess)
    has_support = bool(np.asarray(arrays[COUNTS]).any())
    if has_support and not set(wanted) <= set(complete_policies(arrays, arrays[COUNTS])):
        raise ValueError(
            f"preprocess {preprocess!r} needs every support image encoded under {list(wanted)}; this "
            f"label set kept {kept_policies(arrays) or 'none'} for {kept_count(arrays)} of "
            f"{int(np.asarray(arrays[COUNTS]).sum())} images: create a new label set with this setting"
        )
    policy = (meta.policy if meta.policy in wanted else default) if preprocess == "auto" else preprocess
    meta.preprocess = preprocess
    if has_support and policy != meta.policy:
        _rebuild_prototypes(record, policy, meta.space)
    meta.policy = policy
    drop_policies(arrays, [p for p in kept_policies(arrays) if p not in wanted])
    if meta.selection is not None and meta.selection.policy != policy:
        meta.selection = None


def change_image_space(record: StoredLabelSet, setting: ImageSpaceSetting, available: list[str]) -> None:
    """Switch ``record`` (a new version) to another ``image_space`` setting. Support images are never
    re-encoded: the change needs their kept features in every space it uses, under every kept policy
    (``ValueError`` otherwise). The prototypes follow the new space; features of a space no longer used
    are dropped."""
    meta, arrays = record.meta, record.arrays
    wanted = spaces_for(setting, available)
    has_support = bool(np.asarray(arrays[COUNTS]).any())
    policies = policies_for(meta.preprocess)
    if has_support and not set(wanted) <= set(complete_spaces(arrays, arrays[COUNTS], policies)):
        raise ValueError(
            f"image_space {setting!r} needs every support image's features in {list(wanted)}; this label "
            f"set kept {kept_spaces(arrays, meta.policy) or 'none'} for {kept_count(arrays)} of "
            f"{int(np.asarray(arrays[COUNTS]).sum())} images: create a new label set with this setting"
        )
    space = (meta.space if meta.space in wanted else wanted[0]) if setting == "auto" else setting
    meta.image_space = setting
    if has_support and space != meta.space:
        _rebuild_prototypes(record, meta.policy, space)
    meta.space = space
    drop_spaces(arrays, [s for s in available if s not in wanted])
    if meta.selection is not None and meta.selection.image_space != space:
        meta.selection = None
