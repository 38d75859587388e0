"""Liveness, readiness (a real tiny inference, cached) and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.schemas import HealthResponse
from app.observability.metrics import PROMETHEUS_CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/livez", response_model=HealthResponse, summary="The process is alive")
async def livez() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=HealthResponse,
    summary="Ready: model loaded, warm-up passed, a tiny inference succeeds (cached a few seconds)",
    responses={503: {"model": HealthResponse}},
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    engine = getattr(state, "engine", None)
    if getattr(state, "startup_error", None):
        return JSONResponse(
            HealthResponse(status="unavailable", detail=state.startup_error).model_dump(), 503
        )
    if engine is None or not engine.ready:
        return JSONResponse(
            HealthResponse(status="starting", detail="model loading or warming up").model_dump(), 503
        )
    if not await engine.health_check():
        return JSONResponse(
            HealthResponse(status="unavailable", detail="model inference failed").model_dump(), 503
        )
    for name, check in getattr(state, "readiness_checks", {}).items():
        problem = await check()
        if problem:
            return JSONResponse(
                HealthResponse(status="unavailable", detail=f"{name}: {problem}").model_dump(), 503
            )
    return JSONResponse(HealthResponse(status="ok").model_dump())


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state
    engine = getattr(state, "engine", None)
    if engine is not None:
        state.metrics.queue_depth.labels(engine.model_id).set(engine.batcher.queue_depth)
    # off the event loop: the live trust gauges are computed at scrape time (one per monitored label set)
    body = await asyncio.to_thread(state.metrics.render)
    return Response(body, media_type=PROMETHEUS_CONTENT_TYPE)
