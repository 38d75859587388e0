"""Confidence scores for a zero-shot prediction: logit baselines, TrustVLM and TrustVLM*.

Every score is "higher = more trustworthy" (metrics.md). Numpy in, numpy out, vectorised over the batch.

Baselines (all on the same logits z, p = softmax(z / T)):
- MSP (Hendrycks & Gimpel, 2017): max_c p_c.
- MaxLogit (Hendrycks et al., 2022): max_c z_c.
- Energy (Liu et al., 2020): T · logsumexp(z / T) (the negative free energy).
- Negative entropy: Σ_c p_c log p_c.
- DOCTOR-α (Granese et al., 2021): Σ_c p_c² (one minus the Gini impurity). DOCTOR-β ranks like MSP.
- Softmax variance (used by ACR): the variance of p over classes. It equals Σp²/C − 1/C², so it ranks
  samples exactly like DOCTOR-α (identical AURC/AUROC); it is kept for the ACR paper's tables.

TrustVLM (Dong et al., 2025, arXiv 2505.23745), see ``shared/specs/trustvlm.md``:
- S_it = max_c p_c; S_ii = <normalize(g(x)), P_ŷ>, ŷ = argmax z; κ = S_it + α · S_ii.
- TrustVLM*: q = softmax(z) + α · softmax_c(<ĝ(x), P_c> / T_v); ŷ* = argmax q;
  κ* = max q + α · <ĝ(x), P_ŷ*> (α appears twice, as in the reference code).

To add a baseline score: write ``def my_score(logits, temperature) -> np.ndarray`` and add one entry to
``BASELINE_SCORES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy.special import logsumexp, softmax, xlogy

LogitScore = Callable[[np.ndarray, float], np.ndarray]

# The reference defaults (shared/specs/trustvlm.md): presets, label sets and the scores below start here.
DEFAULT_ALPHA = 1.0
DEFAULT_VISUAL_TEMPERATURE = 0.01


def _as_logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must have shape (B, C) with C >= 1, got {z.shape}")
    return z


def _probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return softmax(_as_logits(logits) / temperature, axis=1)


def msp(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    return _probs(logits, temperature).max(axis=1)


def max_logit(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Largest logit (Hendrycks et al., 2022); the temperature does not change the ranking and is ignored."""
    return _as_logits(logits).max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy T · logsumexp(z / T) (Liu et al., 2020)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature * logsumexp(_as_logits(logits) / temperature, axis=1)


def neg_entropy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative Shannon entropy Σ p log p of the softmax (0 log 0 = 0)."""
    p = _probs(logits, temperature)
    return xlogy(p, p).sum(axis=1)


def doctor_alpha(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """DOCTOR-α confidence Σ p² (Granese et al., 2021): one minus the Gini impurity."""
    return np.square(_probs(logits, temperature)).sum(axis=1)


def softmax_variance(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Variance of the softmax vector over classes (peaked = high); a baseline in the ACR paper."""
    return _probs(logits, temperature).var(axis=1)


BASELINE_SCORES: dict[str, LogitScore] = {
    "msp": msp,
    "max_logit": max_logit,
    "energy": energy,
    "neg_entropy": neg_entropy,
    "doctor_alpha": doctor_alpha,
    "softmax_variance": softmax_variance,
}
TRUSTVLM_SCORE_NAMES: tuple[str, ...] = ("s_it", "s_ii", "trustvlm", "trustvlm_star")
SCORE_NAMES: tuple[str, ...] = (*BASELINE_SCORES, *TRUSTVLM_SCORE_NAMES)
# Scores judged against TrustVLM*'s refined prediction; every other score judges argmax z.
REFINED_PREDICTION_SCORES: frozenset[str] = frozenset({"trustvlm_star"})
# The scores a label set's reject rule may threshold ("trust score" of a label set).
TrustScoreName = Literal["trustvlm", "trustvlm_star", "msp"]
TRUST_SCORE_NAMES: tuple[TrustScoreName, ...] = get_args(TrustScoreName)


def judges_refined_prediction(score: str) -> bool:
    """True when ``score`` judges TrustVLM*'s refined prediction ŷ* rather than argmax z."""
    return score in REFINED_PREDICTION_SCORES


def baseline_scores(logits: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Every registered logit baseline, keyed by name (``BASELINE_SCORES`` order)."""
    return {name: fn(logits, temperature) for name, fn in BASELINE_SCORES.items()}


@dataclass(frozen=True)
class PrototypeTopK:
    """Result of a nearest-prototype search: for each image, the k best classes and their cosines.

    indices: (B, k) int class indices, sims: (B, k) cosine similarities <ĝ(x), P_c>. Used to compute
    TrustVLM*'s visual distribution for large label sets without a (B, C) similarity matrix.
    """

    indices: np.ndarray
    sims: np.ndarray


@dataclass(frozen=True)
class TrustVLMResult:
    """TrustVLM scores for a batch; NaN where the class being checked has no prototype.

    s_it: MSP of softmax(z / T). s_ii: cosine of the image to the prototype of ŷ = argmax z.
    trustvlm: s_it + α · s_ii (prediction ŷ). trustvlm_star: max q + α · <ĝ, P_ŷ*>, judged against
    refined_prediction ŷ* = argmax q. prediction: ŷ. When no class has a prototype, ŷ* = ŷ and the
    starred score is NaN.
    """

    s_it: np.ndarray
    s_ii: np.ndarray
    trustvlm: np.ndarray
    trustvlm_star: np.ndarray
    prediction: np.ndarray
    refined_prediction: np.ndarray

    def scores(self) -> dict[str, np.ndarray]:
        """The four scores keyed by ``TRUSTVLM_SCORE_NAMES``."""
        return {name: getattr(self, name) for name in TRUSTVLM_SCORE_NAMES}


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def visual_probs_from_topk(topk: PrototypeTopK, num_classes: int, visual_temperature: float) -> np.ndarray:
    """Dense (B, C) softmax over the k searched prototypes only (zero elsewhere).

    Approximation: the exact p^v also puts mass on the C − k classes outside the top k; each has
    cosine ≤ the k-th best s_k, so the neglected mass is at most (C − k) · exp((s_k − s_1) / T_v) relative
    to the top class. With T_v = 0.01 a cosine gap of 0.1 already makes that < (C − k) · 4.5e-5.
    """
    idx = np.asarray(topk.indices, dtype=np.int64)
    sims = np.asarray(topk.sims, dtype=np.float64)
    if idx.shape != sims.shape or idx.ndim != 2:
        raise ValueError(f"top-k indices {idx.shape} and sims {sims.shape} must be equal (B, k) arrays")
    valid = idx >= 0  # FAISS pads missing neighbours with -1
    logits = np.where(valid, sims / visual_temperature, -np.inf)
    probs_k = softmax(logits, axis=1)
    dense = np.zeros((idx.shape[0], num_classes))
    rows = np.repeat(np.arange(idx.shape[0])[:, None], idx.shape[1], axis=1)
    np.add.at(dense, (rows[valid], idx[valid]), probs_k[valid])
    return np.nan_to_num(dense)


def trustvlm_scores(
    logits: np.ndarray,
    image_features: np.ndarray,
    prototypes: np.ndarray,
    has_prototype: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    visual_temperature: float = DEFAULT_VISUAL_TEMPERATURE,
    *,
    temperature: float = 1.0,
    prototype_topk: PrototypeTopK | None = None,
) -> TrustVLMResult:
    """TrustVLM and TrustVLM* (Dong et al., 2025) for a batch.

    logits (B, C) = s · <f(x), h(t_c)>; image_features (B, F) raw g(x) (normalised here);
    prototypes (C, F) L2-normalised (rows of classes without prototype are ignored);
    has_prototype (C,) bool. ``temperature`` applies to S_it only (p^t of TrustVLM* uses T = 1, as in
    the reference). With ``prototype_topk`` the visual softmax of TrustVLM* uses only the searched
    prototypes (see ``visual_probs_from_topk``); S_ii and the starred cosine are always exact.
    """
    z = _as_logits(logits)
    n, c = z.shape
    feats = l2_normalize(image_features)
    protos = np.asarray(prototypes, dtype=np.float64)
    mask = np.asarray(has_prototype, dtype=bool)
    if feats.shape[0] != n or protos.shape != (c, feats.shape[1]) or mask.shape != (c,):
        raise ValueError(
            f"shape mismatch: logits {z.shape}, features {feats.shape}, prototypes {protos.shape}, "
            f"has_prototype {mask.shape}"
        )
    if visual_temperature <= 0:
        raise ValueError(f"visual_temperature must be > 0, got {visual_temperature}")

    rows = np.arange(n)
    prediction = z.argmax(axis=1)

    def cosine_to(classes: np.ndarray) -> np.ndarray:
        sims = np.einsum("bf,bf->b", feats, protos[classes])
        return np.where(mask[classes], sims, np.nan)

    s_it = msp(z, temperature)
    s_ii = cosine_to(prediction)
    trustvlm = s_it + alpha * s_ii

    if not mask.any():
        return TrustVLMResult(s_it, s_ii, trustvlm, np.full(n, np.nan), prediction, prediction.copy())
    if prototype_topk is not None:
        p_visual = visual_probs_from_topk(prototype_topk, c, visual_temperature)
    else:
        visual_logits = np.where(mask[None, :], feats @ protos.T / visual_temperature, -np.inf)
        p_visual = softmax(visual_logits, axis=1)
    q = softmax(z, axis=1) + alpha * p_visual
    refined = q.argmax(axis=1)
    trustvlm_star = q[rows, refined] + alpha * cosine_to(refined)
    return TrustVLMResult(s_it, s_ii, trustvlm, trustvlm_star, prediction, refined)
