"""Training loop: determinism, best-validation selection, resumption, curves."""

from pathlib import Path

import pytest
import torch
from mm_helpers import make_feature_dataset

from app.multimodal.feature_dataset import load_split, read_info
from app.multimodal.objective import LossConfig
from app.multimodal.pipeline import ArchitectureOptions, default_fusion_spec
from app.multimodal.train import BEST_WEIGHTS, CURVES_PNG, TrainConfig, predict_logits, train_model


def _setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = make_feature_dataset(tmp_path / "data")
    info = read_info(root)
    spec = default_fusion_spec(info, ArchitectureOptions(feature_hidden_dims=(8,), feature_embed_dim=8), True)
    return spec, load_split(root, "train", info), load_split(root, "val", info)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_is_deterministic_and_learns(tmp_path: Path) -> None:
    spec, train, val = _setup(tmp_path)
    config = TrainConfig(epochs=4, batch_size=8, lr=1e-2, seed=3)
    loss = LossConfig.variant("acr", n_min=2, n_max=6)
    first = train_model(spec, loss, train, val, config, tmp_path / "a", progress=False)
    second = train_model(spec, loss, train, val, config, tmp_path / "b", progress=False)
    w1, w2 = _weights(first.model), _weights(second.model)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert first.best_val_accuracy > 0.6  # three well-separated classes: chance is 1/3
    accs = [h["val_accuracy"] for h in first.history]
    assert first.best_val_accuracy == max(accs) and first.best_epoch == len(accs) - accs[::-1].index(
        max(accs)
    )
    assert {"train_acl", "train_mfs"} <= set(first.history[0])
    assert (tmp_path / "a" / CURVES_PNG).stat().st_size > 1000
    assert (tmp_path / "a" / BEST_WEIGHTS).is_file()
    logits = predict_logits(first.model, val)
    assert logits.shape == (len(val), 3)  # outlier column dropped


def test_ties_in_validation_accuracy_keep_the_later_epoch(tmp_path: Path) -> None:
    """As the ACR reference (``>=``): with a learning rate too small to move any prediction, every epoch
    ties, and the last one is kept."""
    spec, train, val = _setup(tmp_path)
    config = TrainConfig(epochs=3, batch_size=8, lr=1e-12, seed=0)
    result = train_model(
        spec, LossConfig.variant("baseline"), train, val, config, tmp_path / "t", progress=False
    )
    accs = [h["val_accuracy"] for h in result.history]
    assert len(set(accs)) == 1 and result.best_epoch == 3


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    spec, train, val = _setup(tmp_path)
    loss = LossConfig.variant("mfs", n_min=2, n_max=6)
    config4 = TrainConfig(epochs=4, batch_size=8, lr=1e-2)
    straight = train_model(spec, loss, train, val, config4, tmp_path / "s", progress=False)
    work = tmp_path / "r"
    train_model(spec, loss, train, val, TrainConfig(epochs=2, batch_size=8, lr=1e-2), work, progress=False)
    resumed = train_model(
        spec, loss, train, val, TrainConfig(epochs=4, batch_size=8, lr=1e-2), work, progress=False
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == straight.history
    w1, w2 = _weights(straight.model), _weights(resumed.model)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_resume_refuses_a_different_recipe(tmp_path: Path) -> None:
    spec, train, val = _setup(tmp_path)
    loss = LossConfig.variant("baseline")
    train_model(spec, loss, train, val, TrainConfig(epochs=1, batch_size=8), tmp_path / "w", progress=False)
    with pytest.raises(ValueError, match="different model, loss"):
        train_model(spec, loss, train, val, TrainConfig(epochs=2, lr=0.5), tmp_path / "w", progress=False)
    fresh = train_model(
        spec, loss, train, val, TrainConfig(epochs=1, lr=0.5), tmp_path / "w", resume=False, progress=False
    )
    assert len(fresh.history) == 1
