"""Typed dependencies: services from app.state, and API-key scopes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.errors import Unavailable
from app.labelsets.service import LabelSetService
from app.multimodal.service import MultimodalService


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> ClassificationEngine:
    engine: ClassificationEngine | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise Unavailable("the model is still loading; retry shortly", code="not_ready")
    return engine


def get_label_sets(request: Request) -> LabelSetService:
    service: LabelSetService | None = getattr(request.app.state, "label_sets", None)
    if service is None:
        raise Unavailable("label sets are still loading", code="not_ready")
    return service


def get_multimodal(request: Request) -> MultimodalService:
    """The app's ``MultimodalService`` (503 when the server was started without one)."""
    service: MultimodalService | None = getattr(request.app.state, "multimodal", None)
    if service is None:
        raise Unavailable(
            "multimodal models are not loaded on this server",
            code="multimodal_unavailable",
            retry_after_s=None,
        )
    return service


def require_read(request: Request) -> None:
    """Read scope (classify, predict) when API keys are configured."""
    request.app.state.auth.check(request, "read")


def require_admin(request: Request) -> None:
    """Admin scope (label-set and model changes) when API keys are configured."""
    request.app.state.auth.check(request, "admin")


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[ClassificationEngine, Depends(get_engine)]
LabelSetsDep = Annotated[LabelSetService, Depends(get_label_sets)]
MultimodalDep = Annotated[MultimodalService, Depends(get_multimodal)]
