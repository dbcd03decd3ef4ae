"""Request and response bodies of every endpoint of the service.

They are the service's OpenAPI documentation and its first line of input checking: a body
that does not fit gets a 422 naming the field, before any handler runs. The hot endpoints
return plain dicts without a response-model pass (``serving.routers.recommend.lean_json``);
``tests/test_serving_cascade.py`` checks those bodies round-trip through the models here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.cascade import Stage, Strategy

SESSION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"


class Item(BaseModel):
    """An item as the catalogue describes it."""

    item_id: str
    title: str | None
    categories: list[str]
    year: int | None


# The one model of a scored item, whichever endpoint lists it (recommendations, the feed,
# similar items, search): every list names the stage that placed each item.
class CascadeItem(Item):
    """A listed item: its score under the stage that placed it, its rank and that stage."""

    score: float
    rank: int
    stage: Stage = Field(
        description="What put it here: ranker (top by relevance), mmr (pulled in for diversity), "
        "exploration, fresh_popular / popular (fallbacks), similar, search, fresh (a story newer "
        "than the pool, from a delta: the freshness slot)."
    )


class CascadeInfo(BaseModel):
    """How the list was made."""

    pipeline: list[str] = Field(description="The stages that ran, in order.")
    candidates: int = Field(description="Candidates the ranker saw.")
    duplicates_removed: int = Field(description="Near-duplicates dropped while diversifying.")
    mmr_lambda: float


class RecommendBody(BaseModel):
    """An ad-hoc history for callers that keep their own user state."""

    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(
        default_factory=list, description="Items the user interacted with, oldest first (catalogue ids)."
    )
    titles: list[str] = Field(
        default_factory=list,
        description="Free titles the user liked; each is encoded and matched to its nearest catalogue item.",
    )
    k: int = Field(10, ge=1, description="How many items to return.")
    mmr_lambda: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, description="MMR trade-off; default from settings."
    )
    explore: bool | None = Field(None, description="Reserve an exploration slot; default from settings.")


class ResolvedTitle(BaseModel):
    """A free title and the catalogue item it was matched to."""

    title: str
    item_id: str
    matched_title: str | None
    similarity: float


class AdHocRecommendation(BaseModel):
    """Recommendations for an ad-hoc history."""

    request_id: str | None = Field(
        None, description="This answer's id: its impression in the log (null only for old servers)."
    )

    bundle_version: str
    model: str
    strategy: Strategy
    reason: str | None = None
    resolved: list[ResolvedTitle] = Field(default_factory=list)
    cascade: CascadeInfo
    items: list[CascadeItem]


class FeedItem(CascadeItem):
    """A feed entry: a story with what a reader needs to decide to open it, and why it is
    here. Story fields are null where the catalogue has none (e.g. MovieLens)."""

    summary: str | None = Field(None, description="The story's summary, as its outlet gave it.")
    link: str | None = Field(None, description="The story's canonical URL.")
    outlet: str | None = Field(None, description="The outlet that carried it (the representative one).")
    published: str | None = Field(None, description="When it was published: ISO 8601, UTC.")
    topic: str | None = Field(None, description="Its topic in today's pool.")
    why: str | None = Field(
        None,
        description="Why it is here, in plain words: 'because you read “…”', 'trending in sports', "
        "'top story in world', 'new this hour', 'something different: science'.",
    )
    reason_code: str | None = Field(
        None, description="The pool's machine-readable reason (freshness, outlets, topic rank)."
    )


class Feed(BaseModel):
    """Today's pool ranked for this reader (or diversified fresh items for a new session)."""

    request_id: str | None = Field(
        None, description="This answer's id: its impression in the log (null only for old servers)."
    )

    session: str
    user_id: str | None
    bundle_version: str
    pool_date: str | None = Field(description="Date of today's pool; null when the bundle has none.")
    strategy: Strategy
    reason: str | None = None
    session_events: int
    cascade: CascadeInfo
    items: list[FeedItem]


class InteractBody(BaseModel):
    """What the reader did with an item."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=256, description="The item's catalogue id.")
    event: Literal["click", "skip", "like", "share", "dwell"]
    dwell_s: float | None = Field(
        None, ge=0.0, le=86_400.0, allow_inf_nan=False, description="Seconds spent (dwell events)."
    )
    session: str | None = Field(
        None, pattern=SESSION_PATTERN, description="Session id; default: the session cookie, else a new one."
    )
    user_id: str | None = Field(
        None, min_length=1, max_length=256, description="A known user of the bundle this session belongs to."
    )
    event_id: str | None = Field(
        None,
        pattern=EVENT_ID_PATTERN,
        description="Idempotency key (e.g. a uuid4 hex): a retry with the same id is answered like "
        "the first and is neither logged nor applied again. Default: a new id.",
    )


class Interaction(BaseModel):
    """An accepted event: durable in the event log before this answer was sent."""

    accepted: Literal[True] = True
    event_id: str
    session: str
    applied: bool = Field(
        description="Whether it changed the session's state (update_mode private or global)."
    )
    session_events: int
    update_mode: Literal["private", "global", "none"]


class Category(BaseModel):
    name: str
    items: int


class Categories(BaseModel):
    bundle_version: str
    categories: list[Category]


class UserSummary(BaseModel):
    user_id: str
    interactions: int


class UserPage(BaseModel):
    """Known users in id order, one page."""

    bundle_version: str
    total: int
    offset: int
    limit: int
    users: list[UserSummary]


class MatchedCategory(BaseModel):
    name: str
    weight: float


class SearchResult(BaseModel):
    """Items nearest to a steered query, best first."""

    query: str
    bundle_version: str
    categories: list[MatchedCategory] = Field(
        description="Categories the query resembles and how much each steered it."
    )
    taste_weight: float
    items: list[CascadeItem]


class Counts(BaseModel):
    """Sizes of the data the live bundle was built from."""

    users: int
    items: int
    interactions: int


class Health(BaseModel):
    """Which bundle is live; ``degraded`` when ``CURRENT`` names a bundle that was refused."""

    status: Literal["ok", "degraded"]
    catalogue: str = Field(description="The catalogue this process serves (one process per catalogue).")
    bundle_version: str
    model: str
    counts: Counts
    loaded_at: datetime
    detail: str | None = Field(None, description="Why the status is degraded, if it is.")
    delta_seq: int | None = Field(
        None, description="The delta of the live bundle served (fresh stories since it), if any."
    )
    fresh_items: int = Field(0, description="Stories served from deltas, not yet in a bundle.")
    pool_date: str | None = Field(None, description="The daily pool served (from the bundle or a delta).")


class Recommendation(BaseModel):
    """Top-k unseen items for a user."""

    request_id: str | None = Field(
        None, description="This answer's id: its impression in the log (null only for old servers)."
    )

    user_id: str
    bundle_version: str
    model: str
    strategy: Strategy
    reason: str | None = Field(None, description="Why the popularity fallback was used instead of the model.")
    session: str | None = Field(None, description="The session whose private state was applied.")
    cascade: dict[str, Any] | None = Field(
        None, description="pipeline (stages run), candidates, duplicates_removed, mmr_lambda."
    )
    items: list[CascadeItem]


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
    items: list[CascadeItem]


class ErrorMessage(BaseModel):
    """The body of every 401, 404, 413 and 503."""

    detail: str


# Query parameters that do not depend on settings (those that do: serving.routers.params) ----
class UserPageQuery(BaseModel):
    """The page of ``GET /users``."""

    offset: int = Field(0, ge=0, le=10**9, description="Users to skip.")
    limit: int = Field(50, ge=1, le=1000, description="Users per page.")


# Extra responses, as FastAPI's ``responses=`` takes them --------------------------------------
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorMessage}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorMessage, "description": "No bundle has been published yet."}
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {413: {"model": ErrorMessage}}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"model": ErrorMessage}}
VALIDATION_ERROR: dict[str, Any] = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}
"""The 422 FastAPI documents for routes whose parameters it validates, for the one route that
validates its own query (``GET /recommend``); the schema is FastAPI's, defined by the others."""
