"""GET /v1/models: the loaded model, its device/dtype, batching and queue statistics, and known presets."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.api.deps import require_read
from app.api.schemas import ModelInfo, ModelsResponse, PresetInfo
from app.vlm.presets import list_presets

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse, dependencies=[Depends(require_read)])
async def models(request: Request) -> ModelsResponse:
    state = request.app.state
    loaded = []
    engine = getattr(state, "engine", None)
    if engine is not None:
        loaded.append(ModelInfo.model_validate(engine.describe()))
    presets = [
        PresetInfo(name=p.name, backend=p.backend, description=p.description, offline=p.offline)
        for p in list_presets(state.settings.models_dir).values()
    ]
    return ModelsResponse(models=loaded, presets=presets)
