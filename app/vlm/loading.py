"""Load a preset's models on the runtime layer: the settings (and the preset's own ``runtime`` /
``precision``) become a :class:`~app.runtime.types.RuntimeRequest`; the backend and its auxiliary encoder
describe their towers; :class:`~app.runtime.towers.RuntimeContext` picks, exports and checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.config import Settings
from app.runtime.cache import ExportCache
from app.runtime.towers import RuntimeContext
from app.runtime.types import RuntimeRequest, TowerReport
from app.vlm.aux_base import SHARED_TOWER, AuxImageEncoder
from app.vlm.base import VLMBackend, create_backend
from app.vlm.presets import ModelPreset

log = logging.getLogger(__name__)


def runtime_request(settings: Settings, preset: ModelPreset | None = None) -> RuntimeRequest:
    """Settings set explicitly (environment, config file, arguments) win over the preset's ``runtime`` /
    ``precision``, which win over the defaults."""
    explicit = settings.model_fields_set
    runtime, precision = settings.runtime, settings.precision
    if preset is not None and preset.runtime is not None and "runtime" not in explicit:
        runtime = preset.runtime
    if preset is not None and preset.precision is not None and "precision" not in explicit:
        precision = preset.precision
    return RuntimeRequest(
        runtime=runtime,
        precision=precision,
        device=settings.device,
        dtype=settings.dtype,
        torch_compile=settings.torch_compile,
        threads=settings.runtime_threads,
        calibration_dir=str(settings.int8_calibration_dir) if settings.int8_calibration_dir else None,
    )


@dataclass
class LoadedModels:
    backend: VLMBackend
    aux_encoder: AuxImageEncoder | None
    request: RuntimeRequest
    towers: dict[str, TowerReport]
    device: str


def load_models(preset: ModelPreset, settings: Settings) -> LoadedModels:
    """Build the preset's backend and auxiliary encoder (blocking; exports on first use)."""
    request = runtime_request(settings, preset)
    context = RuntimeContext(request, ExportCache(settings.export_cache_dir), preset.name)
    try:
        backend = create_backend(preset.backend, context, **preset.args)
        aux = None
        if preset.aux_encoder.kind != SHARED_TOWER:  # a separate image-space model
            from app.vlm.aux.factory import create_aux_encoder

            aux = create_aux_encoder(preset.aux_encoder, context)
    finally:
        context.close()
    return LoadedModels(backend, aux, request, dict(context.reports), context.device)


def load_preset(name: str, **settings: object) -> LoadedModels:
    """``load_models`` for a preset by name with settings given as keywords (scripts, benchmarks)."""
    from app.vlm.presets import get_preset

    resolved = Settings(model=name, **settings)  # type: ignore[arg-type]
    return load_models(get_preset(resolved.model, resolved.models_dir), resolved)


def load_image_space(preset: ModelPreset, name: str, settings: Settings) -> AuxImageEncoder:
    """One of the preset's ``extra_image_spaces`` on the runtime layer (evaluation; label sets that select
    it)."""
    return load_image_space_tower(preset, name, settings)[0]


def load_image_space_tower(
    preset: ModelPreset, name: str, settings: Settings
) -> tuple[AuxImageEncoder, TowerReport]:
    """``load_image_space`` and the report of the tower it runs on (runtime, precision, dtype, device)."""
    from app.vlm.aux.factory import create_aux_encoder

    spec = preset.extra_image_spaces[name]
    context = RuntimeContext(
        runtime_request(settings, preset), ExportCache(settings.export_cache_dir), preset.name
    )
    try:
        encoder = create_aux_encoder(spec, context)
    finally:
        context.close()
    if encoder is None or not context.reports:
        raise ValueError(
            f"image space {name!r}: kind {SHARED_TOWER!r} is the preset's own space, not an extra one"
        )
    return encoder, next(iter(context.reports.values()))
