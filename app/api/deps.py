"""Typed dependencies: services from app.state, and API-key scopes.

The functions FastAPI calls as dependencies are ``async def``: they never block, and FastAPI runs a plain
``def`` dependency in its thread pool (a thread hand-off per dependency per request on the hot path)."""

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


async def require_read(request: Request) -> None:
    """Read scope (classify, predict) when API keys are configured."""
    request.app.state.auth.check(request, "read")


async def require_admin(request: Request) -> None:
    """Admin scope (label-set and model changes) when API keys are configured."""
    request.app.state.auth.check(request, "admin")


async def _settings(request: Request) -> Settings:
    return get_settings(request)


async def _engine(request: Request) -> ClassificationEngine:
    return get_engine(request)


async def _label_sets(request: Request) -> LabelSetService:
    return get_label_sets(request)


async def _multimodal(request: Request) -> MultimodalService:
    return get_multimodal(request)


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[ClassificationEngine, Depends(_engine)]
LabelSetsDep = Annotated[LabelSetService, Depends(_label_sets)]
MultimodalDep = Annotated[MultimodalService, Depends(_multimodal)]
