"""Typed dependencies: services from app.state, and API-key scopes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.api.errors import APIError
from app.config import Settings
from app.engine.engine import ClassificationEngine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> ClassificationEngine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise APIError(
            503, "not_ready", "the model is still loading; retry shortly", headers={"Retry-After": "5"}
        )
    return engine


def get_label_sets(request: Request) -> Any:
    service = getattr(request.app.state, "label_sets", None)
    if service is None:
        raise APIError(503, "not_ready", "label sets are still loading", headers={"Retry-After": "5"})
    return service


def require_read(request: Request) -> None:
    """Read scope (classify, predict) when API keys are configured."""
    request.app.state.auth.check(request, "read")


def require_admin(request: Request) -> None:
    """Admin scope (label-set and model changes) when API keys are configured."""
    request.app.state.auth.check(request, "admin")


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[ClassificationEngine, Depends(get_engine)]
LabelSetsDep = Annotated[Any, Depends(get_label_sets)]
