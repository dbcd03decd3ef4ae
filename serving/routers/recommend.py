"""``GET /recommend/{user_id}`` and ``POST /recommend``: the cascade for a user or an ad-hoc history.

``GET /recommend`` is the service's hottest path and is hand-tuned (measured in-process):
its query is validated in one pydantic call (:func:`parse_query`) instead of FastAPI's one
per parameter, its body is written with orjson without a response-model pass
(:func:`lean_json`), it reads the app's shared objects straight from ``app.state`` rather
than through dependencies, and the cascade runs inline or in the thread pool by its
measured cost (``shared.run_cascade``). The OpenAPI document and the 422s stay exactly
what FastAPI would produce for the declared parameters.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints' annotations,
# and the query model below is built per app, inside ``router``.
from typing import Annotated, Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from serving import filters
from serving.bundle import BundleHolder
from serving.dependencies import HolderDep, ServingDep, bad_request
from serving.routers import shared
from serving.routers.params import ParamShapes
from serving.schemas import (
    TOO_LARGE,
    UNAVAILABLE,
    VALIDATION_ERROR,
    AdHocRecommendation,
    BoostParam,
    CategoriesParam,
    ModeParam,
    Recommendation,
    RecommendBody,
)
from serving.sessions import SessionStore
from storage.settings import ServingSettings

QueryModel = TypeVar("QueryModel", bound=BaseModel)


def lean_json(payload: dict[str, Any]) -> Response:
    """``payload`` as JSON, skipping FastAPI's response-model pass.

    The hot endpoints build plain dicts whose shape the response model documents (it stays
    in the OpenAPI schema); re-validating and re-serialising them through pydantic took
    ~0.1 ms of a ~1 ms request. ``tests/test_serving_cascade.py`` checks that these bodies
    round-trip through their models unchanged, so the schema still tells the truth.
    """
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


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


def router(shapes: ParamShapes) -> APIRouter:
    """The recommend routes, with ``k`` bounded by ``shapes.max_k``."""
    api = APIRouter(tags=["recommend"])

    class RecommendQuery(BaseModel):
        """The query of ``GET /recommend/{user_id}`` (see :func:`parse_query`)."""

        k: int = shapes.k_field(10)
        mmr_lambda: float | None = shapes.mmr_lambda_field()
        explore: bool | None = shapes.explore_field()
        session: str | None = shapes.session_field()
        categories: CategoriesParam = None
        mode: ModeParam = "strict"
        category_boost: BoostParam = None

    @api.get(
        "/recommend/{user_id}",
        response_model=Recommendation,
        responses={**UNAVAILABLE, 422: VALIDATION_ERROR},
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
        state = request.app.state  # not dependencies: see the module's docstring
        serving: ServingSettings = state.settings.serving
        holder: BundleHolder = state.holder
        bundle = holder.get()
        if session is not None:
            sessions: SessionStore = state.sessions
            session_state = await run_in_threadpool(sessions.state, session)
        else:
            session_state = None
        history, exclude, weights, known = shared.reader(serving, bundle, user_id, session_state)
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
            serving, depth, query.mmr_lambda, query.explore, user_id, session, bundle.version
        )
        result = await shared.run_cascade(
            serving,
            bundle,
            f"user {user_id!r}",
            history,
            p,
            min_interactions=serving.min_interactions,
            exclude=exclude,
            session_weights=weights,
            learning_rate=serving.session_learning_rate,
            known=known or bool(session_state and len(session_state)),
            boost=shared.global_boost(state, bundle),
            allowed=filters.allowed(filt, bundle),
        )
        result = filters.finish(filt, result, query.k)
        return lean_json(
            {
                "request_id": shared.log_impression(
                    state, "/recommend/{user_id}", session, user_id, bundle, result
                ),
                "user_id": user_id,
                "bundle_version": bundle.version,
                "model": bundle.model_name,
                "strategy": result.strategy,
                "reason": result.reason,
                "session": session,
                "cascade": shared.cascade_info(result, p),
                "filter": filters.info(filt),
                "items": shared.listed(bundle, result),
            }
        )

    @api.post(
        "/recommend",
        response_model=AdHocRecommendation,
        responses={**UNAVAILABLE, **TOO_LARGE},
    )
    async def recommend_adhoc(
        body: Annotated[RecommendBody, Body()], request: Request, holder: HolderDep, serving: ServingDep
    ) -> Response:
        """Recommendations for a history the caller keeps: catalogue item ids and/or free titles.

        Each title is encoded with the bundle's text model and matched to its nearest catalogue
        item, which then counts as history. Unknown item ids are a 422 naming them.
        """
        if body.k > serving.max_k:
            raise bad_request(("body", "k"), f"k must be at most {serving.max_k}", body.k)
        for field_name in ("item_ids", "titles"):
            values = getattr(body, field_name)
            if len(values) > serving.max_history:
                raise bad_request(("body", field_name), f"at most {serving.max_history} entries", len(values))
        blank = [i for i, t in enumerate(body.titles) if not t.strip() or len(t) > 500]
        if blank:
            raise bad_request(
                ("body", "titles", str(blank[0])), "titles must be 1 to 500 non-blank characters", ""
            )
        bundle = holder.get()
        unknown = [i for i in body.item_ids if i not in bundle.item_index]
        if unknown:
            raise bad_request(
                ("body", "item_ids"),
                f"{len(unknown)} item id(s) not in bundle {bundle.version}: {unknown[:5]}",
                unknown[:5],
            )
        filt = filters.resolve(
            bundle,
            body.categories,
            body.mode,
            body.category_boost,
            serving.category_boost,
            ("body", "categories"),
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
        depth, exclude = filters.widen(filt, bundle, body.k, np.unique(history))
        p = shared.cascade_params(serving, depth, body.mmr_lambda, body.explore, *body.item_ids, *body.titles)
        result = await shared.run_cascade(
            serving,
            bundle,
            "the ad-hoc history",
            history,
            p,
            min_interactions=serving.min_interactions,
            boost=shared.global_boost(request.app.state, bundle),
            exclude=exclude,
            allowed=filters.allowed(filt, bundle),
        )
        result = filters.finish(filt, result, body.k)
        return lean_json(
            {
                "request_id": shared.log_impression(
                    request.app.state, "/recommend", None, None, bundle, result
                ),
                "bundle_version": bundle.version,
                "model": bundle.model_name,
                "strategy": result.strategy,
                "reason": result.reason,
                "resolved": resolved,
                "cascade": shared.cascade_info(result, p),
                "filter": filters.info(filt),
                "items": shared.listed(bundle, result),
            }
        )

    return api
