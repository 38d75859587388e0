"""``app.engine.scoring`` as a unit: embeddings → logits (s·cos + b) → softmax, argmax and every score, on
hand-made vectors whose answers can be worked out by hand (TrustVLM: Dong et al., 2025)."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.scoring import compute_logits, score_batch
from app.trust.scores import BASELINE_SCORES, PrototypeTopK, l2_normalize

TEXT = np.eye(3, 4, dtype=np.float32)  # class c's text embedding: the c-th unit vector


def _images() -> np.ndarray:
    return l2_normalize(np.array([[1.0, 0.2, 0.0, 0.0], [0.0, 0.1, 1.0, 0.3]])).astype(np.float32)


def test_logits_are_the_scaled_cosines_plus_the_bias() -> None:
    images = _images()
    logits = compute_logits(images, TEXT, logit_scale=10.0, logit_bias=-2.0)
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(logits, 10.0 * images[:, :3] - 2.0, rtol=1e-6)


def test_probabilities_predictions_and_baselines() -> None:
    scored = score_batch(_images(), _images(), TEXT, logit_scale=10.0)
    expected = np.exp(scored.logits) / np.exp(scored.logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scored.probabilities, expected, rtol=1e-6)
    assert scored.predictions.tolist() == [0, 2]
    assert list(scored.scores) == list(BASELINE_SCORES)  # no prototypes: no TrustVLM
    np.testing.assert_allclose(scored.scores["msp"], expected.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(scored.scores["max_logit"], scored.logits.max(axis=1), rtol=1e-6)
    assert scored.refined_predictions is None and scored.prototype_available is None


def test_large_logits_do_not_overflow() -> None:
    scored = score_batch(_images(), _images(), TEXT, logit_scale=1e4)
    assert np.isfinite(scored.probabilities).all()
    np.testing.assert_allclose(scored.probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_trustvlm_scores_appear_only_when_a_class_has_a_prototype() -> None:
    images = _images()
    prototypes = l2_normalize(np.eye(3, 4))
    none = score_batch(
        images, images, TEXT, logit_scale=10.0, prototypes=prototypes, has_prototype=np.zeros(3, bool)
    )
    assert "trustvlm" not in none.scores
    has = np.array([True, False, True])
    scored = score_batch(
        images, images, TEXT, logit_scale=10.0, prototypes=prototypes, has_prototype=has, alpha=2.0
    )
    assert {"s_it", "s_ii", "trustvlm", "trustvlm_star"} <= set(scored.scores)
    # S_ii = cosine of the image to its predicted class's prototype; TrustVLM = S_it + α·S_ii
    np.testing.assert_allclose(scored.scores["s_ii"], [images[0, 0], images[1, 2]], rtol=1e-6)
    np.testing.assert_allclose(
        scored.scores["trustvlm"], scored.scores["s_it"] + 2.0 * scored.scores["s_ii"], rtol=1e-6
    )
    assert scored.prototype_available is not None and scored.prototype_available.tolist() == [True, True]
    assert scored.refined_predictions is not None and scored.refined_predictions.tolist() == [0, 2]


def test_a_full_top_k_gives_the_exact_trustvlm_star() -> None:
    """With every class in the searched top-k the approximation is exact: classify's top-k path and the
    exact score agree."""
    images = _images()
    prototypes = l2_normalize(np.random.default_rng(0).standard_normal((3, 4)))
    has = np.ones(3, bool)
    sims = l2_normalize(images) @ prototypes.T
    order = np.argsort(-sims, axis=1)
    topk = PrototypeTopK(indices=order, sims=np.take_along_axis(sims, order, axis=1))
    kwargs = {"logit_scale": 10.0, "prototypes": prototypes, "has_prototype": has}
    exact = score_batch(images, images, TEXT, **kwargs)  # type: ignore[arg-type]
    approx = score_batch(images, images, TEXT, prototype_topk=topk, **kwargs)  # type: ignore[arg-type]
    np.testing.assert_allclose(approx.scores["trustvlm_star"], exact.scores["trustvlm_star"], rtol=1e-9)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        score_batch(_images(), _images()[:1], TEXT, logit_scale=1.0, prototypes=np.eye(3, 4),
                    has_prototype=np.ones(3, bool))  # fmt: skip
