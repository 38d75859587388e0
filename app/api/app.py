"""``create_app(settings)``: the FastAPI application factory.

Models load in a background task after the server starts listening, so /livez answers at once and
/readyz stays 503 until the model is loaded and a warm-up inference has passed. Tests pass a pre-built
engine (a tiny random-weight model) to skip loading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api.auth import ApiKeyAuth, is_loopback_host
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.middleware import BodyLimits, RequestContextMiddleware
from app.api.routes import (
    access,
    classify,
    health,
    label_sets,
    models,
    multimodal,
    risk_coverage,
    support_archive,
)
from app.api.routes.console import install_console
from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.engine.images import ImageLimits
from app.labelsets.live_trust import stale_windows
from app.labelsets.postgres_store import PostgresStore
from app.labelsets.service import LabelSetService, create_store
from app.labelsets.sync import LabelSetSync
from app.multimodal.limits import AudioLimits, InputLimits
from app.multimodal.service import MultimodalService
from app.observability.metrics import ServiceMetrics
from app.observability.trust import TrustExporter
from app.runtime.cache import ExportCache
from app.trust.monitoring import MonitorSettings, TrustMonitor
from app.vlm.loading import runtime_request

log = logging.getLogger(__name__)


def _observe_multimodal_batch(metrics: ServiceMetrics, model: str, size: int, seconds: float) -> None:
    metrics.batch_size.labels(f"multimodal:{model}").observe(size)
    metrics.stage_duration.labels("inference", f"multimodal:{model}").observe(seconds)


def multimodal_dirs(settings: Settings) -> list[Path]:
    dirs = [settings.models_dir / "multimodal"]
    if settings.multimodal_dir is not None:
        dirs.append(settings.multimodal_dir)
    return [d for d in dirs if d.is_dir()]


async def _start_services(app: FastAPI, settings: Settings, engine: ClassificationEngine | None) -> None:
    """Load the model, warm it up, reload label sets and multimodal checkpoints."""
    state = app.state
    try:
        if engine is None:
            engine = await asyncio.to_thread(ClassificationEngine.load, settings, state.metrics)
        else:
            engine.metrics = state.metrics
        state.multimodal = await asyncio.to_thread(
            MultimodalService.from_dirs,
            multimodal_dirs(settings),
            runtime_request(settings),
            ExportCache(settings.export_cache_dir),
        )
        state.multimodal.input_limits = InputLimits(
            image=ImageLimits(settings.max_image_pixels, settings.max_image_side, settings.min_image_side),
            audio=AudioLimits(
                max_seconds=settings.max_audio_seconds, max_channels=settings.max_audio_channels
            ),
        )
        state.multimodal.configure_batching(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            request_timeout_s=settings.request_timeout_s,
            on_batch=lambda model, size, seconds: _observe_multimodal_batch(
                state.metrics, model, size, seconds
            ),
            on_rejected=lambda model: state.metrics.overload_rejections.labels(f"multimodal:{model}").inc(),
        )
        store = await asyncio.to_thread(create_store, settings)  # may wait for the database
        service = LabelSetService(store=store, engine=engine, settings=settings)
        report = await service.repository.load_all()
        log.info(
            "label sets: %d loaded, %d failed",
            len(report.loaded),
            len(report.failed),
            extra={"label_sets_failed": report.failed},
        )
        state.label_sets = service
        state.readiness_checks["label_store"] = service.repository.readiness_problem
        if isinstance(store, PostgresStore):  # replicas: learn of other replicas' changes
            state.label_sync = LabelSetSync.for_store(
                store, service.repository, poll_interval_s=settings.label_sync_interval_s
            )
            await state.label_sync.start()
            state.readiness_checks["label_database"] = state.label_sync.readiness_problem
        state.engine = engine
        await engine.start()
    except Exception as exc:  # keep serving /livez and a red /readyz that says why
        log.exception("start-up failed")
        state.startup_error = f"{type(exc).__name__}: {exc}"


def create_app(settings: Settings | None = None, *, engine: ClassificationEngine | None = None) -> FastAPI:
    """Build the application. ``engine`` injects a pre-built model (tests, benchmarks)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_start_services(app, settings, engine), name="start-services")
        app.state.loader = loader
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loader
            for name in ("label_sync", "label_sets", "multimodal", "engine"):
                svc = getattr(app.state, name, None)
                if svc is not None and hasattr(svc, "stop"):
                    with contextlib.suppress(Exception):
                        await svc.stop()

    app = FastAPI(
        title="trustserve",
        version=__version__,
        description="Zero-shot vision-language predictions with a TrustVLM confidence and calibrated "
        "accept/reject decisions; ACR multimodal classifiers.",
        lifespan=lifespan,
        docs_url=None,  # app.api.docs adds them, behind the read scope unless public_docs
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # Starlette's redirect builds Location from the Host header
    )
    metrics = ServiceMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.auth = ApiKeyAuth(
        settings.api_keys.get_secret_value() if settings.api_keys else None,
        settings.api_keys_file,
        admin_without_keys=settings.allow_unauthenticated or is_loopback_host(settings.host),
    )
    _log_exposure(settings, app.state.auth)
    app.state.engine = None
    app.state.label_sets = None
    app.state.label_sync = None
    app.state.multimodal = None
    app.state.startup_error = None
    app.state.readiness_checks = {}
    app.state.trust_monitor = _trust_monitoring(app, settings, metrics)
    install_error_handlers(app)
    for module in (health, models, classify, label_sets, multimodal):
        app.include_router(module.router)
    for module in (access, support_archive, risk_coverage):  # added for the web console and CLI
        app.include_router(module.router)
    install_docs(app, public=settings.public_docs)
    install_console(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, limits=BodyLimits.from_settings(settings))
    return app


def _trust_monitoring(app: FastAPI, settings: Settings, metrics: ServiceMetrics) -> TrustMonitor:
    """The live trust monitor, exported to /metrics at each scrape; windows of label sets that are gone or
    were recalibrated are dropped first."""
    monitor = TrustMonitor(
        MonitorSettings(
            window_size=settings.monitor_window_size,
            window_seconds=settings.monitor_window_seconds,
            min_samples=settings.monitor_min_samples,
            max_label_sets=settings.monitor_max_label_sets,
        )
    )
    exporter = TrustExporter(metrics, monitor, settings.monitor_max_series)

    def export() -> None:
        service = app.state.label_sets
        if service is not None:
            for label_set_id in stale_windows(monitor, {v.id: v for v in service.repository.list_views()}):
                monitor.forget(label_set_id)
        exporter.export()

    metrics.before_render(export)
    return monitor


def _log_exposure(settings: Settings, auth: ApiKeyAuth) -> None:
    """Say at start-up who can change label sets (secure by default: docs/RELIABILITY.md)."""
    if auth.enabled:
        return
    if auth.admin_locked:
        log.warning(
            "listening on %s without API keys: admin writes (create, import, delete, calibrate) are "
            "refused; set TRUSTSERVE_API_KEYS, or TRUSTSERVE_ALLOW_UNAUTHENTICATED=true to accept them",
            settings.host,
        )
    elif not is_loopback_host(settings.host):
        log.warning(
            "listening on %s without API keys and TRUSTSERVE_ALLOW_UNAUTHENTICATED=true: anyone who can "
            "reach this address can change label sets",
            settings.host,
        )
