"""``POST /recommend/intent``: a list for a sentence ("something to get my blood pumping"), and
the movie page at ``/movies`` that asks for one.

The reading and scoring are ``serving.intent``'s; this module checks the request, runs them
off the event loop (the sentence is encoded by the bundle's text model) and says in the
answer what was read: genres, moods and what the text ruled out.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints' annotations,
# and the body model below is built per app, inside ``router``.
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Body
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from serving import intent
from serving.bundle import LoadedBundle
from serving.dependencies import HolderDep, NotFoundError, ServingDep, bad_request
from serving.routers.params import ParamShapes
from serving.schemas import NOT_FOUND, UNAVAILABLE, Item
from storage.settings import IntentSettings, ServingSettings

STATIC = Path(__file__).resolve().parents[1] / "static"


class IntentWeights(BaseModel):
    """Relative weights of the four parts (divided by their sum); a missing one takes
    its default from ``serving.intent``."""

    model_config = ConfigDict(extra="forbid")

    user: float | None = Field(None, ge=0.0, le=1.0, description="The user's model score.")
    genre: float | None = Field(None, ge=0.0, le=1.0, description="Match to the genres read.")
    popularity: float | None = Field(None, ge=0.0, le=1.0, description="How often the item was chosen.")
    similarity: float | None = Field(
        None, ge=0.0, le=1.0, description="Cosine of the text's vector to the item's."
    )


class ReadGenre(BaseModel):
    name: str
    weight: float = Field(description="How strongly the text asks for it, 0–1.")
    source: str | None = Field(description="named: <word> · selected · mood: <mood> · similar to the text.")


class ReadMood(BaseModel):
    name: str
    strength: float
    source: Literal["keyword", "similarity"]
    matched: str | None = Field(description="The keyword that read it (null when read by similarity).")


class Suppressed(BaseModel):
    name: str
    kind: Literal["mood", "genre"]
    because: str = Field(description="The words that ruled it out (e.g. 'nothing scary').")


class IntentReading(BaseModel):
    """What the service read from the text."""

    genres: list[ReadGenre]
    moods: list[ReadMood]
    suppressed: list[Suppressed] = Field(description="Moods and genres the text ruled out.")
    encoded: str = Field(description="The text as encoded: without its negated words.")


class IntentItem(Item):
    score: float
    rank: int
    parts: dict[str, float] = Field(description="Each part's weighted share of the score.")
    why: str


class IntentResult(BaseModel):
    """Items for a sentence, best first, with what was read from it."""

    text: str
    user_id: str | None
    bundle_version: str
    read: IntentReading
    weights: dict[str, float] = Field(
        description="The weights applied, summing to 1 (user and similarity are 0 when they cannot apply)."
    )
    candidates: int
    items: list[IntentItem]


def router(shapes: ParamShapes) -> APIRouter:
    """The intent route (``k`` bounded by ``shapes.max_k``) and the movie page."""
    api = APIRouter()
    page = (STATIC / "movies.html").read_text(encoding="utf-8")

    class IntentBody(BaseModel):
        """What the reader is in the mood for, in their own words."""

        model_config = ConfigDict(extra="forbid")

        text: str = Field(
            min_length=1, max_length=500, description="A sentence, e.g. 'space adventure with aliens'."
        )
        user_id: str | None = Field(
            None, min_length=1, max_length=256, description="Whose model score to blend in."
        )
        k: int = shapes.k_field(10)
        weights: IntentWeights | None = None
        categories: list[str] = Field(
            default_factory=list, max_length=50, description="Genres picked on the page."
        )
        mode: Literal["soft", "strict"] = Field(
            "soft", description="soft: picked genres count as named; strict: only items of those genres."
        )

    @api.post(
        "/recommend/intent",
        tags=["recommend"],
        response_model=IntentResult,
        responses={**NOT_FOUND, **UNAVAILABLE},
    )
    async def recommend_intent(
        body: Annotated[IntentBody, Body()], holder: HolderDep, serving: ServingDep
    ) -> dict[str, Any]:
        """Items for a sentence: the genres it names or implies, the moods it reads (an affect
        lexicon; "not scary" rules horror out), its vector, popularity and the user's model
        score, blended by ``weights``. The answer says what was read and why each item is listed.
        """
        if not body.text.strip():
            raise bad_request(("body", "text"), "text must not be blank", body.text)
        bundle = holder.get()
        if body.user_id is not None and body.user_id not in bundle.histories:
            raise NotFoundError(f"user {body.user_id!r} is not in bundle {bundle.version}")
        unknown = [c for c in body.categories if c not in set(bundle.category_names)]
        if unknown:
            raise bad_request(
                ("body", "categories"),
                f"unknown categories {unknown[:5]}; GET /categories lists bundle {bundle.version}'s",
                unknown[:5],
            )
        weights = _weights(serving.intent, body.weights)
        if sum(weights.values()) <= 0:
            raise bad_request(("body", "weights"), "at least one weight must be above 0", weights)
        return await run_in_threadpool(_answer, bundle, serving, body, weights)

    def _answer(
        bundle: LoadedBundle, serving: ServingSettings, body: Any, weights: dict[str, float]
    ) -> dict[str, Any]:
        space = intent.intent_space(bundle)
        strict = body.mode == "strict" and bool(body.categories)
        reading = intent.read(
            body.text, space, serving.intent, bundle._encode, None if strict else body.categories
        )
        user_scores = exclude = None
        if body.user_id is not None:
            history = bundle.histories[body.user_id]
            user_scores = np.asarray(bundle.model.score([history])[0], dtype=np.float64)
            exclude = np.unique(history)
        try:
            scored = intent.score(
                space,
                reading,
                weights,
                body.k,
                user_scores=user_scores,
                exclude=exclude,
                strict=body.categories if strict else None,
            )
        except ValueError as exc:
            raise bad_request(("body", "weights"), str(exc), weights) from None
        items = []
        for rank, (idx, value) in enumerate(
            zip(scored.indices.tolist(), scored.scores.tolist(), strict=True), start=1
        ):
            contrib = {p: round(float(scored.parts[p][rank - 1]), 4) for p in intent.PARTS}
            items.append(
                {
                    **bundle.item_record(idx),
                    "score": round(float(value), 4),
                    "rank": rank,
                    "parts": contrib,
                    "why": intent.why(space, reading, idx, contrib, body.user_id),
                }
            )
        return {
            "text": body.text,
            "user_id": body.user_id,
            "bundle_version": bundle.version,
            "read": {
                "genres": reading.genres,
                "moods": reading.moods,
                "suppressed": reading.suppressed,
                "encoded": reading.cleaned,
            },
            "weights": {p: round(v, 4) for p, v in scored.weights.items()},
            "candidates": scored.candidates,
            "items": items,
        }

    @api.get("/movies", response_class=HTMLResponse, include_in_schema=False)
    async def movies_page(serving: ServingDep) -> HTMLResponse:
        """The movie page: a user, genres, a prompt and the weights' sliders (which start at
        the configured defaults)."""
        defaults = serving.intent
        html = page
        for name in ("user_weight", "genre_weight", "popularity_weight", "similarity_weight"):
            html = html.replace("{{" + name + "}}", str(getattr(defaults, name)))
        return HTMLResponse(html)

    return api


def _weights(defaults: IntentSettings, given: IntentWeights | None) -> dict[str, float]:
    """The request's weights, each missing one from the settings."""
    base = {
        "user": defaults.user_weight,
        "genre": defaults.genre_weight,
        "popularity": defaults.popularity_weight,
        "similarity": defaults.similarity_weight,
    }
    if given is not None:
        base.update({p: v for p, v in given.model_dump().items() if v is not None})
    return base
