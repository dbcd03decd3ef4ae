"""The recflow HTTP service: recommendations from the live bundle, following ``CURRENT``.

Start it with ``recflow serve`` or ``uvicorn.run("serving.app:create_app", factory=True)``.
The service never opens the warehouse: it reads published bundles only (see
``serving.bundle``), so the pipeline can publish while it runs and the service switches to
the new bundle within ``settings.serving.reload_check_s`` seconds, without a restart.

Endpoints are ``async``: health, item and history answers are dictionary lookups, and a
sync endpoint would cost FastAPI three thread-pool hops (dependency, endpoint, response
validation). Only model scoring, which grows with the catalogue and with heavier models, is
sent to the thread pool so it never blocks the event loop. Each request takes the live bundle
once and uses only that object, so a swap in the middle of a request cannot mix versions.
"""

# No ``from __future__ import annotations`` here: FastAPI evaluates endpoint annotations
# against module globals, and ``Annotated`` aliases below close over per-app values (max_k).
import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving.bundle import BundleHolder, FeatureUnavailableError, LoadedBundle, NoBundleError, Strategy
from storage.artifacts import ArtifactStore
from storage.settings import Settings


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
    """A recommended item: its score under the strategy used, and its 1-based rank."""

    score: float
    rank: int


class Recommendation(BaseModel):
    """Top-k unseen items for a user."""

    user_id: str
    bundle_version: str
    model: str
    strategy: Strategy
    reason: str | None = Field(None, description="Why the popularity fallback was used instead of the model.")
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
    """The body of every 404 and 503."""

    detail: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorMessage}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorMessage, "description": "No bundle has been published yet."}
}


class NotFoundError(LookupError):
    """A user or item the live bundle does not know (answered 404)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (default: ``Settings()``, i.e. env and config file).

    A factory rather than a module-level app, so tests and ``uvicorn --factory`` can build
    independent instances with their own settings and bundle holder.
    """
    settings = settings if settings is not None else Settings()
    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
    holder = BundleHolder(store, settings.serving.reload_check_s)
    max_k = settings.serving.max_k
    retry_after = str(max(1, math.ceil(settings.serving.reload_check_s)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The first load runs before the first request is accepted, off the event loop.
        await asyncio.to_thread(holder.start)
        try:
            yield
        finally:
            await asyncio.to_thread(holder.stop)

    app = FastAPI(
        title="recflow",
        summary="Recommendations from the live recflow bundle.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.holder = holder

    @app.exception_handler(NoBundleError)
    async def _no_bundle(request: Request, exc: NoBundleError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": retry_after})

    @app.exception_handler(FeatureUnavailableError)
    async def _unavailable(request: Request, exc: FeatureUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    UserId = Annotated[str, Path(description="The user's id as in the source data.")]

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

    @app.get(
        "/recommend/{user_id}",
        response_model=Recommendation,
        responses=UNAVAILABLE,
        tags=["recommend"],
    )
    async def recommend(
        user_id: UserId,
        k: Annotated[int, Query(ge=1, le=max_k, description="How many items to return.")] = 10,
    ) -> dict[str, Any]:
        """Top-k items the user has not interacted with, best first.

        Known users are scored by the bundle's model; users without history get the most
        popular items, marked ``strategy: popularity_fallback`` with a ``reason``.
        """
        bundle = holder.get()
        ranked = await run_in_threadpool(bundle.recommend, user_id, k)
        items = [
            {**bundle.item_record(idx), "score": score, "rank": rank}
            for rank, (idx, score) in enumerate(
                zip(ranked.indices.tolist(), ranked.scores.tolist(), strict=True), start=1
            )
        ]
        return {
            "user_id": user_id,
            "bundle_version": bundle.version,
            "model": bundle.model_name,
            "strategy": ranked.strategy,
            "reason": ranked.reason,
            "items": items,
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
        k: Annotated[int, Query(ge=1, le=max_k, description="How many items to return.")] = 10,
    ) -> dict[str, Any]:
        """Items whose text is nearest to this item's (cosine over sentence-transformer vectors)."""
        bundle = holder.get()
        idx = bundle.item_index.get(item_id)
        if idx is None:
            raise NotFoundError(f"item {item_id!r} is not in bundle {bundle.version}")
        rows, scores = await run_in_threadpool(bundle.similar, idx, k)
        return _item_list(bundle, rows, scores, query=item_id)

    @app.get("/search", response_model=ItemList, responses=UNAVAILABLE, tags=["catalogue"])
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=500, description="Free text to search for.")],
        k: Annotated[int, Query(ge=1, le=max_k, description="How many items to return.")] = 10,
    ) -> dict[str, Any]:
        """Items whose text is nearest to the query text."""
        if not q.strip():
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "q"), "msg": "q must not be blank", "input": q}]
            )
        bundle = holder.get()
        rows, scores = await run_in_threadpool(bundle.search_text, q, k)
        return _item_list(bundle, rows, scores, query=q)

    def _item_list(bundle: LoadedBundle, rows: Any, scores: Any, query: str) -> dict[str, Any]:
        items = [
            {**bundle.item_record(int(i)), "score": float(sc), "rank": r}
            for r, (i, sc) in enumerate(zip(rows.tolist(), scores.tolist(), strict=True), start=1)
        ]
        return {"query": query, "bundle_version": bundle.version, "items": items}

    @app.post("/admin/reload", response_model=ReloadResult, responses=UNAVAILABLE, tags=["admin"])
    async def reload() -> dict[str, Any]:
        """Check ``CURRENT`` now instead of at the next interval (retries refused bundles)."""
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
