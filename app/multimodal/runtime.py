"""Multimodal checkpoints on the runtime layer: the fused classifier (every modality's encoder, the fused
head, the outlier column dropped) is one tower, exported and checked like the VLM towers, so serving a
checkpoint on ONNX Runtime / OpenVINO needs no torch. Training and evaluation keep the torch model
(:func:`app.multimodal.checkpoint.load_checkpoint`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.multimodal.checkpoint import WEIGHTS_FILE, CheckpointConfig, CheckpointError, read_config
from app.runtime.executors import TowerExecutor
from app.runtime.source import TowerSource
from app.runtime.towers import RuntimeContext
from app.runtime.types import TensorSpec, TowerReport, TowerSpec

FUSION_TOWER = "fusion"


@dataclass
class ServedCheckpoint:
    """A checkpoint's config and the executor of its fused classifier (class logits)."""

    config: CheckpointConfig
    path: Path
    executor: TowerExecutor
    report: TowerReport

    def class_logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Inputs per modality (stacked, batch first) -> (B, C) logits of the C real classes."""
        [logits] = self.executor.run(batch)
        return logits


def _fusion_module(folder: Path) -> Any:
    from app.multimodal.checkpoint import load_checkpoint
    from app.runtime.torch_executor import CallableTower

    model = load_checkpoint(folder).model
    names = model.modality_names

    def forward(m: Any, *inputs: Any) -> Any:
        return m.class_logits(m(dict(zip(names, inputs, strict=True))).fused_logits)

    return CallableTower(model, forward)


def fusion_tower_source(folder: Path, config: CheckpointConfig, context: RuntimeContext) -> TowerSource:
    """The fused classifier as a tower: one float32 input per modality, class logits out."""
    modalities = config.fusion.modalities
    spec = TowerSpec(
        tuple(TensorSpec(m.name, "float32", (None, *m.input_shape)) for m in modalities),
        ("logits",),
        input_policy="multimodal",
    )
    weights = context.cache.file_checksum(folder / WEIGHTS_FILE)
    architecture = hashlib.sha256(config.fusion.model_dump_json().encode()).hexdigest()

    def probe(n: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {m.name: rng.standard_normal((n, *m.input_shape)).astype(np.float32) for m in modalities}

    return TowerSource(
        model=context.model,
        tower=FUSION_TOWER,
        spec=spec,
        identity={"multimodal": config.name, "weights": weights, "architecture": architecture},
        build_module=lambda: _fusion_module(folder),
        probe_inputs=probe,
    )


def load_served_checkpoint(folder: Path, context: RuntimeContext) -> ServedCheckpoint:
    """Read ``config.json`` and put the fused classifier on the context's runtime (exported on first use)."""
    folder = Path(folder)
    config = read_config(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")
    executor = context.tower(fusion_tower_source(folder, config, context))
    return ServedCheckpoint(config, folder, executor, context.reports[FUSION_TOWER])
