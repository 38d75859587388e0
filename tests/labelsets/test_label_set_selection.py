"""app.labelsets.selection: α, image space and aspect policy of one label set, chosen on support
(leave-one-out) or calibration evidence. Synthetic but real: features whose class structure is known."""

from __future__ import annotations

import numpy as np

from app.labelsets.selection import (
    PolicyEncodings,
    calibration_encodings,
    policies_for,
    select_for_label_set,
    support_encodings,
)
from app.trust.scores import l2_normalize

C, D, F = 6, 16, 32


def _world(seed: int, n: int, feature_signal: float, text_signal: float = 1.2):
    """Text embeddings, and n images: embeddings that carry the class weakly (MSP is mediocre) and raw
    features that carry it with strength ``feature_signal`` (0: pure noise)."""
    rng = np.random.default_rng(seed)
    text = l2_normalize(rng.normal(size=(C, D)))
    centres = rng.normal(size=(C, F))
    classes = np.repeat(np.arange(C), n // C)
    emb = l2_normalize(text_signal * text[classes] + rng.normal(size=(classes.size, D)))
    feats = feature_signal * centres[classes] + rng.normal(size=(classes.size, F))
    return text, classes, emb, feats


def _support(seed: int, feature_signal: float) -> PolicyEncodings:
    text, classes, emb, feats = _world(seed, 240, feature_signal)
    return support_encodings(emb, {"own": feats}, classes, text, logit_scale=20.0, logit_bias=0.0)


def test_policies_for_auto_is_both() -> None:
    assert policies_for("auto") == ("crop", "letterbox")
    assert policies_for("letterbox") == ("letterbox",)


def test_noise_image_space_keeps_msp() -> None:
    chosen = select_for_label_set(
        {"crop": _support(0, feature_signal=0.0)},
        default_policy="crop",
        evidence="support-loo",
        score="trustvlm",
        visual_temperature=0.01,
        fallback_alpha=2.0,
    )
    assert chosen.alpha == 0.0 and chosen.selection is not None
    assert chosen.selection.chosen == "msp"
    assert chosen.evidence == "support-loo" and chosen.policy == "crop"
    assert {c.name for c in chosen.selection.candidates} >= {"msp", "own@α=2"}


def test_informative_image_space_is_fused() -> None:
    chosen = select_for_label_set(
        {"crop": _support(1, feature_signal=3.0)},
        default_policy="crop",
        evidence="support-loo",
        score="trustvlm",
        visual_temperature=0.01,
        fallback_alpha=2.0,
    )
    assert chosen.alpha > 0
    assert chosen.selection is not None and chosen.selection.fallback is None


def test_policy_switches_only_when_clearly_better() -> None:
    text, classes, emb, feats = _world(2, 300, feature_signal=3.0)
    _, _, emb_bad, feats_bad = _world(3, 300, feature_signal=0.0, text_signal=0.3)
    protos = l2_normalize(np.stack([feats[classes == c].mean(0) for c in range(C)]))
    has = np.ones(C, bool)

    def enc(e: np.ndarray, f: np.ndarray) -> PolicyEncodings:
        return calibration_encodings(
            e, {"own": f}, classes, text, {"own": (protos, has)}, logit_scale=20.0, logit_bias=0.0
        )

    good, bad = enc(emb, feats), enc(emb_bad, feats_bad)
    common = dict(evidence="calibration", score="trustvlm", visual_temperature=0.01, fallback_alpha=2.0)
    switched = select_for_label_set({"crop": bad, "letterbox": good}, default_policy="crop", **common)
    assert switched.policy == "letterbox"
    assert switched.candidates_compared == 2 * 6  # MSP + 5 α values, under each policy
    assert [p.policy for p in switched.policies] == ["crop", "letterbox"]
    kept = select_for_label_set({"crop": good, "letterbox": good}, default_policy="crop", **common)
    assert kept.policy == "crop"


def test_thin_evidence_falls_back_to_the_preset_alpha() -> None:
    text, classes, emb, feats = _world(4, 12, feature_signal=3.0, text_signal=5.0)
    enc = support_encodings(emb, {"own": feats}, classes, text, logit_scale=20.0, logit_bias=0.0)
    chosen = select_for_label_set(
        {"letterbox": enc},
        default_policy="letterbox",
        evidence="support-loo",
        score="trustvlm",
        visual_temperature=0.01,
        fallback_alpha=2.0,
    )
    assert chosen.alpha == 2.0 and chosen.selection is not None and chosen.selection.fallback


def test_an_informative_independent_space_is_chosen_over_a_noise_own_space() -> None:
    text, classes, emb, feats = _world(5, 240, feature_signal=3.0)
    noise = np.random.default_rng(50).normal(size=feats.shape)
    enc = support_encodings(
        emb, {"own": noise, "independent": feats}, classes, text, logit_scale=20.0, logit_bias=0.0
    )
    chosen = select_for_label_set(
        {"crop": enc}, default_policy="crop", evidence="support-loo", score="trustvlm",
        visual_temperature=0.01, fallback_alpha=2.0,
    )  # fmt: skip
    assert chosen.image_space == "independent" and chosen.alpha > 0
    assert chosen.image_spaces_compared == ["own", "independent"]
    assert chosen.candidates_compared == 1 + 2 * 5
    assert {c.space for c in chosen.selection.candidates if c.alpha > 0} == {"own", "independent"}  # type: ignore[union-attr]


def test_msp_is_served_in_the_own_space_and_the_anchor_is_kept_when_nothing_beats_it() -> None:
    from app.trust.selection import Candidate

    text, classes, emb, _ = _world(6, 240, feature_signal=0.0)
    rng = np.random.default_rng(60)
    noise = {"own": rng.normal(size=(classes.size, F)), "independent": rng.normal(size=(classes.size, F))}
    enc = support_encodings(emb, noise, classes, text, logit_scale=20.0, logit_bias=0.0)
    common = dict(default_policy="crop", evidence="support-loo", score="trustvlm", visual_temperature=0.01,
                  fallback_alpha=2.0)  # fmt: skip
    free = select_for_label_set({"crop": enc}, current_space="independent", **common)  # type: ignore[arg-type]
    assert free.alpha == 0.0 and free.image_space == "own"  # MSP needs no extra forward
    msp_anchor = select_for_label_set({"crop": enc}, anchor=Candidate(), **common)  # type: ignore[arg-type]
    assert msp_anchor.alpha == 0.0 and msp_anchor.selection.anchor == "msp"  # type: ignore[union-attr]


def test_one_support_image_per_class_keeps_the_default_policy() -> None:
    """Leave-one-out has no evidence when every class has one image: no crash, the default policy."""
    # one image per class, each predicted right: its own class has no leave-one-out prototype (undefined)
    text, classes, emb, feats = _world(7, C, feature_signal=3.0, text_signal=20.0)
    enc = support_encodings(emb, {"own": feats}, classes, text, logit_scale=20.0, logit_bias=0.0)
    chosen = select_for_label_set(
        {"crop": enc, "letterbox": enc}, default_policy="letterbox", evidence="support-loo",
        score="trustvlm", visual_temperature=0.01, fallback_alpha=2.0,
    )  # fmt: skip
    assert chosen.policy == "letterbox" and chosen.alpha == 2.0
