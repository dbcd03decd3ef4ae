"""The reader's side: ``/feed`` (today's pool ranked for a session), ``/interact`` (what the
reader did, logged durably) and the feed page at ``/`` that uses both: a news reader
(``static/news.html``) for a news catalogue (source ``feeds`` or ``mind``), the item view
(``static/index.html``) for any other.

An anonymous reader is a session, named by a cookie (``serving.session_cookie``) set on the
first visit; its events change its next answers when ``serving.update_mode`` is ``private``
(or ``global``, where they also lift the items for every reader).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints' annotations,
# and the parameter declarations below are built per app, inside ``router``.
import logging
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving import filters
from serving.dependencies import (
    ClientDep,
    EventNotStoredError,
    EventsDep,
    HolderDep,
    InFlightError,
    MetricsDep,
    NotFoundError,
    ServingDep,
    SessionsDep,
    bad_request,
)
from serving.events import Event
from serving.impressions import ReaderExposure
from serving.routers import shared
from serving.routers.params import ParamShapes
from serving.schemas import (
    SESSION_PATTERN,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    BoostParam,
    CategoriesParam,
    ErrorMessage,
    Feed,
    InteractBody,
    Interaction,
    ModeParam,
)
from serving.sessions import SessionState

logger = logging.getLogger("recflow.serving")
STATIC = Path(__file__).resolve().parents[1] / "static"
NEWS_SOURCES = ("feeds", "mind")
"""Source kinds whose items are news stories: their catalogue's ``/`` is the news reader."""


def router(shapes: ParamShapes, news: bool = False) -> APIRouter:
    """The feed, interaction and page routes, with the app's cookie name and ``k`` bound;
    ``news``: ``/`` is the news reader rather than the item view."""
    api = APIRouter()
    page = (STATIC / ("news.html" if news else "index.html")).read_text(encoding="utf-8")
    page_js = (STATIC / "page.js").read_text(encoding="utf-8")
    CookieSession = Annotated[str | None, shapes.session_cookie_param()]

    class FeedQuery(BaseModel):
        """The query of ``GET /feed``."""

        k: int = shapes.k_field(20)
        mmr_lambda: float | None = shapes.mmr_lambda_field()
        explore: bool | None = shapes.explore_field()
        user_id: str | None = Field(
            None, min_length=1, max_length=256, description="A known user (else the session's)."
        )
        session: str | None = Field(
            None,
            pattern=SESSION_PATTERN,
            description="Session id, for clients without cookies; wins over the session cookie.",
        )
        categories: CategoriesParam = None
        mode: ModeParam = "strict"
        category_boost: BoostParam = None

    @api.get("/feed", response_model=Feed, responses=UNAVAILABLE, tags=["recommend"])
    async def feed(
        query: Annotated[FeedQuery, Query()],
        request: Request,
        response: Response,
        holder: HolderDep,
        serving: ServingDep,
        sessions: SessionsDep,
        session_cookie: CookieSession = None,
    ) -> dict[str, Any]:
        """Today's pool ranked for this reader. A session cookie (or ``?session=``) identifies
        an anonymous reader (the cookie is set on the first visit); a new session gets a diverse
        fresh pool. Each item is a story (summary, link, outlet, published time) with ``why``
        it is there in plain words."""
        bundle = holder.get()
        user_id = query.user_id
        session, known_session = shared.session_from(serving, query.session, session_cookie, response)
        # A new session has no state: looking it up would only cache an empty entry per visit.
        state = await run_in_threadpool(sessions.state, session) if known_session else SessionState(session)
        who = user_id or state.user_id
        if user_id is not None and user_id not in bundle.histories:
            raise NotFoundError(f"user {user_id!r} is not in bundle {bundle.version}")
        history, exclude, weights, known = shared.reader(serving, bundle, who, state)
        filt = filters.resolve(
            bundle,
            query.categories,
            query.mode,
            query.category_boost,
            serving.category_boost,
            ("query", "categories"),
        )
        depth, exclude = filters.widen(filt, bundle, query.k, exclude)
        p = shared.cascade_params(
            serving, depth, query.mmr_lambda, query.explore, who, session, bundle.version, len(state)
        )
        exposure: ReaderExposure = request.app.state.exposure
        result = await shared.run_cascade(
            serving,
            bundle,
            f"user {who!r}" if who else f"session {session!r}",
            history,
            p,
            min_interactions=serving.min_interactions,
            exclude=exclude,
            session_weights=weights,
            learning_rate=serving.session_learning_rate,
            use_pool=True,
            known=known or len(state) > 0,
            boost=(boost := shared.global_boost(request.app.state, bundle)),
            reader_shown=exposure.counts(reader := exposure.reader(who, session)),
            allowed=filters.allowed(filt, bundle),
        )
        result = filters.finish(filt, result, query.k)
        items = shared.listed(bundle, result)
        exposure.add(reader, [item["item_id"] for item in items])
        explained = bundle.explain(result, history, time.time())
        trending = set(boost.top.tolist()) if boost is not None else set()
        for item, idx, (topic, why, code) in zip(items, result.indices, explained, strict=True):
            if idx in trending and item["stage"] != "exploration":
                label = topic or (bundle.categories[idx][0] if bundle.categories[idx] else None)
                why = f"trending now in {label}" if label else "trending now"
            item.update(bundle.story_record(idx), topic=topic, why=why, reason_code=code)
        pool = bundle.pool
        request_id = shared.log_impression(request.app.state, "/feed", session, who, bundle, result)
        return {
            "request_id": request_id,
            "session": session,
            "user_id": who,
            "bundle_version": bundle.version,
            "pool_date": pool.pool_date if pool is not None else None,
            "strategy": result.strategy,
            "reason": result.reason,
            "session_events": len(state),
            "cascade": shared.cascade_info(result, p),
            "filter": filters.info(filt),
            "items": items,
        }

    @api.post(
        "/interact",
        response_model=Interaction,
        responses={**UNAVAILABLE, **TOO_LARGE, **UNAUTHORIZED, 409: {"model": ErrorMessage}},
        tags=["recommend"],
    )
    async def interact(
        body: Annotated[InteractBody, Body()],
        response: Response,
        holder: HolderDep,
        serving: ServingDep,
        sessions: SessionsDep,
        events: EventsDep,
        metrics: MetricsDep,
        client: ClientDep,
        session_cookie: CookieSession = None,
    ) -> dict[str, Any]:
        """Report what the reader did. The event is appended durably to the event log before
        this answer, and (``update_mode: private`` or ``global``) changes the session's next
        answers; in ``global`` it also counts toward the item's trending score for everyone.

        With an ``event_id`` (idempotency key) a retry is answered like the first time and
        neither logged nor applied again (409 while the first is still in flight). With
        ``serving.client_keys`` set, an ``X-Client-Key`` is required (401 otherwise)."""
        bundle = holder.get()
        if body.item_id not in bundle.item_index:
            raise bad_request(
                ("body", "item_id"), f"item {body.item_id!r} is not in bundle {bundle.version}", body.item_id
            )
        if body.user_id is not None and body.user_id not in bundle.histories:
            raise bad_request(
                ("body", "user_id"), f"user {body.user_id!r} is not in bundle {bundle.version}", body.user_id
            )
        if body.event_id is not None:
            kind, first = await run_in_threadpool(sessions.claim, body.event_id)
            if kind == "done":  # a retry: answer like the first time, store nothing
                assert first is not None
                shared.session_from(serving, first["session"], session_cookie, response)
                return first
            if kind == "busy":
                raise InFlightError(f"event {body.event_id!r} is still being stored; retry")
        session, _ = shared.session_from(serving, body.session, session_cookie, response)
        event = Event.new(
            session=session,
            item_id=body.item_id,
            event=body.event,
            user_id=body.user_id,
            dwell_s=body.dwell_s,
            event_id=body.event_id,
            client=client,
        )
        try:
            await run_in_threadpool(events.append, event)
        except OSError as exc:
            logger.error("event log append failed: %s", exc)
            if body.event_id is not None:
                await run_in_threadpool(sessions.release, body.event_id)
            raise EventNotStoredError(f"the event log could not store the event ({exc}); retry") from exc
        metrics.events.labels(body.event).inc()
        applied = serving.update_mode in shared.SESSION_MODES
        if applied:
            state = await run_in_threadpool(sessions.record, event)
            n_events = len(state)
        else:
            n_events = 0
        answer = {
            "event_id": event.event_id,
            "session": session,
            "applied": applied,
            "session_events": n_events,
            "update_mode": serving.update_mode,
        }
        if body.event_id is not None:
            await run_in_threadpool(sessions.settle, body.event_id, answer)
        return answer

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        """The feed page: today's stories (news) or items with like / skip buttons."""
        return HTMLResponse(page)

    @api.get("/page.js", include_in_schema=False)
    async def page_script() -> Response:
        """The helpers the feed pages share."""
        return Response(page_js, media_type="text/javascript; charset=utf-8")

    return api
