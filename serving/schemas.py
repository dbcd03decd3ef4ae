"""Request and response bodies of the cascade, feed, interaction and browse endpoints.

They are the service's OpenAPI documentation and its first line of input checking: a body
that does not fit gets a 422 naming the field, before any handler runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.cascade import Stage, Strategy

SESSION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class CascadeItem(BaseModel):
    """A listed item: its score under the stage that placed it, its rank and that stage."""

    item_id: str
    title: str | None
    categories: list[str]
    year: int | None
    score: float
    rank: int
    stage: Stage = Field(
        description="What put it here: ranker (top by relevance), mmr (pulled in for diversity), "
        "exploration, fresh_popular / popular (fallbacks), similar, search."
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
        None, ge=0.0, le=1.0, description="MMR trade-off; default from settings."
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

    bundle_version: str
    model: str
    strategy: Strategy
    reason: str | None = None
    resolved: list[ResolvedTitle] = Field(default_factory=list)
    cascade: CascadeInfo
    items: list[CascadeItem]


class FeedItem(CascadeItem):
    """A feed entry; ``topic`` and ``why`` come from today's pool when the bundle has one."""

    topic: str | None = None
    why: str | None = None


class Feed(BaseModel):
    """Today's pool ranked for this reader (or diversified fresh items for a new session)."""

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
    dwell_s: float | None = Field(None, ge=0.0, le=86_400.0, description="Seconds spent (dwell events).")
    session: str | None = Field(
        None, pattern=SESSION_PATTERN, description="Session id; default: the session cookie, else a new one."
    )
    user_id: str | None = Field(
        None, min_length=1, max_length=256, description="A known user of the bundle this session belongs to."
    )


class Interaction(BaseModel):
    """An accepted event: durable in the event log before this answer was sent."""

    accepted: Literal[True] = True
    event_id: str
    session: str
    applied: bool = Field(description="Whether it changed the session's state (update_mode private).")
    session_events: int
    update_mode: Literal["private", "none"]


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
