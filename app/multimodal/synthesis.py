"""Outlier synthesis in embedding space.

- Multimodal Feature Swapping (MFS, ACR arXiv 2603.02200): once per step draw n ~ U{n_min..n_max} and
  offsets s_a ∈ [0, D_a − n], s_b ∈ [0, D_b − n]; every sample swaps the contiguous block [s_a, s_a+n) of
  modality a with [s_b, s_b+n) of modality b (both read from the originals). Soft-target weight λ = n/n_max
  with the *configured* n_max. Blocks never exceed the narrower embedding: when it is narrower than n_max,
  n is clipped to fit but λ keeps its denominator (so λ < 1 there, never silently re-normalised), unless
  the range is rescaled explicitly with ``scaled_n_range`` (``LossConfig.n_reference_dim``), which the
  checkpoint records.
- Feature Mixing (arXiv 2505.16985): swap N (not necessarily contiguous) dimensions between the two
  modalities, F̃_a[idx_a] = F_b[idx_b] and F̃_b[idx_b] = F_a[idx_a]; one index draw per step.
- ``NearestNeighbourMixer``: an NP-Mix-style synthesiser (per-class feature banks + k-NN searches every
  step) used only as the timing reference for the claimed speed-up of the two above.

With three or more modalities the papers are silent; we swap/mix one uniformly drawn pair per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def choose_pair(names: Sequence[str], generator: torch.Generator | None = None) -> tuple[str, str]:
    """The modality pair to swap/mix this step: the only pair for two modalities, else a uniform draw."""
    if len(names) < 2:
        raise ValueError("outlier synthesis needs at least two modalities")
    if len(names) == 2:
        return names[0], names[1]
    first, second = torch.randperm(len(names), generator=generator)[:2].tolist()
    return names[first], names[second]


@dataclass(frozen=True)
class SwapPlan:
    """One MFS draw: block length n, offsets in modality a and b, and the n_max that λ = n / n_max uses."""

    n: int
    start_a: int
    start_b: int
    n_max: int

    @property
    def outlier_weight(self) -> float:
        """λ = n / n_max, the soft target's mass on the outlier class."""
        return self.n / self.n_max


def effective_n_range(dim_a: int, dim_b: int, n_min: int, n_max: int) -> tuple[int, int]:
    """The block sizes that can be drawn: (n_min, n_max) clipped to the narrower embedding, so a block
    always fits in both modalities. λ is *not* taken from this range (see ``sample_swap_plan``)."""
    if n_min < 1 or n_max < n_min:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    limit = min(dim_a, dim_b)
    hi = min(n_max, limit)
    return min(n_min, hi), hi


def scaled_n_range(n_min: int, n_max: int, reference_dim: int, dim: int) -> tuple[int, int]:
    """An MFS range given at ``reference_dim`` (the paper: n ∈ [32, 256] at 2048-d) rescaled to an
    embedding of ``dim``: n' = max(1, round(n · dim / reference_dim)), so the swapped *share* of the
    embedding stays what it was in the reference setting."""
    if reference_dim < 1 or dim < 1:
        raise ValueError(f"dimensions must be >= 1, got reference_dim={reference_dim}, dim={dim}")
    if n_min < 1 or n_max < n_min:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    lo = max(1, round(n_min * dim / reference_dim))
    hi = max(lo, min(dim, round(n_max * dim / reference_dim)))
    return lo, hi


def sample_swap_plan(
    dim_a: int, dim_b: int, n_min: int, n_max: int, generator: torch.Generator | None = None
) -> SwapPlan:
    """Draw n ~ U{n_min..n_max} (clipped to min(D_a, D_b)) and uniform block offsets.

    λ = n / ``n_max`` with the configured ``n_max``, also when the narrower embedding clips the draw
    (the fix of a deviation: λ used to be n / min(n_max, D), which put full outlier mass on blocks that
    the configured range calls small)."""
    lo, hi = effective_n_range(dim_a, dim_b, n_min, n_max)
    n = _randint(lo, hi, generator)
    return SwapPlan(n, _randint(0, dim_a - n, generator), _randint(0, dim_b - n, generator), n_max)


def swap_blocks(
    emb_a: torch.Tensor, emb_b: torch.Tensor, plan: SwapPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """MFS: exchange emb_a[:, s_a:s_a+n] and emb_b[:, s_b:s_b+n]; the inputs are not modified."""
    a, b = emb_a.clone(), emb_b.clone()
    a[:, plan.start_a : plan.start_a + plan.n] = emb_b[:, plan.start_b : plan.start_b + plan.n]
    b[:, plan.start_b : plan.start_b + plan.n] = emb_a[:, plan.start_a : plan.start_a + plan.n]
    return a, b


@dataclass(frozen=True)
class MixPlan:
    """One Feature Mixing draw: the N indices exchanged in modality a and in modality b."""

    idx_a: torch.Tensor
    idx_b: torch.Tensor


def sample_mix_plan(
    dim_a: int,
    dim_b: int,
    n: int,
    contiguous: bool = False,
    generator: torch.Generator | None = None,
) -> MixPlan:
    """N indices per modality (N clipped to min(D_a, D_b)): random subsets, or contiguous blocks."""
    n = min(n, dim_a, dim_b)
    if n < 1:
        raise ValueError(f"the number of mixed dimensions must be >= 1, got {n}")
    if contiguous:
        sa, sb = _randint(0, dim_a - n, generator), _randint(0, dim_b - n, generator)
        return MixPlan(torch.arange(sa, sa + n), torch.arange(sb, sb + n))
    return MixPlan(
        torch.randperm(dim_a, generator=generator)[:n], torch.randperm(dim_b, generator=generator)[:n]
    )


def mix_features(
    emb_a: torch.Tensor, emb_b: torch.Tensor, plan: MixPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature Mixing: F̃_a[idx_a] = F_b[idx_b], F̃_b[idx_b] = F_a[idx_a]; the inputs are not modified."""
    a, b = emb_a.clone(), emb_b.clone()
    a[:, plan.idx_a] = emb_b[:, plan.idx_b]
    b[:, plan.idx_b] = emb_a[:, plan.idx_a]
    return a, b


class NearestNeighbourMixer:
    """NP-Mix-style outlier synthesis (timing reference): per-class feature banks and k-NN searches.

    Every step: (1) push the batch's fused features into per-class ring buffers; (2) compute class
    prototypes (bank means) and find, for each sample, its ``k`` nearest *other-class* prototypes with a
    FAISS flat index; (3) pick one of them at random and search that class's bank for the sample's nearest
    neighbour (another flat index); (4) the outlier is a random convex mix of the sample and that
    neighbour. The cost NP-Mix pays, and Feature Mixing claims to avoid, is steps (1)–(3).
    """

    def __init__(self, num_classes: int, dim: int, bank_size: int = 256, k: int = 3, seed: int = 0) -> None:
        self.num_classes, self.dim, self.bank_size, self.k = num_classes, dim, bank_size, k
        self.banks = np.zeros((num_classes, bank_size, dim), dtype=np.float32)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def update(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Insert features into their class's ring buffer."""
        for feat, label in zip(features, labels):
            self.banks[label, self.counts[label] % self.bank_size] = feat
            self.counts[label] += 1

    def synthesise(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Update the banks with the batch and return one outlier per sample (B, dim)."""
        x = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
        y = labels.cpu().numpy()
        self.update(x, y)
        filled = np.minimum(self.counts, self.bank_size)
        present = np.flatnonzero(filled > 0)
        prototypes = np.stack([self.banks[c, : filled[c]].mean(axis=0) for c in present]).astype(np.float32)
        proto_index = faiss.IndexFlatL2(self.dim)
        proto_index.add(prototypes)
        _, nearest = proto_index.search(x, min(self.k + 1, len(present)))
        outliers = np.empty_like(x)
        for i in range(len(x)):
            candidates = [present[j] for j in nearest[i] if j >= 0 and present[j] != y[i]] or [y[i]]
            target = candidates[self.rng.integers(len(candidates))]
            bank_index = faiss.IndexFlatL2(self.dim)
            bank_index.add(np.ascontiguousarray(self.banks[target, : filled[target]]))
            _, nn_idx = bank_index.search(x[i : i + 1], 1)
            alpha = self.rng.uniform()
            outliers[i] = alpha * x[i] + (1 - alpha) * self.banks[target, nn_idx[0, 0]]
        return torch.from_numpy(outliers)
