"""The recflow HTTP service: recommendations from the live bundle, following ``CURRENT``.

Start it with ``recflow serve`` or ``uvicorn.run("serving.app:create_app", factory=True)``.
The service never opens the warehouse: it reads published bundles only (see
``serving.bundle``), so the pipeline can publish while it runs and the service switches to
the new bundle within ``settings.serving.reload_check_s`` seconds, without a restart.

Besides recommendations for known users, the service runs the retrieve → rank → MMR →
de-duplicate → explore cascade (``serving.cascade``), today's feed (``/feed``, from the
bundle's ``daily_pool``), ad-hoc histories (``POST /recommend``), interactions that are
logged durably (``serving.events``) and change the session's next answers
(``serving.sessions``), steered text search, browsing, Prometheus metrics and a feed page.
The endpoints live in ``serving.routers`` (one module per area); what they share (settings,
the bundle holder, the event log, metrics, the session store) is on ``app.state`` and
reaches them as dependencies (``serving.dependencies``).

Endpoints are ``async``: health, item and history answers are dictionary lookups, and a
sync endpoint would cost FastAPI three thread-pool hops (dependency, endpoint, response
validation). The cascade runs on the event loop when the bundle measured it cheap at load
(``serving.inline_below_ms``): a sub-millisecond numpy/FAISS request gains nothing from a
thread but pays for the hop. Slower bundles, title encoding and session-store reads go to
the thread pool so they never block the loop. Each request takes the live bundle once and
uses only that object, so a swap in the middle of a request cannot mix versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.bundle import BundleHolder, bundle_loader
from serving.cascade import pin_threads, set_search_threads
from serving.dependencies import check_admin_exposure, install_error_handlers
from serving.events import EventLog
from serving.global_signals import GlobalSignals
from serving.impressions import ImpressionLog, ReaderExposure
from serving.metrics import BodyLimitMiddleware, MetricsMiddleware, ServiceMetrics
from serving.routers import admin, catalogue, docs, feed, intent, recommend
from serving.routers.params import ParamShapes
from serving.schemas import Recommendation
from serving.sessions import SessionStore
from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings

__all__ = ["Recommendation", "create_app"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the session store and load the first bundle before the first request is accepted
    (both off the event loop); stop the poller and close the stores on shutdown."""
    settings: Settings = app.state.settings
    set_search_threads(settings.serving.search_threads)
    pin_threads()
    serving = settings.serving
    app.state.sessions = await asyncio.to_thread(
        SessionStore,
        settings.catalogue_dir / "sessions.sqlite",
        max_events=serving.session_max_events,
        ttl_hours=serving.session_ttl_hours,
        max_sessions=serving.session_max_sessions,
        events=settings.events,
    )
    await asyncio.to_thread(app.state.holder.start)
    impressions: ImpressionLog | None = app.state.impressions
    if impressions is not None:
        impressions.start()
    signals: GlobalSignals | None = app.state.signals
    if signals is not None:
        await asyncio.to_thread(signals.start)  # replays the recent window first
    try:
        yield
    finally:
        await asyncio.to_thread(app.state.holder.stop)
        if signals is not None:
            await asyncio.to_thread(signals.stop)
        if impressions is not None:
            await asyncio.to_thread(impressions.close)  # writes what is queued
        app.state.events.close()
        app.state.sessions.close()
        del app.state.sessions


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (default: the catalogue ``RECFLOW_CATALOGUE`` names, its
    block of ``catalogues`` over env and config file: ``storage.settings.catalogue_settings``).

    A factory rather than a module-level app, so tests and ``uvicorn --factory`` can build
    independent instances with their own settings and bundle holder. Raises
    ``OpenAdminError`` when ``serving.host`` is beyond loopback and ``/admin/*`` has no key.
    """
    settings = settings if settings is not None else catalogue_settings()
    serving = settings.serving
    check_admin_exposure(serving, serving.host)
    app = FastAPI(
        title="recflow",
        summary="Recommendations from the live recflow bundle.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by serving.routers.docs
        redoc_url=None,
        telemetry={
            "tracing": serving.opentelemetry,
            "metrics": serving.opentelemetry,
            "logs": serving.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.holder = BundleHolder(
        ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep),
        serving.reload_check_s,
        loader=bundle_loader(serving.rank_stage),
        pinned=serving.bundle_version,
    )
    app.state.metrics = ServiceMetrics()
    app.state.events = EventLog(settings.events_dir)
    metrics = app.state.metrics
    app.state.impressions = (
        ImpressionLog(
            settings.impressions_dir,
            max_queue=serving.impression_queue,
            flush_s=serving.impression_flush_s,
            on_written=metrics.impressions_written.inc,
            on_dropped=metrics.impressions_dropped.inc,
        )
        if serving.impressions
        else None
    )
    app.state.exposure = ReaderExposure(max_readers=serving.session_max_sessions)
    app.state.signals = None
    if serving.update_mode == "global":
        signals = GlobalSignals(settings.events_dir, settings.impressions_dir, serving, settings.events)
        metrics.global_items.set_function(signals.__len__)
        app.state.signals = signals
    app.add_middleware(BodyLimitMiddleware, max_bytes=serving.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app, serving.reload_check_s)

    shapes = ParamShapes.from_settings(serving)
    app.include_router(recommend.router(shapes))
    app.include_router(intent.router(shapes))
    app.include_router(feed.router(shapes, news=settings.source.kind in feed.NEWS_SOURCES))
    app.include_router(catalogue.router(shapes))
    app.include_router(admin.router)
    app.include_router(docs.router)
    app.mount(docs.ASSETS, docs.assets(), name="docs-assets")
    return app
