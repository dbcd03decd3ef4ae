"""Browsing the live bundle: items, their nearest neighbours, steered text search, users,
their histories and the categories.

Lookups answer on the event loop (dictionary reads); vector searches and title encoding go
to the thread pool.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints' annotations,
# and the parameter declarations below are built per app, inside ``router``.
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving import filters
from serving.cascade import session_delta
from serving.dependencies import HolderDep, NotFoundError, ServingDep, SessionsDep
from serving.routers import shared
from serving.routers.params import ParamShapes
from serving.schemas import (
    NOT_FOUND,
    UNAVAILABLE,
    BoostParam,
    Categories,
    CategoriesParam,
    History,
    ItemDetail,
    ModeParam,
    SearchResult,
    SimilarList,
    UserPage,
    UserPageQuery,
)

UserId = Annotated[str, Path(description="The user's id as in the source data.")]
ItemId = Annotated[str, Path(description="The item's id as in the source data.")]


def router(shapes: ParamShapes) -> APIRouter:
    """The catalogue routes, with ``k`` bounded by ``shapes.max_k``."""
    api = APIRouter(tags=["catalogue"])
    K = Annotated[int, shapes.k_query()]

    class SearchQuery(BaseModel):
        """The query of ``GET /search``."""

        q: str = Field(min_length=1, max_length=500, description="Free text to search for.")
        k: int = shapes.k_field(10)
        category_weight: float = Field(
            0.3,
            ge=0.0,
            le=1.0,
            description="How far the query is steered toward the categories it resembles.",
        )
        taste_weight: float = Field(
            0.0, ge=0.0, le=1.0, description="How much the user's (or session's) taste is blended in."
        )
        user_id: str | None = Field(
            None, min_length=1, max_length=256, description="Whose taste to blend in."
        )
        session: str | None = shapes.session_field()
        categories: CategoriesParam = None
        mode: ModeParam = "strict"
        category_boost: BoostParam = None

    @api.get("/users/{user_id}/history", response_model=History, responses={**NOT_FOUND, **UNAVAILABLE})
    async def history(
        user_id: UserId,
        holder: HolderDep,
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
        return {"user_id": user_id, "bundle_version": bundle.version, "total": total, "items": items}

    @api.get("/users", response_model=UserPage, responses=UNAVAILABLE)
    async def users(page: Annotated[UserPageQuery, Query()], holder: HolderDep) -> dict[str, Any]:
        """Known users of the live bundle in id order, a page at a time."""
        bundle = holder.get()
        page_ids = bundle.user_order[page.offset : page.offset + page.limit]
        return {
            "bundle_version": bundle.version,
            "total": len(bundle.user_order),
            "offset": page.offset,
            "limit": page.limit,
            "users": [{"user_id": u, "interactions": len(bundle.histories[u])} for u in page_ids],
        }

    @api.get("/categories", response_model=Categories, responses=UNAVAILABLE)
    async def categories(holder: HolderDep) -> dict[str, Any]:
        """Every category of the catalogue with its number of items, largest first."""
        bundle = holder.get()
        return {
            "bundle_version": bundle.version,
            "categories": [
                {"name": n, "items": c}
                for n, c in zip(bundle.category_names, bundle.category_counts, strict=True)
            ],
        }

    @api.get("/items/{item_id}", response_model=ItemDetail, responses={**NOT_FOUND, **UNAVAILABLE})
    async def item(item_id: ItemId, holder: HolderDep) -> dict[str, Any]:
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

    @api.get("/items/{item_id}/similar", response_model=SimilarList, responses={**NOT_FOUND, **UNAVAILABLE})
    async def similar(item_id: ItemId, holder: HolderDep, k: K = 10) -> dict[str, Any]:
        """Items whose text is nearest to this item's (cosine over sentence-transformer vectors)."""
        bundle = holder.get()
        idx = bundle.item_index.get(item_id)
        if idx is None:
            raise NotFoundError(f"item {item_id!r} is not in bundle {bundle.version}")
        rows, scores = await run_in_threadpool(bundle.similar, idx, k)
        listed = shared.item_list(bundle, rows, scores, query=item_id, stage="similar")
        for item, row in zip(listed["items"], rows.tolist(), strict=True):
            item.update(bundle.story_record(int(row)))
        return listed

    @api.get("/search", response_model=SearchResult, responses=UNAVAILABLE)
    async def search(
        query: Annotated[SearchQuery, Query()], holder: HolderDep, serving: ServingDep, sessions: SessionsDep
    ) -> dict[str, Any]:
        """Items nearest to the query's text intent: the query vector, steered toward the
        categories it resembles and optionally blended with the user's taste."""
        q, user_id, session, taste_weight = query.q, query.user_id, query.session, query.taste_weight
        if not q.strip():
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "q"), "msg": "q must not be blank", "input": q}]
            )
        bundle = holder.get()
        if user_id is not None and user_id not in bundle.histories:
            raise NotFoundError(f"user {user_id!r} is not in bundle {bundle.version}")
        filt = filters.resolve(
            bundle,
            query.categories,
            query.mode,
            query.category_boost,
            serving.category_boost,
            ("query", "categories"),
        )
        state = await run_in_threadpool(sessions.state, session) if session is not None else None
        taste = None
        if taste_weight > 0 and bundle.vectors is not None:
            history, _, weights, _ = shared.reader(serving, bundle, user_id, state)
            taste = bundle.vectors[history].mean(axis=0) if len(history) else None
            if weights:
                pairs = [(bundle.item_index[i], w) for i, w in weights if i in bundle.item_index]
                delta = session_delta(bundle.vectors, pairs, serving.session_learning_rate)
                if delta is not None:
                    taste = delta if taste is None else taste / max(np.linalg.norm(taste), 1e-12) + delta
        rows, scores, matched = await run_in_threadpool(
            bundle.search_steered,
            q,
            query.k,
            query.category_weight,
            taste,
            taste_weight,
            among=None if filt is None else filt.members,
            boost=None if filt is None or filt.mode == "strict" else filt.boost,
        )
        listed = shared.item_list(bundle, rows, scores, query=q, stage="search")
        return {
            **listed,
            "categories": [{"name": n, "weight": w} for n, w in matched],
            "taste_weight": taste_weight if taste is not None else 0.0,
            "filter": filters.info(filt),
        }

    return api
