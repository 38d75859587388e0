"""Training loop for late-fusion classifiers: Adam (ACR reference defaults: lr 1e-4, weight decay 1e-4,
batch 16, no schedule), seeded and deterministic on CPU, best-validation-accuracy checkpointing, a tqdm
progress bar, training curves as PNG, and resumption from the last finished epoch.

Resumable state lives in ``work_dir``: ``last_state.safetensors`` (model, Adam moments, RNG states) and
``last_state.json`` (epoch, history, best epoch, optimiser hyper-parameters); ``best.safetensors`` holds the
best-validation weights. No pickles.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from app.multimodal.feature_dataset import MultimodalSplit
from app.multimodal.model import LateFusionClassifier
from app.multimodal.objective import LossConfig, training_loss
from app.multimodal.specs import FusionSpec

log = logging.getLogger(__name__)

STATE_WEIGHTS = "last_state.safetensors"
STATE_JSON = "last_state.json"
BEST_WEIGHTS = "best.safetensors"
CURVES_PNG = "curves.png"


class TrainConfig(BaseModel):
    """Optimiser and loop settings (defaults: the ACR reference recipe, except the epoch count)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    num_threads: int = Field(1, ge=1, description="torch CPU threads during training")
    eval_batch_size: int = Field(256, ge=1)


@dataclass
class TrainResult:
    """The model with the best-validation weights loaded, and the per-epoch history."""

    model: LateFusionClassifier
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float


@contextmanager
def deterministic_cpu(num_threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the duration of the block."""
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det)


def to_tensors(split: MultimodalSplit, index: np.ndarray | torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """The modality arrays of the selected samples as float32 tensors."""
    return {
        name: torch.from_numpy(np.ascontiguousarray(array[index])) for name, array in split.inputs.items()
    }


@torch.no_grad()
def predict_logits(model: LateFusionClassifier, split: MultimodalSplit, batch_size: int = 256) -> np.ndarray:
    """Fused-head logits over the C real classes (outlier column dropped), eval mode, (N, C) float64."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(split), batch_size):
        batch = to_tensors(split, slice(start, start + batch_size))
        chunks.append(model.class_logits(model(batch).fused_logits).double().numpy())
    model.train(was_training)
    return np.concatenate(chunks)


@torch.no_grad()
def predict_head_logits(
    model: LateFusionClassifier, split: MultimodalSplit, batch_size: int = 256
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class logits (outlier column dropped, eval mode, float64) of the fused head and of every unimodal
    head: ((N, C), {modality: (N, C)})."""
    was_training = model.training
    model.eval()
    fused: list[np.ndarray] = []
    unimodal: dict[str, list[np.ndarray]] = {name: [] for name in model.modality_names}
    for start in range(0, len(split), batch_size):
        out = model(to_tensors(split, slice(start, start + batch_size)))
        fused.append(model.class_logits(out.fused_logits).double().numpy())
        for name, logits in out.unimodal_logits.items():
            unimodal[name].append(model.class_logits(logits).double().numpy())
    model.train(was_training)
    return np.concatenate(fused), {name: np.concatenate(chunks) for name, chunks in unimodal.items()}


def _validation_metrics(
    model: LateFusionClassifier, val: MultimodalSplit, batch_size: int
) -> dict[str, float]:
    logits = predict_logits(model, val, batch_size)
    labels = torch.from_numpy(val.labels)
    loss = F.cross_entropy(torch.from_numpy(logits), labels).item()
    return {"val_loss": loss, "val_accuracy": float((logits.argmax(1) == val.labels).mean())}


def _save_state(
    work_dir: Path,
    model: LateFusionClassifier,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    meta: dict[str, Any],
) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for param_id, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{param_id}.{key}"] = value.detach().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    save_file(tensors, str(work_dir / STATE_WEIGHTS))
    meta = {**meta, "param_groups": opt_state["param_groups"]}
    (work_dir / STATE_JSON).write_text(json.dumps(meta, indent=1))


def _load_state(
    work_dir: Path,
    model: LateFusionClassifier,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, Any]:
    tensors = load_file(str(work_dir / STATE_WEIGHTS))
    meta = json.loads((work_dir / STATE_JSON).read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            opt_state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    return meta


def save_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss (train and validation) and validation accuracy per epoch, as a PNG."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))  # no pyplot: no global state, Agg canvas
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train total")
    ax_loss.plot(epochs, [h["train_cls"] for h in history], label="train CE (heads)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val CE (fused)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], color="C3")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def train_model(
    spec: FusionSpec,
    loss: LossConfig,
    train: MultimodalSplit,
    val: MultimodalSplit,
    config: TrainConfig,
    work_dir: Path,
    *,
    resume: bool = True,
    progress: bool = True,
    title: str = "",
) -> TrainResult:
    """Train with ``loss`` on ``train``, keep the weights with the best validation accuracy (the later
    epoch on ties, as the ACR reference's ``>=``), and return that model. Same seed and data →
    bit-identical weights on CPU."""
    if loss.needs_outlier_class and not spec.outlier_class:
        spec = spec.model_copy(update={"outlier_class": True})
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with deterministic_cpu(config.num_threads):
        torch.manual_seed(config.seed)
        model = LateFusionClassifier(spec)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)
        history: list[dict[str, float]] = []
        best_epoch, best_acc, start_epoch = 0, -1.0, 1
        # everything that must match for a resumed run to continue the same run (epochs may grow)
        recipe = {
            "spec": spec.model_dump(mode="json"),
            "loss": loss.model_dump(),
            "train": config.model_dump(exclude={"epochs", "num_threads", "eval_batch_size"}),
            "data": [len(train), len(val)],
        }
        if resume and (work_dir / STATE_JSON).is_file():
            saved = json.loads((work_dir / STATE_JSON).read_text()).get("recipe")
            if saved != json.loads(json.dumps(recipe)):
                raise ValueError(
                    f"{work_dir} holds a run with a different model, loss, optimiser or data; "
                    "start fresh (resume=False / --no-resume) or use another work dir"
                )
            meta = _load_state(work_dir, model, optimizer, generator)
            history, best_epoch, best_acc = meta["history"], meta["best_epoch"], meta["best_val_accuracy"]
            start_epoch = meta["epoch"] + 1
            log.info("resuming %s from epoch %d", work_dir, start_epoch)

        steps = math.ceil(len(train) / config.batch_size)
        bar = tqdm(
            total=(config.epochs - start_epoch + 1) * steps, desc=title or "train", disable=not progress
        )
        for epoch in range(start_epoch, config.epochs + 1):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            sums: dict[str, float] = {}
            for step in range(steps):
                index = order[step * config.batch_size : (step + 1) * config.batch_size].numpy()
                targets = torch.from_numpy(train.labels[index])
                result = training_loss(model, to_tensors(train, index), targets, loss, generator)
                optimizer.zero_grad(set_to_none=True)
                result.total.backward()
                optimizer.step()
                for key, value in result.terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{result.terms['total']:.3f}")
            record = {
                "epoch": float(epoch),
                "train_loss": sums["total"] / steps,
                "train_cls": sums["cls"] / steps,
            }
            record.update({f"train_{k}": v / steps for k, v in sums.items() if k not in {"total", "cls"}})
            record.update(_validation_metrics(model, val, config.eval_batch_size))
            history.append(record)
            if record["val_accuracy"] >= best_acc:  # ties: the later epoch (ACR reference)
                best_acc, best_epoch = record["val_accuracy"], epoch
                save_file(
                    {k: v.contiguous() for k, v in model.state_dict().items()}, str(work_dir / BEST_WEIGHTS)
                )
            meta = {
                "recipe": recipe,
                "epoch": epoch,
                "history": history,
                "best_epoch": best_epoch,
                "best_val_accuracy": best_acc,
            }
            _save_state(work_dir, model, optimizer, generator, meta)
        bar.close()

    save_curves(history, work_dir / CURVES_PNG, title)
    model.load_state_dict(load_file(str(work_dir / BEST_WEIGHTS)), strict=True)
    return TrainResult(model.eval(), history, best_epoch, best_acc)
