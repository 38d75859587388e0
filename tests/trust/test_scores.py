"""Tests for app.trust.scores: baselines, TrustVLM, TrustVLM* (trustvlm.md)."""

import numpy as np
import pytest
from scipy.special import softmax

from app.trust.scores import (
    BASELINE_SCORES,
    SCORE_NAMES,
    PrototypeTopK,
    baseline_scores,
    l2_normalize,
    trustvlm_scores,
    visual_probs_from_topk,
)


@pytest.fixture
def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    b, c, f = 8, 5, 6
    return {
        "logits": rng.normal(size=(b, c)) * 3,
        "features": rng.normal(size=(b, f)) * 4,  # raw: not normalised
        "prototypes": l2_normalize(rng.normal(size=(c, f))),
        "has_prototype": np.ones(c, dtype=bool),
    }


def test_baselines_match_hand_computation() -> None:
    z = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = softmax(z, axis=1)
    out = baseline_scores(z)
    assert set(out) == set(BASELINE_SCORES)
    np.testing.assert_allclose(out["msp"], p.max(1))
    np.testing.assert_allclose(out["max_logit"], [2.0, 0.0])
    np.testing.assert_allclose(out["energy"], np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(out["neg_entropy"], (p * np.log(p)).sum(1))
    np.testing.assert_allclose(out["neg_entropy"][1], -np.log(3))
    np.testing.assert_allclose(out["doctor_alpha"], (p**2).sum(1))
    np.testing.assert_allclose(out["softmax_variance"], p.var(1))


def test_temperature_and_extreme_logits() -> None:
    z = np.array([[1000.0, 0.0, -1000.0]])
    out = baseline_scores(z, temperature=2.0)
    assert all(np.isfinite(v).all() for v in out.values())
    np.testing.assert_allclose(out["energy"], [1000.0])
    np.testing.assert_allclose(out["neg_entropy"], [0.0], atol=1e-12)
    with pytest.raises(ValueError):
        baseline_scores(z, temperature=0.0)
    with pytest.raises(ValueError):
        baseline_scores(np.zeros(3))


def test_scores_are_higher_for_more_peaked_logits() -> None:
    z = np.array([[5.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    for name, score in baseline_scores(z).items():
        assert score[0] > score[1], name


def test_trustvlm_matches_definition(batch: dict[str, np.ndarray]) -> None:
    r = trustvlm_scores(
        batch["logits"], batch["features"], batch["prototypes"], batch["has_prototype"], 0.5, 0.05
    )
    y = batch["logits"].argmax(1)
    g = l2_normalize(batch["features"])
    sims = g @ batch["prototypes"].T
    rows = np.arange(len(y))
    p = softmax(batch["logits"], axis=1)
    np.testing.assert_allclose(r.s_it, p.max(1))
    np.testing.assert_allclose(r.s_ii, sims[rows, y])
    np.testing.assert_allclose(r.trustvlm, p.max(1) + 0.5 * sims[rows, y])
    q = p + 0.5 * softmax(sims / 0.05, axis=1)
    ystar = q.argmax(1)
    np.testing.assert_array_equal(r.refined_prediction, ystar)
    np.testing.assert_allclose(r.trustvlm_star, q.max(1) + 0.5 * sims[rows, ystar])
    np.testing.assert_array_equal(r.prediction, y)
    assert set(r.scores()) <= set(SCORE_NAMES)


def test_alpha_zero_is_msp_and_keeps_prediction(batch: dict[str, np.ndarray]) -> None:
    r = trustvlm_scores(
        batch["logits"], batch["features"], batch["prototypes"], batch["has_prototype"], alpha=0.0
    )
    np.testing.assert_allclose(r.trustvlm, baseline_scores(batch["logits"])["msp"])
    np.testing.assert_array_equal(r.refined_prediction, batch["logits"].argmax(1))


def test_visual_evidence_can_flip_the_refined_prediction() -> None:
    logits = np.array([[1.0, 0.9]])  # text slightly prefers class 0
    protos = np.eye(2)
    feats = np.array([[0.0, 3.0]])  # the image sits on class 1's prototype
    r = trustvlm_scores(logits, feats, protos, np.array([True, True]))
    assert r.prediction[0] == 0 and r.refined_prediction[0] == 1
    assert r.s_ii[0] == pytest.approx(0.0)
    assert r.trustvlm_star[0] > r.trustvlm[0]


def test_missing_prototypes_give_nan_not_a_fallback(batch: dict[str, np.ndarray]) -> None:
    mask = batch["has_prototype"].copy()
    y = batch["logits"].argmax(1)
    mask[y[0]] = False
    r = trustvlm_scores(batch["logits"], batch["features"], batch["prototypes"], mask)
    assert np.isnan(r.s_ii[y == y[0]]).all() and np.isfinite(r.s_ii[y != y[0]]).all()
    refined_without = ~mask[r.refined_prediction]
    assert np.isnan(r.trustvlm_star[refined_without]).all()
    assert np.isfinite(r.trustvlm_star[~refined_without]).all()
    none = trustvlm_scores(batch["logits"], batch["features"], batch["prototypes"], np.zeros(5, dtype=bool))
    assert np.isnan(none.s_ii).all() and np.isnan(none.trustvlm_star).all()
    np.testing.assert_array_equal(none.refined_prediction, y)


def test_shape_errors(batch: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError):
        trustvlm_scores(
            batch["logits"], batch["features"][:, :3], batch["prototypes"], batch["has_prototype"]
        )
    with pytest.raises(ValueError):
        trustvlm_scores(
            batch["logits"],
            batch["features"],
            batch["prototypes"],
            batch["has_prototype"],
            visual_temperature=0,
        )


def test_topk_visual_probs_approximate_the_full_softmax(batch: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    c, f = 200, 16
    protos = l2_normalize(rng.normal(size=(c, f)))
    feats = protos[:4] + 0.05 * rng.normal(size=(4, f))
    logits = rng.normal(size=(4, c))
    sims = l2_normalize(feats) @ protos.T
    order = np.argsort(-sims, axis=1)[:, :10]
    topk = PrototypeTopK(order, np.take_along_axis(sims, order, 1))
    dense = visual_probs_from_topk(topk, c, 0.01)
    np.testing.assert_allclose(dense, softmax(sims / 0.01, axis=1), atol=1e-6)
    mask = np.ones(c, dtype=bool)
    exact = trustvlm_scores(logits, feats, protos, mask)
    approx = trustvlm_scores(logits, feats, protos, mask, prototype_topk=topk)
    np.testing.assert_array_equal(exact.refined_prediction, approx.refined_prediction)
    np.testing.assert_allclose(exact.trustvlm_star, approx.trustvlm_star, atol=1e-6)


def test_topk_padding_is_ignored() -> None:
    topk = PrototypeTopK(np.array([[2, -1]]), np.array([[0.5, 0.0]]))
    np.testing.assert_allclose(visual_probs_from_topk(topk, 3, 0.01), [[0.0, 0.0, 1.0]])
