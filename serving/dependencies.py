"""What the routers share, as FastAPI dependencies read from ``app.state``.

``create_app`` puts one of each on ``app.state`` (settings, the bundle holder, the event log,
the metrics, and — once the lifespan has opened it — the session store); an endpoint names
the ones it needs, e.g. ``holder: HolderDep``. Reading them per request from the app, not
from a closure, is what lets the routers live in their own modules and several apps (tests,
``uvicorn --factory`` workers) run side by side with their own settings.

The dependencies are ``async`` on purpose: FastAPI runs a sync dependency in the thread pool,
a hop that costs more than the lookup itself. The errors the routers raise, and the answer
each gets, are here too (``install_error_handlers``).
"""

from __future__ import annotations

import hmac
import math
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.bundle import BundleHolder, FeatureUnavailableError, NoBundleError
from serving.events import EventLog
from serving.metrics import ServiceMetrics
from serving.sessions import SessionStore
from storage.settings import ServingSettings


# Errors the endpoints raise, and their answers ----------------------------------------------
class NotFoundError(LookupError):
    """A user or item the live bundle does not know (answered 404)."""


class UnauthorizedError(PermissionError):
    """An admin call without the configured API key (answered 401)."""


class EventNotStoredError(RuntimeError):
    """The event log could not store an event: it is not accepted (answered 503)."""


def bad_request(loc: tuple[str, ...], msg: str, value: Any) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for checks a schema cannot express (ids the bundle lacks)."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def install_error_handlers(app: FastAPI, reload_check_s: float) -> None:
    """Answer the errors above (and the bundle's) with their status and a ``detail`` body.

    A missing bundle says when to retry: the next check of ``CURRENT``.
    """
    retry_after = str(max(1, math.ceil(reload_check_s)))

    async def no_bundle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": retry_after})

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    async def unauthorized(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "X-API-Key"})

    async def not_stored(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    app.add_exception_handler(NoBundleError, no_bundle)
    app.add_exception_handler(FeatureUnavailableError, unavailable)
    app.add_exception_handler(NotFoundError, not_found)
    app.add_exception_handler(UnauthorizedError, unauthorized)
    app.add_exception_handler(EventNotStoredError, not_stored)


# The app's shared objects ---------------------------------------------------------------------
async def get_serving(request: Request) -> ServingSettings:
    """The ``serving`` section of the settings the app was built with (all the endpoints read)."""
    serving: ServingSettings = request.app.state.settings.serving
    return serving


async def get_holder(request: Request) -> BundleHolder:
    """The holder of the live bundle. Endpoints call ``holder.get()`` once, where they need
    the bundle, and use only that object: a swap mid-request cannot mix versions."""
    holder: BundleHolder = request.app.state.holder
    return holder


async def get_events(request: Request) -> EventLog:
    """The durable event log ``/interact`` appends to."""
    events: EventLog = request.app.state.events
    return events


async def get_metrics(request: Request) -> ServiceMetrics:
    """The app's Prometheus metrics."""
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_sessions(request: Request) -> SessionStore:
    """The session store, opened by the app's lifespan (off the event loop)."""
    sessions: SessionStore = request.app.state.sessions
    return sessions


async def require_admin_key(
    request: Request,
    x_api_key: Annotated[
        str | None, Header(description="The admin key, when `serving.admin_api_key` is set.")
    ] = None,
) -> None:
    """Refuse the call (401) unless it carries ``serving.admin_api_key``, when one is set.

    The comparison takes constant time, so the answer's timing does not leak the key.
    """
    expected = request.app.state.settings.serving.admin_api_key
    if expected is not None and (
        x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected.encode())
    ):
        raise UnauthorizedError(
            f"{request.method} {request.url.path} needs the admin key in the X-API-Key header"
        )


ServingDep = Annotated[ServingSettings, Depends(get_serving)]
HolderDep = Annotated[BundleHolder, Depends(get_holder)]
EventsDep = Annotated[EventLog, Depends(get_events)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
SessionsDep = Annotated[SessionStore, Depends(get_sessions)]
