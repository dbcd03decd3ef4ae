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
import ipaddress
import math
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
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


class InFlightError(RuntimeError):
    """A request with the same idempotency key is still being stored (answered 409)."""


class OpenAdminError(RuntimeError):
    """The service would expose ``/admin/*`` without a key beyond loopback: it refuses to start."""


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin_exposure(serving: ServingSettings, host: str) -> None:
    """Refuse a service bound to ``host`` beyond loopback whose ``/admin/*`` has no key.

    Raises ``OpenAdminError`` naming the settings that fix it, so it fails at start, not
    when someone finds the open endpoint.
    """
    if serving.admin_api_key is None and not serving.allow_open_admin and not is_loopback(host):
        raise OpenAdminError(
            f"refusing to serve on {host!r} (beyond loopback) with /admin/* open: set "
            "serving.admin_api_key (env RECFLOW_SERVING__ADMIN_API_KEY), or "
            "serving.allow_open_admin=true to accept that anyone who reaches the port can reload"
        )


def finite_json(value: Any) -> Any:
    """``value`` with every NaN / ±Infinity replaced by its name, as JSON can carry it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


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

    async def in_flight(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409, headers={"Retry-After": "1"})

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own 422, except that a NaN or Infinity the body carried (JSON parsing in
        # Python accepts them) is echoed by name: the encoder would fail on it with a 500.
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": finite_json(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_exception_handler(NoBundleError, no_bundle)
    app.add_exception_handler(FeatureUnavailableError, unavailable)
    app.add_exception_handler(NotFoundError, not_found)
    app.add_exception_handler(UnauthorizedError, unauthorized)
    app.add_exception_handler(EventNotStoredError, not_stored)
    app.add_exception_handler(InFlightError, in_flight)
    app.add_exception_handler(RequestValidationError, invalid)


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
    serving: ServingSettings = request.app.state.settings.serving
    expected = serving.admin_api_key
    if expected is None:
        # Started some way that skipped the start-up check (``uvicorn --host 0.0.0.0``):
        # still answer only loopback-bound servers without a key.
        server = request.scope.get("server")
        if not serving.allow_open_admin and server is not None and not is_loopback(str(server[0])):
            raise UnauthorizedError(
                f"{request.method} {request.url.path} is disabled: the service is bound beyond "
                "loopback and serving.admin_api_key is not set"
            )
        return
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected.encode()):
        raise UnauthorizedError(
            f"{request.method} {request.url.path} needs the admin key in the X-API-Key header"
        )


async def client_name(
    request: Request,
    x_client_key: Annotated[
        str | None, Header(description="The client app's key, when `serving.client_keys` is set.")
    ] = None,
) -> str | None:
    """The client app whose key the request carries (None: anonymous, allowed only while
    ``serving.client_keys`` is empty); 401 for a missing or unknown key.

    Every key is compared, in constant time, so the answer's timing leaks neither a key nor
    which client matched.
    """
    keys: dict[str, str] = request.app.state.settings.serving.client_keys
    if not keys:
        return None
    given = (x_client_key or "").encode()
    matched = None
    for name, key in keys.items():
        if hmac.compare_digest(given, key.encode()):
            matched = name
    if matched is None:
        raise UnauthorizedError(f"{request.method} {request.url.path} needs a client key in X-Client-Key")
    return matched


ServingDep = Annotated[ServingSettings, Depends(get_serving)]
HolderDep = Annotated[BundleHolder, Depends(get_holder)]
EventsDep = Annotated[EventLog, Depends(get_events)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
SessionsDep = Annotated[SessionStore, Depends(get_sessions)]
ClientDep = Annotated[str | None, Depends(client_name)]
