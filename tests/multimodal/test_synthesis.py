"""MFS block swaps, Feature Mixing and the NP-Mix-style timing reference."""

import numpy as np
import pytest
import torch

from app.multimodal.synthesis import (
    MixPlan,
    NearestNeighbourMixer,
    SwapPlan,
    choose_pair,
    effective_n_range,
    mix_features,
    sample_mix_plan,
    sample_swap_plan,
    scaled_n_range,
    swap_blocks,
)


def test_swap_blocks_hand_case() -> None:
    a = torch.arange(8.0)[None]
    b = 100 + torch.arange(6.0)[None]
    new_a, new_b = swap_blocks(a, b, SwapPlan(n=2, start_a=1, start_b=3, n_max=4))
    assert new_a.tolist() == [[0, 103, 104, 3, 4, 5, 6, 7]]
    assert new_b.tolist() == [[100, 101, 102, 1, 2, 105]]
    assert a.tolist() == [list(range(8))]  # originals untouched
    assert SwapPlan(n=2, start_a=1, start_b=3, n_max=4).outlier_weight == 0.5


def test_sample_swap_plan_stays_in_range_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    plans = [sample_swap_plan(10, 6, 2, 256, g) for _ in range(200)]
    assert all(2 <= p.n <= 6 and p.n_max == 256 for p in plans)  # clipped blocks, λ keeps n_max
    assert all(0 <= p.start_a <= 10 - p.n and 0 <= p.start_b <= 6 - p.n for p in plans)
    assert {p.n for p in plans} == {2, 3, 4, 5, 6}
    again = [sample_swap_plan(10, 6, 2, 256, torch.Generator().manual_seed(0)) for _ in range(1)]
    assert again[0] == plans[0]


def test_effective_n_range_validates() -> None:
    assert effective_n_range(512, 2304, 32, 256) == (32, 256)
    assert effective_n_range(16, 64, 32, 256) == (16, 16)
    with pytest.raises(ValueError):
        effective_n_range(8, 8, 4, 2)


def test_lambda_keeps_the_configured_n_max_when_the_embedding_is_narrower() -> None:
    """Deviation fix: a 16-d embedding with n ∈ [32, 256] swaps the whole 16 dims, λ = 16/256, not 1."""
    plan = sample_swap_plan(16, 64, 32, 256, torch.Generator().manual_seed(0))
    assert plan.n == 16 and plan.outlier_weight == pytest.approx(16 / 256)


def test_scaled_n_range_keeps_the_swapped_share() -> None:
    assert scaled_n_range(32, 256, 2048, 2048) == (32, 256)
    assert scaled_n_range(32, 256, 2048, 256) == (4, 32)  # 1/64 .. 1/8 of the embedding
    assert scaled_n_range(32, 256, 2048, 64) == (1, 8)
    assert scaled_n_range(32, 256, 2048, 4) == (1, 1)
    with pytest.raises(ValueError):
        scaled_n_range(4, 2, 2048, 64)


def test_mix_features_hand_case() -> None:
    a = torch.arange(5.0)[None]
    b = 10 + torch.arange(4.0)[None]
    new_a, new_b = mix_features(a, b, MixPlan(torch.tensor([0, 3]), torch.tensor([2, 1])))
    assert new_a.tolist() == [[12, 1, 2, 11, 4]]
    assert new_b.tolist() == [[10, 3, 0, 13]]


def test_sample_mix_plan_contiguous_and_random() -> None:
    g = torch.Generator().manual_seed(1)
    plan = sample_mix_plan(16, 8, 4, contiguous=True, generator=g)
    assert (plan.idx_a.diff() == 1).all() and (plan.idx_b.diff() == 1).all() and len(plan.idx_a) == 4
    plan = sample_mix_plan(16, 8, 20, contiguous=False, generator=g)  # clipped to 8
    assert len(plan.idx_a) == 8 and len(set(plan.idx_a.tolist())) == 8


def test_choose_pair() -> None:
    assert choose_pair(["image", "audio"]) == ("image", "audio")
    g = torch.Generator().manual_seed(0)
    pairs = {choose_pair(["a", "b", "c"], g) for _ in range(100)}
    assert all(x != y for x, y in pairs) and len(pairs) > 1
    with pytest.raises(ValueError):
        choose_pair(["a"])


def test_nearest_neighbour_mixer_mixes_with_another_class() -> None:
    mixer = NearestNeighbourMixer(num_classes=3, dim=2, bank_size=4, k=1, seed=0)
    feats = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.tensor([0, 1, 2])
    out = mixer.synthesise(feats, labels)
    assert out.shape == (3, 2)
    # sample 0's nearest other class is 1 or 2: the outlier lies on a segment from the origin to it
    x = out[0].numpy()
    assert np.isclose(x.min(), 0.0) and 0.0 <= x.max() <= 10.0
