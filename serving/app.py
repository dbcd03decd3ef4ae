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

Endpoints are ``async``: health, item and history answers are dictionary lookups, and a
sync endpoint would cost FastAPI three thread-pool hops (dependency, endpoint, response
validation). The cascade runs on the event loop when the bundle measured it cheap at load
(``serving.inline_below_ms``): a sub-millisecond numpy/FAISS request gains nothing from a
thread but pays for the hop. Slower bundles, title encoding and session-store reads go to
the thread pool so they never block the loop. Each request takes the live bundle once and
uses only that object, so a swap in the middle of a request cannot mix versions.
"""

# No ``from __future__ import annotations`` here: FastAPI evaluates endpoint annotations
# against module globals, and ``Annotated`` aliases below close over per-app values (max_k).
import asyncio
import hmac
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import orjson
from fastapi import Body, Cookie, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from serving.bundle import BundleHolder, FeatureUnavailableError, LoadedBundle, NoBundleError, Strategy
from serving.cascade import (
    CascadeParams,
    CascadeResult,
    Stage,
    pin_threads,
    session_delta,
    set_search_threads,
    stable_seed,
)
from serving.events import Event, EventLog
from serving.metrics import CONTENT_TYPE, BodyLimitMiddleware, MetricsMiddleware, ServiceMetrics
from serving.schemas import (
    SESSION_PATTERN,
    AdHocRecommendation,
    Categories,
    Feed,
    InteractBody,
    Interaction,
    RecommendBody,
    SearchResult,
    UserPage,
)
from serving.sessions import SessionState, SessionStore
from storage.artifacts import ArtifactStore
from storage.settings import Settings

logger = logging.getLogger("recflow.serving")
STATIC = FilePath(__file__).resolve().parent / "static"
_SESSION_RE = re.compile(SESSION_PATTERN)


# Response models: they are the OpenAPI documentation of the service ------------------------
class Counts(BaseModel):
    """Sizes of the data the live bundle was built from."""

    users: int
    items: int
    interactions: int


class Health(BaseModel):
    """Which bundle is live; ``degraded`` when ``CURRENT`` names a bundle that was refused."""

    status: Literal["ok", "degraded"]
    bundle_version: str
    model: str
    counts: Counts
    loaded_at: datetime
    detail: str | None = Field(None, description="Why the status is degraded, if it is.")


class Item(BaseModel):
    """An item as the catalogue describes it."""

    item_id: str
    title: str | None
    categories: list[str]
    year: int | None


class ScoredItem(Item):
    """A recommended item: its score under the strategy used, its 1-based rank, and the
    cascade stage that placed it."""

    score: float
    rank: int
    stage: Stage | None = None


class Recommendation(BaseModel):
    """Top-k unseen items for a user."""

    user_id: str
    bundle_version: str
    model: str
    strategy: Strategy
    reason: str | None = Field(None, description="Why the popularity fallback was used instead of the model.")
    session: str | None = Field(None, description="The session whose private state was applied.")
    cascade: dict[str, Any] | None = Field(
        None, description="pipeline (stages run), candidates, duplicates_removed, mmr_lambda."
    )
    items: list[ScoredItem]


class HistoryItem(Item):
    """An item the user interacted with; ``position`` 0 is their first interaction."""

    position: int


class History(BaseModel):
    """A user's interactions in time order, most recent last."""

    user_id: str
    bundle_version: str
    total: int = Field(description="Interactions the user has in the bundle, before `limit`.")
    items: list[HistoryItem]


class ItemDetail(Item):
    """An item with its popularity (interactions) in the live bundle."""

    bundle_version: str
    popularity: int


class ReloadResult(BaseModel):
    """The live version after a forced check of ``CURRENT``."""

    bundle_version: str
    previous_version: str | None
    changed: bool
    refused: dict[str, str] = Field(
        default_factory=dict, description="Versions that failed to load, with the reason."
    )


class ItemList(BaseModel):
    """Items nearest to a query (an item or a text), best first."""

    query: str
    bundle_version: str
    items: list[ScoredItem]


class ErrorMessage(BaseModel):
    """The body of every 401, 404, 413 and 503."""

    detail: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorMessage}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorMessage, "description": "No bundle has been published yet."}
}
VALIDATION_ERROR: dict[str, Any] = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}
"""The 422 FastAPI documents for routes whose parameters it validates, for those that
validate their own (:func:`parse_query`); the schema is FastAPI's, defined by the others."""


class NotFoundError(LookupError):
    """A user or item the live bundle does not know (answered 404)."""


class UnauthorizedError(PermissionError):
    """An admin call without the configured API key (answered 401)."""


class EventNotStoredError(RuntimeError):
    """The event log could not store an event: it is not accepted (answered 503)."""


def _bad_request(loc: tuple[str, ...], msg: str, value: Any) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for checks a schema cannot express (ids the bundle lacks)."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


INLINE_MAX_K = 50
"""Deepest list a request may ask for and still run on the event loop (see ``run_cascade``)."""
INLINE_MIN_HISTORY = 100
"""History length that always counts as ordinary, however short the warm-up's were."""


def lean_json(payload: dict[str, Any]) -> Response:
    """``payload`` as JSON, skipping FastAPI's response-model pass.

    The hot endpoints build plain dicts whose shape the response model documents (it stays
    in the OpenAPI schema); re-validating and re-serialising them through pydantic took
    ~0.1 ms of a ~1 ms request. ``tests/test_serving_cascade.py`` checks that these bodies
    round-trip through their models unchanged, so the schema still tells the truth.
    """
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


QueryModel = TypeVar("QueryModel", bound=BaseModel)


def parse_query(model: type[QueryModel], request: Request) -> QueryModel:
    """The request's query string validated as ``model`` in one pydantic call.

    For the hottest endpoint only: FastAPI validates each declared query parameter on its
    own, in Python, ~70 µs a request for five of them (measured in-process); one model
    validation costs a few. Errors come back as FastAPI's own 422, located in ``query``.
    """
    try:
        return model.model_validate(request.query_params)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def query_parameters(model: type[BaseModel], path: dict[str, str]) -> dict[str, Any]:
    """``openapi_extra`` that documents what :func:`parse_query` validates, as FastAPI would:
    the path parameters (``name`` → description, strings) and one query parameter per field."""
    schema = model.model_json_schema()
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "description": text, "title": name.replace("_", " ").title()},
            "description": text,
        }
        for name, text in path.items()
    ]
    required = set(schema.get("required", []))
    for name, field_schema in schema["properties"].items():
        entry = {"name": name, "in": "query", "required": name in required, "schema": field_schema}
        if "description" in field_schema:
            entry["description"] = field_schema["description"]
        parameters.append(entry)
    return {"parameters": parameters}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (default: ``Settings()``, i.e. env and config file).

    A factory rather than a module-level app, so tests and ``uvicorn --factory`` can build
    independent instances with their own settings and bundle holder.
    """
    settings = settings if settings is not None else Settings()
    serving = settings.serving
    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
    holder = BundleHolder(store, serving.reload_check_s)
    max_k = serving.max_k
    retry_after = str(max(1, math.ceil(serving.reload_check_s)))
    metrics = ServiceMetrics()
    events = EventLog(settings.events_dir)
    sessions_path = settings.catalogue_dir / "sessions.sqlite"
    state: dict[str, SessionStore] = {}
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        set_search_threads(serving.search_threads)
        pin_threads()
        state["sessions"] = await asyncio.to_thread(SessionStore, sessions_path)
        # The first load runs before the first request is accepted, off the event loop.
        await asyncio.to_thread(holder.start)
        try:
            yield
        finally:
            await asyncio.to_thread(holder.stop)
            events.close()
            state.pop("sessions").close()

    app = FastAPI(
        title="recflow",
        summary="Recommendations from the live recflow bundle.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={
            "tracing": serving.opentelemetry,
            "metrics": serving.opentelemetry,
            "logs": serving.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.events = events
    app.add_middleware(BodyLimitMiddleware, max_bytes=serving.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(NoBundleError)
    async def _no_bundle(request: Request, exc: NoBundleError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": retry_after})

    @app.exception_handler(FeatureUnavailableError)
    async def _unavailable(request: Request, exc: FeatureUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(UnauthorizedError)
    async def _unauthorized(request: Request, exc: UnauthorizedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "X-API-Key"})

    @app.exception_handler(EventNotStoredError)
    async def _not_stored(request: Request, exc: EventNotStoredError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    UserId = Annotated[str, Path(description="The user's id as in the source data.")]
    K = Annotated[int, Query(ge=1, le=max_k, description="How many items to return.")]
    Lambda = Annotated[
        float | None,
        Query(
            ge=0.0, le=1.0, description=f"MMR trade-off, 1 = relevance only (default {serving.mmr_lambda})."
        ),
    ]
    Explore = Annotated[
        bool | None, Query(description=f"Reserve an exploration slot (default {serving.exploration}).")
    ]
    SessionParam = Annotated[
        str | None,
        Query(pattern=SESSION_PATTERN, description="Apply this session's private state (see /interact)."),
    ]

    def sessions() -> SessionStore:
        return state["sessions"]

    async def run_cascade(
        bundle: LoadedBundle, who: str, history: np.ndarray, p: CascadeParams, **kwargs: Any
    ) -> CascadeResult:
        """``bundle.recommend_for`` on the event loop for an ordinary request to a bundle that
        measured cheap at load, else in the thread pool.

        A sub-millisecond numpy/FAISS cascade holds the GIL for most of its time, so a thread
        gains no parallelism and the hop (~0.1 ms) is a tenth of the request. But whatever
        runs on the loop stalls every other connection, so deep requests (k up to ``max_k``,
        histories far longer than the warm-up's: 8–17 ms on MovieLens) and slow bundles
        (a torch model's longer, GIL-releasing work) go to the thread pool.
        """
        ordinary = p.k <= INLINE_MAX_K and len(history) <= max(2 * bundle.warm_history, INLINE_MIN_HISTORY)
        if ordinary and bundle.cascade_ms <= serving.inline_below_ms:
            return bundle.recommend_for(who, history, p, **kwargs)
        return await run_in_threadpool(bundle.recommend_for, who, history, p, **kwargs)

    def params(k: int, mmr_lambda: float | None, explore: bool | None, *seed: object) -> CascadeParams:
        day_seed = stable_seed(*seed, datetime.now(UTC).date())
        return CascadeParams.from_settings(serving, k, mmr_lambda=mmr_lambda, explore=explore, seed=day_seed)

    def cascade_info(result: CascadeResult, p: CascadeParams) -> dict[str, Any]:
        return {
            "pipeline": result.pipeline,
            "candidates": result.candidates,
            "duplicates_removed": result.duplicates_removed,
            "mmr_lambda": p.mmr_lambda,
        }

    def listed(bundle: LoadedBundle, result: CascadeResult) -> list[dict[str, Any]]:
        return [
            {**bundle.item_record(idx), "score": score, "rank": rank, "stage": stage}
            for rank, (idx, score, stage) in enumerate(
                zip(result.indices, result.scores, result.stages, strict=True), start=1
            )
        ]

    def reader(
        bundle: LoadedBundle, user_id: str | None, session: SessionState | None
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float]] | None, bool]:
        """(history, exclude, session weights, known) for a user and/or a session."""
        base = bundle.histories.get(user_id) if user_id is not None else None
        known = base is not None
        history = base if base is not None else np.zeros(0, dtype=np.int64)
        weights = None
        exclude = history
        if session is not None and len(session) and serving.update_mode == "private":
            extra = bundle.indices_of(session.positives)
            history = np.concatenate([history.astype(np.int64), extra]) if len(extra) else history
            exclude = np.union1d(history, bundle.indices_of(sorted(session.touched)))
            weights = session.weights
        else:
            exclude = np.unique(history)
        return history, exclude, weights, known

    @app.get("/health", response_model=Health, responses=UNAVAILABLE, tags=["service"])
    async def health() -> dict[str, Any]:
        """The live bundle's version, model and sizes; 503 until a bundle is published."""
        bundle = holder.get()
        refusal = holder.live_refusal()
        detail = None
        if refusal is not None:
            detail = f"CURRENT names {refusal[0]}, which was refused: {refusal[1]}"
        return {
            "status": "ok" if refusal is None else "degraded",
            "bundle_version": bundle.version,
            "model": bundle.model_name,
            "counts": bundle.counts,
            "loaded_at": bundle.loaded_at,
            "detail": detail,
        }

    class RecommendQuery(BaseModel):
        """The query of ``GET /recommend/{user_id}`` (see :func:`parse_query`)."""

        k: int = Field(10, ge=1, le=max_k, description="How many items to return.")
        mmr_lambda: float | None = Field(
            None,
            ge=0.0,
            le=1.0,
            description=f"MMR trade-off, 1 = relevance only (default {serving.mmr_lambda}).",
        )
        explore: bool | None = Field(
            None, description=f"Reserve an exploration slot (default {serving.exploration})."
        )
        session: str | None = Field(
            None, pattern=SESSION_PATTERN, description="Apply this session's private state (see /interact)."
        )

    @app.get(
        "/recommend/{user_id}",
        response_model=Recommendation,
        responses={**UNAVAILABLE, 422: VALIDATION_ERROR},
        tags=["recommend"],
        openapi_extra=query_parameters(RecommendQuery, {"user_id": "The user's id as in the source data."}),
    )
    async def recommend(request: Request) -> Response:
        """Top-k items for a user through the cascade: retrieve → rank → MMR → de-duplicate → explore.

        Seen items (and everything the session touched) are excluded. Users with fewer than
        ``min_interactions`` interactions get a fresh-and-popular fallback, marked by
        ``strategy`` with a ``reason``. Each item names the ``stage`` that placed it.
        """
        user_id: str = request.path_params["user_id"]
        query = parse_query(RecommendQuery, request)
        session = query.session
        bundle = holder.get()
        state_ = await run_in_threadpool(sessions().state, session) if session is not None else None
        history, exclude, weights, known = reader(bundle, user_id, state_)
        p = params(query.k, query.mmr_lambda, query.explore, user_id, session, bundle.version)
        result = await run_cascade(
            bundle,
            f"user {user_id!r}",
            history,
            p,
            min_interactions=serving.min_interactions,
            exclude=exclude,
            session_weights=weights,
            learning_rate=serving.session_learning_rate,
            known=known or bool(state_ and len(state_)),
        )
        return lean_json(
            {
                "user_id": user_id,
                "bundle_version": bundle.version,
                "model": bundle.model_name,
                "strategy": result.strategy,
                "reason": result.reason,
                "session": session,
                "cascade": cascade_info(result, p),
                "items": listed(bundle, result),
            }
        )

    @app.post(
        "/recommend",
        response_model=AdHocRecommendation,
        responses={**UNAVAILABLE, 413: {"model": ErrorMessage}},
        tags=["recommend"],
    )
    async def recommend_adhoc(body: Annotated[RecommendBody, Body()]) -> Response:
        """Recommendations for a history the caller keeps: catalogue item ids and/or free titles.

        Each title is encoded with the bundle's text model and matched to its nearest catalogue
        item, which then counts as history. Unknown item ids are a 422 naming them.
        """
        if body.k > max_k:
            raise _bad_request(("body", "k"), f"k must be at most {max_k}", body.k)
        for field_name in ("item_ids", "titles"):
            values = getattr(body, field_name)
            if len(values) > serving.max_history:
                raise _bad_request(
                    ("body", field_name), f"at most {serving.max_history} entries", len(values)
                )
        blank = [i for i, t in enumerate(body.titles) if not t.strip() or len(t) > 500]
        if blank:
            raise _bad_request(
                ("body", "titles", str(blank[0])), "titles must be 1 to 500 non-blank characters", ""
            )
        bundle = holder.get()
        unknown = [i for i in body.item_ids if i not in bundle.item_index]
        if unknown:
            raise _bad_request(
                ("body", "item_ids"),
                f"{len(unknown)} item id(s) not in bundle {bundle.version}: {unknown[:5]}",
                unknown[:5],
            )
        resolved: list[dict[str, Any]] = []
        history = bundle.indices_of(body.item_ids)
        if body.titles:
            rows, sims = await run_in_threadpool(bundle.match_titles, body.titles)
            resolved = [
                {
                    "title": title,
                    "item_id": bundle.item_ids[row],
                    "matched_title": bundle.titles[row],
                    "similarity": float(sim),
                }
                for title, row, sim in zip(body.titles, rows.tolist(), sims.tolist(), strict=True)
            ]
            history = np.concatenate([history, rows.astype(np.int64)])
        p = params(body.k, body.mmr_lambda, body.explore, *body.item_ids, *body.titles)
        result = await run_cascade(
            bundle,
            "the ad-hoc history",
            history,
            p,
            min_interactions=serving.min_interactions,
        )
        return lean_json(
            {
                "bundle_version": bundle.version,
                "model": bundle.model_name,
                "strategy": result.strategy,
                "reason": result.reason,
                "resolved": resolved,
                "cascade": cascade_info(result, p),
                "items": listed(bundle, result),
            }
        )

    def session_from(explicit: str | None, cookie: str | None, response: Response) -> str:
        """The request's session: explicit, else a valid cookie, else a new one (set as cookie)."""
        if explicit is not None:
            session = explicit
        elif cookie is not None and _SESSION_RE.match(cookie):
            session = cookie
        else:
            session = uuid.uuid4().hex
        if session != cookie:
            response.set_cookie(
                serving.session_cookie, session, max_age=365 * 86400, httponly=True, samesite="lax"
            )
        return session

    CookieSession = Annotated[
        str | None, Cookie(alias=serving.session_cookie, description="The anonymous reader's session.")
    ]

    @app.get("/feed", response_model=Feed, responses=UNAVAILABLE, tags=["recommend"])
    async def feed(
        response: Response,
        k: K = 20,
        mmr_lambda: Lambda = None,
        explore: Explore = None,
        user_id: Annotated[
            str | None, Query(min_length=1, max_length=256, description="A known user (else the session's).")
        ] = None,
        session_cookie: CookieSession = None,
    ) -> dict[str, Any]:
        """Today's pool ranked for this reader. A session cookie identifies an anonymous reader
        (set on the first visit); a new session gets a diverse fresh pool."""
        bundle = holder.get()
        session = session_from(None, session_cookie, response)
        state_ = await run_in_threadpool(sessions().state, session)
        who = user_id or state_.user_id
        if user_id is not None and user_id not in bundle.histories:
            raise NotFoundError(f"user {user_id!r} is not in bundle {bundle.version}")
        history, exclude, weights, known = reader(bundle, who, state_)
        p = params(k, mmr_lambda, explore, who, session, bundle.version, len(state_))
        result = await run_cascade(
            bundle,
            f"user {who!r}" if who else f"session {session!r}",
            history,
            p,
            min_interactions=serving.min_interactions,
            exclude=exclude,
            session_weights=weights,
            learning_rate=serving.session_learning_rate,
            use_pool=True,
            known=known or len(state_) > 0,
        )
        items = listed(bundle, result)
        pool = bundle.pool
        if pool is not None:
            where = {int(idx): pos for pos, idx in enumerate(pool.indices.tolist())}
            for item, idx in zip(items, result.indices, strict=True):
                pos = where.get(idx)
                if pos is not None:
                    item["topic"], item["why"] = pool.topics[pos], pool.reasons[pos]
        return {
            "session": session,
            "user_id": who,
            "bundle_version": bundle.version,
            "pool_date": pool.pool_date if pool is not None else None,
            "strategy": result.strategy,
            "reason": result.reason,
            "session_events": len(state_),
            "cascade": cascade_info(result, p),
            "items": items,
        }

    @app.post(
        "/interact",
        response_model=Interaction,
        responses={**UNAVAILABLE, 413: {"model": ErrorMessage}},
        tags=["recommend"],
    )
    async def interact(
        body: Annotated[InteractBody, Body()], response: Response, session_cookie: CookieSession = None
    ) -> dict[str, Any]:
        """Report what the reader did. The event is appended durably to the event log before
        this answer, and (``update_mode: private``) changes the session's next answers."""
        bundle = holder.get()
        if body.item_id not in bundle.item_index:
            raise _bad_request(
                ("body", "item_id"), f"item {body.item_id!r} is not in bundle {bundle.version}", body.item_id
            )
        if body.user_id is not None and body.user_id not in bundle.histories:
            raise _bad_request(
                ("body", "user_id"), f"user {body.user_id!r} is not in bundle {bundle.version}", body.user_id
            )
        session = session_from(body.session, session_cookie, response)
        event = Event.new(
            session=session,
            item_id=body.item_id,
            event=body.event,
            user_id=body.user_id,
            dwell_s=body.dwell_s,
        )
        try:
            await run_in_threadpool(events.append, event)
        except OSError as exc:
            logger.error("event log append failed: %s", exc)
            raise EventNotStoredError(f"the event log could not store the event ({exc}); retry") from exc
        metrics.events.labels(body.event).inc()
        applied = serving.update_mode == "private"
        if applied:
            state_ = await run_in_threadpool(sessions().record, event)
            n_events = len(state_)
        else:
            n_events = 0
        return {
            "event_id": event.event_id,
            "session": session,
            "applied": applied,
            "session_events": n_events,
            "update_mode": serving.update_mode,
        }

    @app.get(
        "/users/{user_id}/history",
        response_model=History,
        responses={**NOT_FOUND, **UNAVAILABLE},
        tags=["catalogue"],
    )
    async def history(
        user_id: UserId,
        limit: Annotated[
            int | None, Query(ge=1, description="Return only the most recent `limit` items.")
        ] = None,
    ) -> dict[str, Any]:
        """The user's interactions in time order, most recent last."""
        bundle = holder.get()
        seen = bundle.histories.get(user_id)
        if seen is None:
            raise NotFoundError(f"user {user_id!r} is not in bundle {bundle.version}")
        total = len(seen)
        start = 0 if limit is None else max(0, total - limit)
        items = [
            {**bundle.item_record(idx), "position": start + offset}
            for offset, idx in enumerate(seen[start:].tolist())
        ]
        return {
            "user_id": user_id,
            "bundle_version": bundle.version,
            "total": total,
            "items": items,
        }

    @app.get("/users", response_model=UserPage, responses=UNAVAILABLE, tags=["catalogue"])
    async def users(
        offset: Annotated[int, Query(ge=0, le=10**9, description="Users to skip.")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000, description="Users per page.")] = 50,
    ) -> dict[str, Any]:
        """Known users of the live bundle in id order, a page at a time."""
        bundle = holder.get()
        page_ids = bundle.user_order[offset : offset + limit]
        return {
            "bundle_version": bundle.version,
            "total": len(bundle.user_order),
            "offset": offset,
            "limit": limit,
            "users": [{"user_id": u, "interactions": len(bundle.histories[u])} for u in page_ids],
        }

    @app.get("/categories", response_model=Categories, responses=UNAVAILABLE, tags=["catalogue"])
    async def categories() -> dict[str, Any]:
        """Every category of the catalogue with its number of items, largest first."""
        bundle = holder.get()
        return {
            "bundle_version": bundle.version,
            "categories": [
                {"name": n, "items": c}
                for n, c in zip(bundle.category_names, bundle.category_counts, strict=True)
            ],
        }

    @app.get(
        "/items/{item_id}",
        response_model=ItemDetail,
        responses={**NOT_FOUND, **UNAVAILABLE},
        tags=["catalogue"],
    )
    async def item(
        item_id: Annotated[str, Path(description="The item's id as in the source data.")],
    ) -> dict[str, Any]:
        """One item of the live bundle's catalogue."""
        bundle = holder.get()
        idx = bundle.item_index.get(item_id)
        if idx is None:
            raise NotFoundError(f"item {item_id!r} is not in bundle {bundle.version}")
        return {
            **bundle.item_record(idx),
            "bundle_version": bundle.version,
            "popularity": int(bundle.popularity[idx]),
        }

    @app.get(
        "/items/{item_id}/similar",
        response_model=ItemList,
        responses={**NOT_FOUND, **UNAVAILABLE},
        tags=["catalogue"],
    )
    async def similar(
        item_id: Annotated[str, Path(description="The item's id as in the source data.")],
        k: K = 10,
    ) -> dict[str, Any]:
        """Items whose text is nearest to this item's (cosine over sentence-transformer vectors)."""
        bundle = holder.get()
        idx = bundle.item_index.get(item_id)
        if idx is None:
            raise NotFoundError(f"item {item_id!r} is not in bundle {bundle.version}")
        rows, scores = await run_in_threadpool(bundle.similar, idx, k)
        return _item_list(bundle, rows, scores, query=item_id, stage="similar")

    @app.get("/search", response_model=SearchResult, responses=UNAVAILABLE, tags=["catalogue"])
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=500, description="Free text to search for.")],
        k: K = 10,
        category_weight: Annotated[
            float,
            Query(
                ge=0.0, le=1.0, description="How far the query is steered toward the categories it resembles."
            ),
        ] = 0.3,
        taste_weight: Annotated[
            float,
            Query(ge=0.0, le=1.0, description="How much the user's (or session's) taste is blended in."),
        ] = 0.0,
        user_id: Annotated[
            str | None, Query(min_length=1, max_length=256, description="Whose taste to blend in.")
        ] = None,
        session: SessionParam = None,
    ) -> dict[str, Any]:
        """Items nearest to the query's text intent: the query vector, steered toward the
        categories it resembles and optionally blended with the user's taste."""
        if not q.strip():
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "q"), "msg": "q must not be blank", "input": q}]
            )
        bundle = holder.get()
        if user_id is not None and user_id not in bundle.histories:
            raise NotFoundError(f"user {user_id!r} is not in bundle {bundle.version}")
        state_ = await run_in_threadpool(sessions().state, session) if session is not None else None
        taste = None
        if taste_weight > 0 and bundle.vectors is not None:
            history, _, weights, _ = reader(bundle, user_id, state_)
            taste = bundle.vectors[history].mean(axis=0) if len(history) else None
            if weights:
                pairs = [(bundle.item_index[i], w) for i, w in weights if i in bundle.item_index]
                delta = session_delta(bundle.vectors, pairs, serving.session_learning_rate)
                if delta is not None:
                    taste = delta if taste is None else taste / max(np.linalg.norm(taste), 1e-12) + delta
        rows, scores, matched = await run_in_threadpool(
            bundle.search_steered, q, k, category_weight, taste, taste_weight
        )
        listed_ = _item_list(bundle, rows, scores, query=q, stage="search")
        return {
            **listed_,
            "categories": [{"name": n, "weight": w} for n, w in matched],
            "taste_weight": taste_weight if taste is not None else 0.0,
        }

    def _item_list(bundle: LoadedBundle, rows: Any, scores: Any, query: str, stage: Stage) -> dict[str, Any]:
        items = [
            {**bundle.item_record(int(i)), "score": float(sc), "rank": r, "stage": stage}
            for r, (i, sc) in enumerate(zip(rows.tolist(), scores.tolist(), strict=True), start=1)
        ]
        return {"query": query, "bundle_version": bundle.version, "items": items}

    @app.get(
        "/metrics",
        tags=["service"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}}},
    )
    async def prometheus() -> Response:
        """Prometheus metrics: requests and latency histograms per endpoint, the live bundle."""
        bundle = holder.bundle
        if bundle is not None:
            metrics.set_bundle(bundle.version, bundle.model_name)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        """The feed page: today's items with like / skip buttons."""
        return HTMLResponse(page)

    @app.post(
        "/admin/reload",
        response_model=ReloadResult,
        responses={**UNAVAILABLE, 401: {"model": ErrorMessage}},
        tags=["admin"],
    )
    async def reload(
        x_api_key: Annotated[
            str | None, Header(description="The admin key, when `serving.admin_api_key` is set.")
        ] = None,
    ) -> dict[str, Any]:
        """Check ``CURRENT`` now instead of at the next interval (retries refused bundles)."""
        expected = serving.admin_api_key
        if expected is not None and (
            x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected.encode())
        ):
            raise UnauthorizedError("POST /admin/reload needs the admin key in the X-API-Key header")
        before = holder.bundle
        after = await run_in_threadpool(holder.reload)  # may load a bundle: off the loop
        if after is None:
            raise NoBundleError(holder.unavailable_reason())
        previous = before.version if before is not None else None
        return {
            "bundle_version": after.version,
            "previous_version": previous,
            "changed": after.version != previous,
            "refused": holder.refused,
        }

    return app
