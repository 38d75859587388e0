"""Post-processing: embeddings -> logits -> predictions and every confidence score.

Shared by /v1/classify and by label-set calibration, so a threshold is calibrated on exactly the numbers
it is later applied to. Formulas live in ``app.trust.scores`` (TrustVLM: Dong et al., 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.trust.scores import (
    DEFAULT_ALPHA,
    DEFAULT_VISUAL_TEMPERATURE,
    PrototypeTopK,
    baseline_scores,
    trustvlm_scores,
)


@dataclass
class ScoredBatch:
    """Per-image results for a batch of B images over C classes."""

    logits: np.ndarray  # (B, C)
    probabilities: np.ndarray  # (B, C), softmax over classes
    predictions: np.ndarray  # (B,) argmax of the logits
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (B,), NaN where not computable
    refined_predictions: np.ndarray | None = None  # TrustVLM* argmax, when prototypes exist
    prototype_available: np.ndarray | None = None  # (B,) whether the predicted class has a prototype


def compute_logits(
    embeddings: np.ndarray, text_embeddings: np.ndarray, logit_scale: float, logit_bias: float = 0.0
) -> np.ndarray:
    """z_c = s·<f(x), h(t_c)> + b (b = 0 for CLIP, SigLIP's learnt bias otherwise)."""
    return logit_scale * embeddings.astype(np.float32) @ text_embeddings.astype(np.float32).T + logit_bias


def score_batch(
    embeddings: np.ndarray,
    aux_features: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    logit_scale: float,
    logit_bias: float = 0.0,
    prototypes: np.ndarray | None = None,
    has_prototype: np.ndarray | None = None,
    alpha: float = DEFAULT_ALPHA,
    visual_temperature: float = DEFAULT_VISUAL_TEMPERATURE,
    prototype_topk: PrototypeTopK | None = None,
) -> ScoredBatch:
    """All baseline scores, plus TrustVLM / TrustVLM* when at least one class has a prototype."""
    logits = compute_logits(embeddings, text_embeddings, logit_scale, logit_bias)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    predictions = logits.argmax(axis=1)
    scores = dict(baseline_scores(logits))
    batch = ScoredBatch(logits, probabilities, predictions, scores)
    if prototypes is not None and has_prototype is not None and bool(np.any(has_prototype)):
        result = trustvlm_scores(
            logits,
            aux_features,
            prototypes,
            has_prototype,
            alpha=alpha,
            visual_temperature=visual_temperature,
            prototype_topk=prototype_topk,
        )
        scores["s_it"] = result.s_it
        scores["s_ii"] = result.s_ii
        scores["trustvlm"] = result.trustvlm
        scores["trustvlm_star"] = result.trustvlm_star
        batch.refined_predictions = result.refined_prediction
        batch.prototype_available = has_prototype[predictions]
    return batch
