"""What a backend hands the runtime layer for one tower: signature, weights identity, a lazy torch-module
builder, probe and calibration inputs (:class:`TowerSource`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.machine import torch_installed
from app.runtime.types import Precision, RuntimeUnavailableError, TowerSpec


@dataclass
class TowerSource:
    """Everything the runtime layer needs to know about one tower, described by its backend.

    ``identity``: what makes this tower's weights and graph (weights checksum, architecture, arguments that
    change the graph); computed without torch. ``build_module``: the fp32 CPU torch module whose
    ``forward(*inputs in spec order)`` returns the spec's outputs (called at most once, only to export or
    for the torch runtime). ``probe_inputs(n)``: deterministic inputs for n items. ``precisions``: what the
    tower may run at (others fall back to fp32, e.g. text towers). ``calibration_inputs``: image files ->
    inputs, for int8.
    """

    model: str
    tower: str
    spec: TowerSpec
    identity: dict[str, Any]
    build_module: Callable[[], Any]
    probe_inputs: Callable[[int], dict[str, np.ndarray]]
    precisions: tuple[Precision, ...] = ("fp32",)
    calibration_inputs: Callable[[Sequence[Path]], list[dict[str, np.ndarray]]] | None = None
    transformer: bool = False
    _module: Any = field(default=None, init=False, repr=False)

    def module(self) -> Any:
        if self._module is None:
            if not torch_installed():
                raise RuntimeUnavailableError(
                    f"{self.model}/{self.tower}: the export cache has no usable entry and torch (needed to "
                    "export) is not installed; build the cache with `trustserve models export` first"
                )
            self._module = self.build_module()
        return self._module

    def release(self) -> None:
        self._module = None
