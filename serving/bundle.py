"""Published bundles held in memory, and the holder that follows ``CURRENT`` without restarts.

Why everything is read into memory: a bundle directory may be deleted by retention (or
rolled away from) while the service runs, and DuckDB would keep a file handle open for the
life of a connection. So ``catalog.duckdb`` is opened read-only, read completely and closed;
the request path then touches only numpy arrays and Python lists, never DuckDB or the disk.
The exception is size: item vectors and index files above ``MAP_ABOVE_BYTES`` are
memory-mapped (bundle files are never rewritten in place, and a deleted file's pages stay
valid while mapped), so the service's worker processes share one copy in the page cache.

Why the swap is safe: a :class:`LoadedBundle` is never mutated after it is built. The holder
replaces its single reference to the live bundle in one assignment (atomic in CPython), and a
request fetches that reference once at its start, so an in-flight request finishes on the
bundle it began with while new requests see the new one. Nothing is ever half-swapped.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.ann import ItemIndex
from models.base import Recommender
from models.lexicon import Lexicon, story_texts
from models.news_ranker import FeatureMismatch, ItemFacts, NewsRankStage, is_news_ranker
from models.news_ranker import unit_rows as news_unit_rows
from models.ranking import top_k
from models.registry import load_model
from serving.cascade import (
    CascadeParams,
    CascadeResult,
    ItemBoost,
    ModelRanker,
    RankStage,
    RetrievalSpace,
    Stage,
    diversify,
    load_rank_stage,
    minmax,
    not_in,
    personalized,
    pin_threads,
    retrieval_space,
    session_delta,
    unit_rows,
)
from storage.artifacts import MANIFEST, ArtifactStore, BundleError
from storage.deltas import Delta, DeltaError, latest_seq, read_delta
from storage.settings import ServingSettings

logger = logging.getLogger("recflow.serving")

CATALOG = "catalog.duckdb"
MAP_ABOVE_BYTES = 1 << 29
"""Item vectors or an index file larger than this (512 MiB) are memory-mapped, not read: at
5,000,000 64-d items each is 1.3 GB, which every uvicorn worker would otherwise hold apart.
Smaller bundles (MovieLens, the 500k bench) are read into memory as before."""
MODEL_DIR = "model"
RUN_NIGHTLY_HINT = "run `recflow run nightly` to build and publish one"

Strategy = Literal["personalized", "fresh_popular_fallback", "popularity_fallback"]


class NoBundleError(RuntimeError):
    """No bundle is loaded, so nothing can be served yet (the app answers 503)."""


class FeatureUnavailableError(RuntimeError):
    """The live bundle lacks what a request needs (e.g. no item index): the app answers 503."""


@dataclass(frozen=True)
class Ranked:
    """One recommendation list as item indices, best first, with the reason it was chosen."""

    strategy: Strategy
    indices: np.ndarray
    scores: np.ndarray
    reason: str | None = None


@dataclass(frozen=True, eq=False)
class DailyPool:
    """Today's pool (contract C2) as item indices in the pipeline's rank order."""

    pool_date: str
    indices: np.ndarray
    """Item indices, best first."""
    topics: list[str | None]
    reasons: list[str | None]
    """The harvest's machine-readable reason per row (freshness, outlets, topic rank...)."""
    dropped: int = 0
    """Pool rows naming items the catalogue does not hold (skipped, logged at load)."""
    whys: list[str | None] = field(default_factory=list)
    """Each row's reason in plain words: "top story in <topic>" for the best of its topic in
    the pool, "trending in <topic>" for the others; None without a topic."""
    position: dict[int, int] = field(default_factory=dict)
    """Item index → its row, so the feed finds a listed item's pool row in O(1)."""


@dataclass(frozen=True, eq=False)
class LoadedBundle:
    """Everything one bundle serves, in memory, never mutated after :func:`load_bundle`.

    Item metadata is also kept as plain Python lists (``item_ids``, ``titles``...) because
    building a response from a list index is far cheaper than a DataFrame lookup per item.
    """

    version: str
    path: Path
    manifest: dict[str, Any]
    items: pd.DataFrame
    """``items`` of ``catalog.duckdb``; row ``i`` is the model's item index ``i``."""
    item_index: dict[str, int]
    """item_id → item index (the model's column)."""
    histories: dict[str, np.ndarray]
    """user_id → item indices the user interacted with, in time order (oldest first)."""
    popularity: np.ndarray
    """Interactions per item index over the whole bundle."""
    popular_order: np.ndarray
    """Item indices by popularity, most popular first (ties: lower index first)."""
    popular_rank: np.ndarray
    """Position of each item in ``popular_order``; the tie-break between equal model scores."""
    model: Recommender
    item_ids: list[str]
    titles: list[str | None]
    categories: list[list[str]]
    years: list[int | None]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    vectors: np.ndarray | None = None
    """Item text vectors, row ``i`` for item index ``i`` (None when the bundle has none)."""
    index: ItemIndex | None = None
    """FAISS index over ``vectors``; its rows are item indices."""
    text_model: str | None = None
    """The text model that made ``vectors``; queries must be encoded with the same one."""
    cascade_ms: float = float("inf")
    """p90 CPU time of one user's cascade, measured by :func:`warm_up` at load (inf: not measured)."""
    warm_history: int = 0
    """The longest history :func:`warm_up` measured: requests far beyond it may cost more."""
    ranker: RankStage | None = None
    """The cascade's rank stage (the bundle's ``ranker/`` or its model); None: the model."""
    ranker_name: str = "model"
    retrieval: RetrievalSpace | None = None
    """Where candidates come from; None when the bundle has no vectors (rank all items)."""
    pool: DailyPool | None = None
    """Today's pool (C2) when the bundle's catalog has a ``daily_pool`` table."""
    category_names: list[str] = field(default_factory=list)
    """Categories by number of items, most first."""
    category_counts: list[int] = field(default_factory=list)
    category_centroids: np.ndarray | None = None
    """(n_categories, d) unit mean text vector per category, row i for ``category_names[i]``."""
    user_order: list[str] = field(default_factory=list)
    """Known user ids, sorted: the stable order of ``GET /users`` pages."""
    unit_vectors: np.ndarray | None = None
    """What MMR and de-duplication compare, unit rows: text vectors, else retrieval vectors."""
    summaries: list[str | None] = field(default_factory=list)
    """A story's summary (the feed's description), per item index; None where there is none."""
    links: list[str | None] = field(default_factory=list)
    """The canonical URL per item index."""
    outlets: list[str | None] = field(default_factory=list)
    """The representative outlet's name per item index (None for loaded catalogues)."""
    published: list[str | None] = field(default_factory=list)
    """Published time per item index as ISO 8601 UTC (``2026-11-26T09:14:00Z``), or None."""
    published_s: np.ndarray | None = None
    """Published time per item index in epoch seconds (NaN: unknown), for "new this hour"."""
    base_items: int | None = None
    """Items the model, ranker and retrieval space know (rows ``0..base_items-1``); the rows
    after them came from a delta (:func:`apply_delta`). None: no delta, all rows are the model's."""
    delta_seq: int | None = None
    """The delta of this bundle's version applied, or None."""
    fresh: np.ndarray | None = None
    """Delta stories newer than the pool's harvest and not in it: the freshness slot's candidates."""
    fresh_stage: NewsRankStage | None = None
    """The news rank stage over every row, delta stories included (their NRMS vectors came with
    the delta): what ranks the freshness slot. None: cosine to recent reads plus recency."""

    @property
    def model_items(self) -> int:
        """How many items the model scores (delta stories beyond them are ranked by text)."""
        return self.n_items if self.base_items is None else self.base_items

    @property
    def rank_stage(self) -> RankStage:
        if self.ranker is not None:
            return self.ranker
        return ModelRanker(self.model)

    @property
    def diversity_vectors(self) -> np.ndarray | None:
        """What MMR and de-duplication compare (unit rows), or None without vectors."""
        return self.unit_vectors

    def indices_of(self, item_ids: list[str]) -> np.ndarray:
        """Item indices of the ids the catalogue knows (unknown ones are skipped)."""
        index = self.item_index
        return np.fromiter((index[i] for i in item_ids if i in index), dtype=np.int64)

    def recommend_for(
        self,
        who: str,
        history: np.ndarray,
        params: CascadeParams,
        *,
        min_interactions: int,
        exclude: np.ndarray | None = None,
        session_weights: list[tuple[str, float]] | None = None,
        learning_rate: float = 0.0,
        extra_vectors: np.ndarray | None = None,
        use_pool: bool = False,
        known: bool = True,
        boost: ItemBoost | None = None,
        reader_shown: Mapping[str, int] | None = None,
        allowed: np.ndarray | None = None,
    ) -> CascadeResult:
        """One reader's list: :meth:`_recommend_model`, plus the freshness slot in the feed.

        ``allowed`` (sorted item indices, a strict category filter's) limits every path of
        the cascade to those items; None: every item not in ``exclude``.

        ``reader_shown`` (item id → times already listed to this reader) feeds the news
        ranker's ``reshown`` feature; other rank stages do not read it.

        Delta stories (rows from ``model_items`` on) are unknown to the model: read ones count
        as history through their text vectors (when retrieval is in text space), and the feed
        (``use_pool``) gives the best of :attr:`fresh` a share of the list (:meth:`_fresh_slot`).
        """
        base_n = self.model_items
        exclude = np.unique(history) if exclude is None else exclude
        if base_n == self.n_items:
            return self._recommend_model(
                who, history, params, min_interactions=min_interactions, exclude=exclude,
                session_weights=session_weights, learning_rate=learning_rate,
                extra_vectors=extra_vectors, use_pool=use_pool, known=known, boost=boost,
                reader_shown=reader_shown, allowed=allowed,
            )  # fmt: skip
        history = np.asarray(history, dtype=np.int64)
        read_fresh = history[history >= base_n]
        text_space = self.retrieval is not None and self.retrieval.source == "text"
        if len(read_fresh) and self.vectors is not None and text_space:
            more = self.vectors[read_fresh]
            extra_vectors = more if extra_vectors is None else np.concatenate([extra_vectors, more])
        if session_weights:
            index = self.item_index
            session_weights = [(i, w) for i, w in session_weights if index.get(i, base_n) < base_n]
        result = self._recommend_model(
            who,
            history[history < base_n],
            params,
            min_interactions=min_interactions,
            exclude=exclude[exclude < base_n],
            session_weights=session_weights,
            learning_rate=learning_rate,
            extra_vectors=extra_vectors,
            use_pool=use_pool,
            known=known,
            boost=boost,
            reader_shown=reader_shown,
            allowed=None if allowed is None else allowed[allowed < base_n],
        )
        if use_pool:
            self._fresh_slot(result, history, exclude, params, time.time(), reader_shown, allowed)
        return result

    def _fresh_slot(
        self,
        result: CascadeResult,
        history: np.ndarray,
        exclude: np.ndarray,
        params: CascadeParams,
        now_s: float,
        reader_shown: Mapping[str, int] | None = None,
        allowed: np.ndarray | None = None,
    ) -> None:
        """Give up to :data:`FRESH_SHARE` of the list to stories newer than the pool (in place).

        They are ranked by the news rank stage (NRMS score, age, topic... as for the model's
        stories) when the delta carried NRMS vectors (:attr:`fresh_stage`), else by cosine to
        the reader's recent reads (none: 0) plus recency (halves every
        :data:`FRESH_HALF_LIFE_H` hours), and interleaved from the second position on,
        so a big story at noon reaches readers before tomorrow's bundle. Exact search: the
        fresh stories of a day are few.
        """
        fresh, vectors = self.fresh, self.unit_vectors
        if fresh is None or not len(fresh) or vectors is None:
            return
        cand = fresh[~np.isin(fresh, exclude) & ~np.isin(fresh, np.asarray(result.indices, dtype=np.int64))]
        if allowed is not None:
            cand = cand[np.isin(cand, allowed)]
        if not len(cand):
            return
        if self.fresh_stage is not None:
            stage = self._for_reader(self.fresh_stage, reader_shown)
            score = np.asarray(stage.score(history, cand), dtype=np.float64)
        else:
            sim = np.zeros(len(cand), dtype=np.float64)
            recent = history[-EXPLAIN_POSITIVES:]
            if len(recent):
                taste = vectors[recent].mean(axis=0)
                norm = float(np.linalg.norm(taste))
                if norm > 0:
                    sim = (vectors[cand] @ (taste / norm)).astype(np.float64)
            published = self.published_s[cand] if self.published_s is not None else np.full(len(cand), np.nan)
            age_h = np.clip((now_s - np.nan_to_num(published, nan=now_s - 86400.0)) / 3600.0, 0.0, None)
            score = sim + 0.5 ** (age_h / FRESH_HALF_LIFE_H)
        order = np.argsort(-score, kind="stable")
        slots = min(len(cand), max(1, math.ceil(params.k * FRESH_SHARE)))
        picked = [(int(cand[i]), float(score[i])) for i in order[:slots]]
        base = list(zip(result.indices, result.scores, result.stages, strict=True))
        total = min(params.k, len(base) + slots)
        step = max(1, total // slots)
        merged: list[tuple[int, float, Stage]] = []
        fi = bi = 0
        for pos in range(total):
            if fi < slots and (pos >= 1 + fi * step or bi >= len(base)):
                merged.append((*picked[fi], "fresh"))
                fi += 1
            else:
                merged.append(base[bi])
                bi += 1
        result.indices = [m[0] for m in merged]
        result.scores = [m[1] for m in merged]
        result.stages = [m[2] for m in merged]
        result.candidates += len(cand)
        result.pipeline.append("fresh")

    def _recommend_model(
        self,
        who: str,
        history: np.ndarray,
        params: CascadeParams,
        *,
        min_interactions: int,
        exclude: np.ndarray | None = None,
        session_weights: list[tuple[str, float]] | None = None,
        learning_rate: float = 0.0,
        extra_vectors: np.ndarray | None = None,
        use_pool: bool = False,
        known: bool = True,
        boost: ItemBoost | None = None,
        reader_shown: Mapping[str, int] | None = None,
        allowed: np.ndarray | None = None,
    ) -> CascadeResult:
        """One reader's list through the cascade (or a fallback that says why).

        ``who`` names the reader in a fallback's reason (``user 'u1'``, ``session 'ab12'``).
        ``history``: item indices, oldest first (bundle history + the session's engaged items);
        ``exclude``: items never to show (defaults to ``history``); ``session_weights``: the
        session's (item_id, weight) events for the private delta; ``extra_vectors``: vectors
        of free titles that count as history; ``use_pool``: candidates are today's pool;
        ``boost``: item scores every reader shares (``update_mode: global``);
        ``reader_shown``: item id → times already listed to this reader (the news ranker's);
        ``allowed``: the only items that may be listed (sorted; None: all but ``exclude``).
        """
        pin_threads()
        exclude = np.unique(history) if exclude is None else exclude
        n_interactions = len(history) + (0 if extra_vectors is None else len(extra_vectors))
        if n_interactions < max(min_interactions, 1):
            return self.fallback(
                who, n_interactions, params, exclude, min_interactions, known=known, boost=boost,
                reader_shown=reader_shown, history=history, allowed=allowed,
            )  # fmt: skip
        if self.retrieval is None and use_pool and self.pool is not None:
            cand = self.pool.indices[~np.isin(self.pool.indices, exclude)]
            if allowed is not None:
                cand = cand[np.isin(cand, allowed)]
            result = CascadeResult("personalized", pipeline=["pool", f"ranker:{self.ranker_name}"])
            result.candidates = len(cand)
            stage = self._for_reader(self.rank_stage, reader_shown)
            diversify(cand, stage.score(history, cand), None, params, result, base_stage="ranker")
            return result
        if self.retrieval is None:
            scores = np.array(self.model.score([history])[0], dtype=np.float64)
            if allowed is not None:  # −inf outside, as excluded items get, without listing them
                kept = scores[allowed]
                scores.fill(-np.inf)
                scores[allowed] = kept
            top = rank_unseen(scores, exclude, params.k, self.popular_rank)
            result = CascadeResult("personalized", pipeline=[f"ranker:{self.ranker_name}"])
            result.candidates = self.n_items
            for idx in top.tolist():
                result.add(idx, scores[idx], "ranker")
            return result
        delta = None
        if session_weights:
            index = self.item_index
            pairs = [(index[i], w) for i, w in session_weights if i in index]
            delta = session_delta(self.retrieval.vectors, pairs, learning_rate)
        pool = self.pool.indices if (use_pool and self.pool is not None) else None
        beyond = None
        if pool is not None and params.reach:
            beyond = self.beyond_pool(time.time(), params.reach_hours)
        return personalized(
            history,
            exclude,
            self.retrieval,
            self._for_reader(self.rank_stage, reader_shown),
            self.ranker_name,
            self.diversity_vectors,
            params,
            delta=delta,
            extra_vectors=extra_vectors,
            pool=pool,
            beyond=beyond,
            boost=boost,
            allowed=allowed,
        )

    def beyond_pool(self, now_s: float, hours: float) -> np.ndarray:
        """The model's stories published in the ``hours`` before ``now_s`` that today's pool left
        out, sorted (undated ones never: they may be any age)."""
        if self.pool is None or self.published_s is None:
            return np.zeros(0, dtype=np.int64)
        published = self.published_s[: self.model_items]
        recent = np.flatnonzero(published >= now_s - hours * 3600.0)  # NaN compares False
        return not_in(recent, np.sort(self.pool.indices))

    def fallback(
        self,
        who: str,
        n_interactions: int,
        params: CascadeParams,
        exclude: np.ndarray,
        min_interactions: int,
        *,
        known: bool = True,
        boost: ItemBoost | None = None,
        reader_shown: Mapping[str, int] | None = None,
        history: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> CascadeResult:
        """Fresh-and-popular items (today's pool, popularity within it) or, without a pool,
        the most popular items; diversified by MMR when the bundle has item vectors. A
        ``boost`` (global mode) adds its scores and brings its trending items in. A news
        ranker orders the pool with the reader's few clicks (``history``) as features: it
        learned how much one or two clicks say, where the fixed rule cannot use them.
        ``allowed`` (sorted item indices) limits the list to them: the pool's allowed
        stories, or the allowed items in popularity order."""
        if not known:
            why = f"{who} has no history in bundle {self.version}"
        elif n_interactions == 0:
            why = f"{who} has no interactions yet"
        else:
            why = (
                f"{who} has {n_interactions} interaction(s), fewer than the "
                f"{min_interactions} needed to personalise"
            )
        stage: Stage
        learned: NewsRankStage | None = None
        if self.pool is not None:
            cand = self.pool.indices
            if len(exclude):
                cand = cand[~np.isin(cand, exclude)]
            if allowed is not None:
                cand = cand[np.isin(cand, allowed)]
            learned = self._cold_stage(cand)
            if learned is not None:
                learned = self._for_reader(learned, reader_shown)
                # The news ranker's score for a reader with few or no clicks (then its freshness,
                # popularity and click-through terms), learned from logged readers.
                reads = np.zeros(0, dtype=np.int64) if history is None else np.asarray(history, np.int64)
                relevance = minmax(learned.score(reads, cand))
                order = (
                    "ranked by the news ranker from the reader's first clicks"
                    if len(reads)
                    else "ranked by the news ranker for a new reader"
                )
            else:
                freshness = 1.0 - np.arange(len(cand)) / max(len(self.pool.indices), 1)
                pop = np.log1p(self.popularity[cand].astype(np.float64))
                relevance = freshness + 0.25 * (pop / pop.max() if len(pop) and pop.max() > 0 else pop)
                order = "fresh and popular first"
            result = CascadeResult(
                "fresh_popular_fallback",
                reason=f"{why}; showing today's pool ({self.pool.pool_date}), {order}",
                pipeline=["pool"] + ([f"ranker:{self.ranker_name}"] if learned is not None else []),
            )
            stage = "fresh_popular"
        else:
            # Diversity needs some depth to choose from; without vectors the top k is the list.
            depth = params.k if self.diversity_vectors is None else max(params.candidates, params.k)
            by_pop = self.popular_order if allowed is None else self.popular_among(allowed)
            cand = first_not_in(by_pop, exclude, depth)
            relevance = self.popularity[cand].astype(np.float64)
            if boost is not None:
                extra = boost.extra(cand, exclude, allowed)
                cand = np.concatenate([cand, extra])
                relevance = minmax(self.popularity[cand].astype(np.float64))
            result = CascadeResult(
                "popularity_fallback", reason=f"{why}; showing the most popular items", pipeline=["popular"]
            )
            stage = "popular"
        if boost is not None:
            relevance = relevance + boost.scores[cand]
        result.candidates = len(cand)
        diversify(
            cand,
            relevance,
            self.diversity_vectors,
            params,
            result,
            base_stage=stage,
            explore_by_relevance=learned is not None,
        )
        return result

    def _for_reader(self, stage: Any, reader_shown: Mapping[str, int] | None) -> Any:
        """``stage`` bound to what this reader was already listed, when it is the news ranker
        (the only stage with a ``reshown`` feature); any other stage as it is."""
        if not reader_shown or not isinstance(stage, NewsRankStage):
            return stage
        index = self.item_index
        pairs = [(index[i], n) for i, n in reader_shown.items() if i in index]
        if not pairs:
            return stage
        items, counts = zip(*pairs, strict=True)
        return stage.for_reader(np.asarray(items, dtype=np.int64), np.asarray(counts, dtype=np.float32))

    def _cold_stage(self, cand: np.ndarray) -> NewsRankStage | None:
        """The news rank stage that can score ``cand`` for a reader without history, or None.

        A learned news ranker (``ranker/`` of an NRMS bundle) knows from the logged impressions
        how much freshness, popularity and a story's click-through say when nothing else is
        known: it ranks the cold-start pool instead of the fixed fresh-and-popular rule. The
        delta-extended stage covers delta stories; the bundle's own covers its items only."""
        if not isinstance(self.ranker, NewsRankStage):
            return None  # text similarity, a model's own scores: the fixed rule
        if self.fresh_stage is not None:
            return self.fresh_stage
        return self.ranker if not len(cand) or int(cand.max()) < self.model_items else None

    def _require_index(self) -> tuple[np.ndarray, ItemIndex]:
        if self.vectors is None or self.index is None:
            raise FeatureUnavailableError(
                f"bundle {self.version} has no item vectors or index; publish one with embedding enabled"
            )
        return self.vectors, self.index

    def similar(self, idx: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items whose text vectors are nearest to item ``idx`` (itself excluded)."""
        pin_threads()
        vectors, index = self._require_index()
        scores, rows = index.search(vectors[idx : idx + 1], k + 1)
        keep = (rows[0] >= 0) & (rows[0] != idx)
        return rows[0][keep][:k], scores[0][keep][:k]

    def search_text(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items nearest to the query text in the same vector space as the items."""
        _, index = self._require_index()
        from models.text_encoder import encode

        if self.text_model is None:
            raise FeatureUnavailableError(f"bundle {self.version} does not name its text model")
        query_vec = encode([query], self.text_model, "cpu", 1, progress=False)
        scores, rows = index.search(query_vec, k)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def _encode(self, texts: list[str]) -> np.ndarray:
        pin_threads()
        self._require_index()
        if self.text_model is None:
            raise FeatureUnavailableError(f"bundle {self.version} does not name its text model")
        from models.text_encoder import encode

        return encode(texts, self.text_model, "cpu", 32, progress=False)

    def match_titles(self, titles: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each free title's nearest catalogue item in text space, and the cosine of the match."""
        _, index = self._require_index()
        scores, rows = index.search(self._encode(titles), 1)
        return rows[:, 0], scores[:, 0]

    def search_steered(
        self,
        query: str,
        k: int,
        category_weight: float,
        taste: np.ndarray | None = None,
        taste_weight: float = 0.0,
        top_categories: int = 3,
        among: np.ndarray | None = None,
        boost: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float]]]:
        """Items nearest to the query's intent, and the categories that steered it.

        The query vector is moved toward the centroids of the ``top_categories`` categories it
        resembles most (weights: softmax of cosine / 0.05, so a clear match dominates), by
        ``category_weight``; then blended with ``taste`` (a user vector) by ``taste_weight``.
        Scores are cosines to the final query vector. With ``among`` (sorted item indices, a
        category filter's items): only those items (``boost`` None), or every item with
        ``boost`` added to the scores of those (exact: the top ``k`` overall merged with the
        top ``k`` of ``among``).
        """
        _, index = self._require_index()
        q = self._encode([query])[0]
        matched: list[tuple[str, float]] = []
        if category_weight > 0 and self.category_centroids is not None:
            sims = self.category_centroids @ q
            top = np.argsort(-sims)[:top_categories]
            logits = (sims[top] - sims[top].max()) / 0.05
            weights = np.exp(logits) / np.exp(logits).sum()
            steer = weights @ self.category_centroids[top]
            q = (1.0 - category_weight) * q + category_weight * steer
            matched = [(self.category_names[i], float(w)) for i, w in zip(top, weights, strict=True)]
        if taste is not None and taste_weight > 0:
            q = q / max(float(np.linalg.norm(q)), 1e-12)
            t = taste / max(float(np.linalg.norm(taste)), 1e-12)
            q = (1.0 - taste_weight) * q + taste_weight * t
        q = (q / max(float(np.linalg.norm(q)), 1e-12)).astype(np.float32)
        if among is not None:
            rows, scores = _search_among(index, self._require_index()[0], q, k, among, boost)
            return rows, scores, matched
        scores, rows = index.search(q[None, :], k)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep], matched

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def model_name(self) -> str:
        """The model named in the manifest, else the loaded model's own name."""
        meta = self.manifest.get("model")
        if isinstance(meta, dict) and meta.get("name"):
            return str(meta["name"])
        return str(getattr(self.model, "name", "unknown"))

    @cached_property
    def counts(self) -> dict[str, int]:
        """Users, items and interactions as the manifest records them (computed if absent).

        Cached: ``/health`` asks on every call, and summing 20,000 histories took ~1 ms.
        """
        recorded = self.manifest.get("counts") or {}
        interactions = recorded.get("interactions")
        if interactions is None:
            interactions = sum(len(h) for h in self.histories.values())
        return {
            "users": int(recorded.get("users", len(self.histories))),
            "items": int(recorded.get("items", self.n_items)),
            "interactions": int(interactions),
        }

    def item_record(self, idx: int) -> dict[str, Any]:
        """The public fields of one item, ready for a response."""
        return {
            "item_id": self.item_ids[idx],
            "title": self.titles[idx],
            "categories": self.categories[idx],
            "year": self.years[idx],
        }

    def story_record(self, idx: int) -> dict[str, Any]:
        """What a reader sees of a story beyond :meth:`item_record` (nulls when the bundle's
        catalog has no story columns, or the item has no such data)."""
        if not self.links:
            return {"summary": None, "link": None, "outlet": None, "published": None}
        return {
            "summary": self.summaries[idx],
            "link": self.links[idx],
            "outlet": self.outlets[idx],
            "published": self.published[idx],
        }

    def explain(
        self, result: CascadeResult, positives: np.ndarray, now_s: float
    ) -> list[tuple[str | None, str | None, str | None]]:
        """(topic, why in plain words, the pool's machine-readable reason) per listed item.

        ``why`` follows the stage that placed the item and the reader: exploration is
        "something different: <topic>"; a story published in the hour before ``now_s`` (epoch
        seconds) is "new this hour"; a personalised pick is "because you read “<title>”",
        naming the reader's positive (of the last :data:`EXPLAIN_POSITIVES`) nearest to it in
        the bundle's item vectors; a pool pick is "top story in" / "trending in <topic>"; a
        popularity fallback is "popular with readers". One small matrix product per request.
        """
        pool = self.pool
        recent = positives[-EXPLAIN_POSITIVES:].astype(np.int64) if len(positives) else positives
        nearest: dict[int, int] = {}
        vectors = self.unit_vectors
        personal = [i for i, st in zip(result.indices, result.stages, strict=True) if st in ("ranker", "mmr")]
        if personal and len(recent):
            if vectors is not None:
                sims = vectors[personal] @ vectors[recent].T
                sims[np.asarray(personal)[:, None] == recent[None, :]] = -np.inf
                best = sims.argmax(axis=1).tolist()
                nearest = {i: int(recent[j]) for i, j in zip(personal, best, strict=True)}
            else:  # no vectors to compare: the latest thing read
                nearest = dict.fromkeys(personal, int(recent[-1]))
        published = self.published_s
        out: list[tuple[str | None, str | None, str | None]] = []
        for idx, stage in zip(result.indices, result.stages, strict=True):
            pos = pool.position.get(idx) if pool is not None else None
            topic = pool.topics[pos] if pool is not None and pos is not None else None
            code = pool.reasons[pos] if pool is not None and pos is not None else None
            label = topic or (self.categories[idx][0] if self.categories[idx] else None)
            age = now_s - published[idx] if published is not None and len(published) else np.nan
            why: str | None
            if stage == "exploration":
                why = f"something different: {label}" if label else "something different"
            elif -300.0 < age < 3600.0:  # the last hour, and a few minutes of clock skew
                why = "new this hour"
            elif stage == "fresh":
                why = "new since this morning's pool"
            elif idx in nearest and self.titles[nearest[idx]]:
                why = f"because you read \u201c{self.titles[nearest[idx]]}\u201d"
            elif pool is not None and pos is not None and pool.whys[pos]:
                why = pool.whys[pos]
            elif stage in ("popular", "fresh_popular"):
                why = f"popular in {label}" if label else "popular with readers"
            else:
                why = f"picked for you in {label}" if label else "picked for you"
            out.append((topic, why, code))
        return out

    def popular_among(self, items: np.ndarray) -> np.ndarray:
        """``items`` in :attr:`popular_order`'s order (a sort of ``items`` alone, not a pass
        over the whole order: a strict filter's category may be 2% of the catalogue)."""
        return items[np.argsort(self.popular_rank[items], kind="stable")]

    def popular(self, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular items not in ``exclude``, and their popularity as scores."""
        empty = np.zeros(0, dtype=np.int64)
        top = first_not_in(self.popular_order, exclude if exclude is not None else empty, k)
        return top, self.popularity[top].astype(np.float64)

    def recommend(self, user_id: str, k: int, params: CascadeParams | None = None) -> Ranked:
        """Top ``k`` unseen items for a user of the bundle through the cascade (with default
        knobs unless ``params``): the model's choice, or the fallback for too short histories."""
        history = self.histories.get(user_id)
        params = params or CascadeParams.from_settings(ServingSettings(), k, explore=False)
        result = self.recommend_for(
            f"user {user_id!r}",
            history if history is not None else np.zeros(0, dtype=np.int64),
            params,
            min_interactions=1,
            known=history is not None,
        )
        return Ranked(
            result.strategy,
            np.asarray(result.indices, dtype=np.int64),
            np.asarray(result.scores, dtype=np.float64),
            result.reason,
        )


def first_not_in(order: np.ndarray, exclude: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` entries of ``order`` (distinct item indices) not in ``exclude``, in order.

    Only the first ``n + len(unique(exclude))`` entries can hold them, so this reads that
    prefix and tests it by binary search in the sorted exclusions, where a mask over every
    item and a pass over the whole order cost ~20 ms per fallback request at 5,000,000 items.
    """
    if n <= 0:
        return order[:0]
    if not len(exclude):
        return order[:n]
    ex = np.unique(exclude)
    head = order[: n + len(ex)]
    pos = np.minimum(np.searchsorted(ex, head), len(ex) - 1)
    return head[ex[pos] != head][:n]


def rank_unseen(scores: np.ndarray, seen: np.ndarray, k: int, tiebreak: np.ndarray) -> np.ndarray:
    """The service's name for :func:`models.ranking.top_k` of one row: the ``k`` best-scored
    items not in ``seen``, best first, equal scores by ``tiebreak`` (the popularity rank), in
    O(n_items). ``scores`` is modified in place (seen items and NaNs become −inf)."""
    return top_k(scores, k, exclude=seen, tiebreak=tiebreak)


def news_rank_stage(
    directory: Path,
    item_ids: list[str],
    model: Any,
    vectors: np.ndarray | None,
    columns: dict[str, list[Any]],
    categories: list[list[str]],
) -> tuple[NewsRankStage, str]:
    """The bundle's news ranker over its items: text vectors, publication times and the
    first category of each story as its topic, as the ranker was trained on them."""
    names = sorted({c[0] for c in categories if c})
    number = {n: i + 1 for i, n in enumerate(names)}
    facts = ItemFacts(
        None if vectors is None else news_unit_rows(vectors),
        np.array([np.nan if t is None else t for t in columns["published_s"]], dtype=np.float64),
        np.array([number[c[0]] if c else 0 for c in categories], dtype=np.int64),
        Lexicon.build(story_texts(columns["title"], columns["summary"])),
    )
    return NewsRankStage.load(directory, item_ids, facts, model), "news-ranker"


def load_bundle(store: ArtifactStore, version: str) -> LoadedBundle:
    """Verify a bundle's checksums, then read all of it into memory.

    Raises :class:`~storage.artifacts.BundleError` (or the reader's own error) for anything
    that is missing, corrupt or inconsistent; the caller decides to keep the old bundle.
    """
    started = time.perf_counter()
    store.verify(version)
    manifest = store.manifest(version)
    path = store.root / version
    catalog = path / CATALOG
    if not catalog.is_file():
        raise BundleError(f"bundle {version}: {CATALOG} is missing")
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        # Bundles written before the story columns existed still load: they read as nulls.
        present = {
            r[0]
            for r in con.sql(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'"
            ).fetchall()
        }
        story = ", ".join(
            c if c in present else f"CAST(NULL AS {t}) AS {c}"
            for c, t in [("summary", "VARCHAR"), ("link", "VARCHAR"), ("outlet", "VARCHAR")]
        )
        published = (
            "CAST(epoch(published) AS DOUBLE) AS published_s"
            if "published" in present
            else "CAST(NULL AS DOUBLE) AS published_s"
        )
        items_table = con.sql(
            "SELECT item_idx, item_id, title, categories, year, popularity, "
            f"{story}, {published} FROM items ORDER BY item_idx"
        ).to_arrow_table()
        hist_table = con.sql("SELECT user_id, items FROM user_histories").to_arrow_table()
        has_pool = bool(
            con.sql("SELECT 1 FROM information_schema.tables WHERE table_name = 'daily_pool'").fetchall()
        )
        pool_table = (
            con.sql(
                "SELECT CAST(pool_date AS VARCHAR) AS pool_date, rank, item_id, topic, reason FROM daily_pool"
                " WHERE pool_date = (SELECT max(pool_date) FROM daily_pool) ORDER BY rank, item_id"
            ).to_arrow_table()
            if has_pool
            else None
        )
    finally:
        con.close()

    n_items = items_table.num_rows
    item_idx = items_table.column("item_idx").to_numpy()
    if not np.array_equal(item_idx, np.arange(n_items)):
        raise BundleError(f"bundle {version}: items.item_idx is not 0..{n_items - 1}")
    columns = items_table.to_pydict()
    item_ids = [str(i) for i in columns["item_id"]]
    item_index = {item: i for i, item in enumerate(item_ids)}
    if len(item_index) != n_items:
        raise BundleError(f"bundle {version}: items.item_id has duplicates")
    popularity = np.asarray(items_table.column("popularity").fill_null(0).to_numpy(), dtype=np.int64)
    popular_order = np.lexsort((np.arange(n_items), -popularity))
    popular_rank = np.empty(n_items, dtype=np.int64)
    popular_rank[popular_order] = np.arange(n_items)

    histories = _histories(hist_table, n_items, version)
    model = load_model(path / MODEL_DIR)
    probe = np.asarray(model.score([np.zeros(0, dtype=np.int64)]))
    if probe.shape != (1, n_items):
        raise BundleError(f"bundle {version}: model scores {probe.shape[-1]} items, catalog has {n_items}")

    vectors = index = None
    text_model = (manifest.get("embedding") or {}).get("model")
    if (path / "index").is_dir():
        big = [p.stat().st_size > MAP_ABOVE_BYTES for p in (path / "index").glob("shard-*.faiss")]
        index = ItemIndex.load(path / "index", mmap=any(big))
        if [str(i) for i in index.item_ids] != item_ids:
            raise BundleError(f"bundle {version}: index item ids do not follow the catalogue order")
        # float32 in memory whatever was stored: the index searches float32, and a float64
        # copy would double what every user vector and similarity gathers
        vectors_file = path / "item_vectors.npy"
        mapped = vectors_file.stat().st_size > MAP_ABOVE_BYTES
        stored = np.load(vectors_file, mmap_mode="r" if mapped else None)
        vectors = np.ascontiguousarray(stored, dtype=np.float32)  # a float32 map stays a map
        if vectors.shape[0] != n_items:
            raise BundleError(f"bundle {version}: {vectors.shape[0]} item vectors for {n_items} items")
        if text_model is not None:
            from models.text_encoder import load_text_model

            load_text_model(text_model)  # warm, off the request path; cached across bundles

    categories = _shared_lists(columns["categories"])
    ranker: RankStage
    if is_news_ranker(path / "ranker"):  # the news feed's rank stage: features, not embeddings
        try:
            ranker, ranker_name = news_rank_stage(
                path / "ranker", item_ids, model, vectors, columns, categories
            )
        except FeatureMismatch as exc:
            # A bundle from before a feature was added: served in the model's own order (its
            # retrieval stays) until the next training writes a ranker with today's features.
            logger.warning("bundle %s: news ranker not used: %s", version, exc)
            ranker, ranker_name = ModelRanker(model), f"model:{getattr(model, 'name', type(model).__name__)}"
    else:
        ranker, ranker_name = load_rank_stage(path, model)
    space = retrieval_space(model, vectors, index, item_ids)
    names, counts, centroids = _categories(categories, vectors)
    diversity = vectors if vectors is not None else (space.vectors if space is not None else None)
    bundle = LoadedBundle(
        unit_vectors=unit_rows(diversity) if diversity is not None else None,
        ranker=ranker,
        ranker_name=ranker_name,
        retrieval=space,
        pool=_pool(pool_table, item_index, version) if pool_table is not None else None,
        category_names=names,
        category_counts=counts,
        category_centroids=centroids,
        user_order=sorted(histories),
        vectors=vectors,
        index=index,
        text_model=text_model,
        version=version,
        path=path,
        manifest=manifest,
        items=items_table.to_pandas(types_mapper=pd.ArrowDtype),  # Arrow-backed: no object per cell
        item_index=item_index,
        histories=histories,
        popularity=popularity,
        popular_order=popular_order,
        popular_rank=popular_rank,
        model=model,
        item_ids=item_ids,
        titles=columns["title"],
        categories=categories,
        years=[int(y) if y is not None else None for y in columns["year"]],
        summaries=columns["summary"],
        links=columns["link"],
        outlets=columns["outlet"],
        published=[_iso(t) for t in columns["published_s"]],
        published_s=np.array([np.nan if t is None else t for t in columns["published_s"]], dtype=np.float64),
    )
    cascade_ms, warm_history = warm_up(bundle)
    bundle = dataclasses.replace(bundle, cascade_ms=cascade_ms, warm_history=warm_history)
    logger.info(
        "loaded bundle %s (%s, %d users, %d items) in %.2fs; cascade %.2f ms per request",
        version,
        bundle.model_name,
        len(histories),
        n_items,
        time.perf_counter() - started,
        bundle.cascade_ms,
    )
    return bundle


class TextSimilarityRanker:
    """The rank stage of ``serving.rank_stage = "text-similarity"``: a candidate's cosine to
    the mean text vector of the reader's history, nothing learned. The baseline the learned
    news stack is measured against (``make eval-news``'s ``text-similarity`` row and A/B arm),
    served through the same cascade so only the ranking differs."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = unit_rows(np.asarray(vectors, dtype=np.float32))

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        n = self.vectors.shape[0]
        history = np.asarray(history, dtype=np.int64)
        history = history[(history >= 0) & (history < n)]  # delta rows are not in the bundle's vectors
        candidates = np.asarray(candidates, dtype=np.int64)
        scores = np.zeros(len(candidates), dtype=np.float64)
        if len(history) == 0 or len(candidates) == 0:
            return scores
        profile = self.vectors[history].mean(axis=0)
        known = candidates < n
        scores[known] = self.vectors[candidates[known]] @ profile
        return scores


def text_similarity_bundle(bundle: LoadedBundle) -> LoadedBundle:
    """``bundle`` served by text similarity alone: the text index retrieves (the user vector is
    the history's mean text vector) and :class:`TextSimilarityRanker` ranks, whatever model and
    ranker the bundle was published with. Raises :class:`BundleError` for a bundle without
    text vectors (nothing to compare)."""
    if bundle.vectors is None or bundle.index is None:
        raise BundleError(
            f"bundle {bundle.version}: serving.rank_stage = 'text-similarity' needs the bundle's text "
            "vectors and index (embedding.enabled when it was published); it has none"
        )
    view = dataclasses.replace(
        bundle,
        ranker=TextSimilarityRanker(bundle.vectors),
        ranker_name="text-similarity",
        retrieval=RetrievalSpace(bundle.vectors, bundle.index, "text"),
    )
    cascade_ms, warm_history = warm_up(view)
    return dataclasses.replace(view, cascade_ms=cascade_ms, warm_history=warm_history)


def bundle_loader(
    rank_stage: Literal["bundle", "text-similarity"],
) -> Callable[[ArtifactStore, str], LoadedBundle]:
    """How the service loads a bundle under ``serving.rank_stage``."""
    if rank_stage == "text-similarity":
        return lambda store, version: text_similarity_bundle(load_bundle(store, version))
    return load_bundle


FRESH_SHARE = 0.25
"""At most this share of a feed (at least one slot) goes to stories newer than the pool."""
FRESH_HALF_LIFE_H = 3.0
"""A fresh story's recency bonus halves every this many hours."""


def apply_delta(base: LoadedBundle, delta: Delta) -> LoadedBundle:
    """``base`` with the delta's stories appended (rows ``base.n_items`` on) and its pool.

    ``base`` must be the bundle as loaded (deltas are cumulative: each one replaces the last).
    The model, ranker and retrieval space stay the bundle's; the new rows get metadata, text
    vectors (so ``/items``, ``/interact``, ``/similar`` and the freshness slot work) and zero
    popularity. Raises :class:`~storage.deltas.DeltaError` when the delta does not fit.
    """
    if base.base_items is not None:
        raise DeltaError(f"bundle {base.version} already carries delta {base.delta_seq}")
    if delta.base_version != base.version:
        raise DeltaError(f"delta {delta.base_version}+{delta.seq} does not extend bundle {base.version}")
    if base.vectors is None or base.unit_vectors is None:
        raise DeltaError(f"bundle {base.version} has no text vectors for delta stories to join")
    items = [it for it in delta.items if str(it["item_id"]) not in base.item_index]
    keep = [i for i, it in enumerate(delta.items) if str(it["item_id"]) not in base.item_index]
    n0, n_new = base.n_items, len(items)
    if n_new and delta.vectors.shape[1] != base.vectors.shape[1]:
        raise DeltaError(
            f"delta {delta.base_version}+{delta.seq}: vectors of dim {delta.vectors.shape[1]}, "
            f"the bundle's are {base.vectors.shape[1]}"
        )
    new_vecs = np.ascontiguousarray(delta.vectors[keep], dtype=np.float32).reshape(
        n_new, base.vectors.shape[1]
    )
    if not np.isfinite(new_vecs).all():
        raise DeltaError(f"delta {delta.base_version}+{delta.seq}: vectors hold NaN or inf")
    item_ids = base.item_ids + [str(it["item_id"]) for it in items]
    item_index = {**base.item_index, **{item_ids[n0 + j]: n0 + j for j in range(n_new)}}
    published_new = [it.get("published_s") for it in items]
    published_s = np.concatenate(
        [
            base.published_s if base.published_s is not None else np.full(n0, np.nan),
            np.array([np.nan if t is None else float(t) for t in published_new], dtype=np.float64),
        ]
    )
    pool = base.pool
    harvested_s: float | None = None  # unknown: every delta story not in the pool is fresh
    if delta.pool is not None and delta.pool.get("rows"):
        rows = delta.pool["rows"]
        table = pa.table(
            {
                "pool_date": [str(delta.pool["pool_date"])] * len(rows),
                "item_id": [str(r["item_id"]) for r in rows],
                "topic": [r.get("topic") for r in rows],
                "reason": [r.get("reason") for r in rows],
            }
        )
        pool = _pool(table, item_index, f"{base.version}+{delta.seq}")
        stamp = delta.pool.get("harvested_s")
        harvested_s = None if stamp is None else float(stamp)
    in_pool = np.zeros(n0 + n_new, dtype=bool)
    if pool is not None:
        in_pool[pool.indices] = True
    rows_new = np.arange(n0, n0 + n_new, dtype=np.int64)
    newer = np.ones(n_new, dtype=bool)
    if harvested_s is not None:  # "newer than the pool": published after its harvest (or undated)
        newer = np.isnan(published_s[rows_new]) | (published_s[rows_new] > harvested_s)
    fresh = rows_new[newer & ~in_pool[rows_new]]
    categories = base.categories + [list(it.get("categories") or []) for it in items]
    all_vectors = np.concatenate([base.vectors, new_vecs])
    texts = story_texts([it.get("title") for it in items], [it.get("summary") for it in items])
    fresh_stage = _nrms_fresh_stage(base, delta, keep, all_vectors, published_s, categories, texts)
    return dataclasses.replace(
        base,
        base_items=n0,
        delta_seq=delta.seq,
        fresh=fresh,
        fresh_stage=fresh_stage,
        pool=pool,
        item_ids=item_ids,
        item_index=item_index,
        titles=base.titles + [it.get("title") for it in items],
        categories=categories,
        years=base.years + [None] * n_new,
        summaries=(base.summaries or [None] * n0) + [it.get("summary") for it in items],
        links=(base.links or [None] * n0) + [it.get("link") for it in items],
        outlets=(base.outlets or [None] * n0) + [it.get("outlet") for it in items],
        published=(base.published or [None] * n0) + [_iso(t) for t in published_new],
        published_s=published_s,
        popularity=np.concatenate([base.popularity, np.zeros(n_new, dtype=base.popularity.dtype)]),
        popular_order=np.concatenate([base.popular_order, rows_new]),
        popular_rank=np.concatenate([base.popular_rank, rows_new]),
        vectors=all_vectors,
        unit_vectors=np.concatenate([base.unit_vectors, unit_rows(new_vecs)]) if n_new else base.unit_vectors,
        loaded_at=datetime.now(UTC),
    )


def _nrms_fresh_stage(
    base: LoadedBundle,
    delta: Delta,
    keep: list[int],
    vectors: np.ndarray,
    published_s: np.ndarray,
    categories: list[list[str]],
    texts: list[str],
) -> NewsRankStage | None:
    """The bundle's news rank stage extended to the delta's stories (``texts``: their title
    and summary, for the lexical feature), or None when the bundle
    serves no NRMS-fed news ranker or the delta carries no NRMS vectors (an older publisher).

    The NRMS model is a copy whose news matrix has the delta's vectors appended (the live one
    is untouched, so a refused delta changes nothing); the new stories have no clicks or
    impressions yet, and a topic the ranker never saw reads as none."""
    stage = base.ranker
    if not isinstance(stage, NewsRankStage) or stage.nrms is None or delta.nrms_vectors is None:
        return None
    nrms = stage.nrms
    n0, n_new = base.n_items, len(keep)
    if nrms.news_vectors.shape[0] != n0:
        raise DeltaError(f"bundle {base.version}: NRMS holds {nrms.news_vectors.shape[0]} stories, not {n0}")
    new_news = np.ascontiguousarray(delta.nrms_vectors[keep], dtype=np.float32)
    if n_new and new_news.shape[1] != nrms.news_vectors.shape[1]:
        raise DeltaError(
            f"delta {delta.base_version}+{delta.seq}: NRMS vectors of dim {new_news.shape[1]}, "
            f"the bundle's NRMS has {nrms.news_vectors.shape[1]}"
        )
    if not np.isfinite(new_news).all():
        raise DeltaError(f"delta {delta.base_version}+{delta.seq}: NRMS vectors hold NaN or inf")
    extended = copy.copy(nrms)  # shares the network (read-only at serving), not the matrix
    extended.news_vectors = np.concatenate([nrms.news_vectors, new_news.reshape(n_new, -1)])
    names = sorted({c[0] for c in base.categories if c})  # the numbering news_rank_stage gave
    number = {n: i + 1 for i, n in enumerate(names)}
    facts = ItemFacts(
        news_unit_rows(vectors),
        published_s,
        np.array([number.get(c[0], 0) if c else 0 for c in categories], dtype=np.int64),
        None if stage.facts.lexicon is None else stage.facts.lexicon.extended(texts),
    )
    zeros = np.zeros(n_new, np.float64)
    return NewsRankStage(
        stage.ranker,
        facts,
        extended,
        np.concatenate([stage.clicks, zeros]),
        np.concatenate([stage.shown, zeros]),
        expected=None if stage.expected is None else np.concatenate([stage.expected, zeros]),
    )


# Objects frozen by BundleHolder are invisible to the collection at interpreter exit too;
# hand them back so extension types are torn down in order (nanobind reports "leaks" otherwise).
atexit.register(gc.unfreeze)

WARM_UP_USERS = 16
EXPLAIN_POSITIVES = 50
"""How many of the reader's latest positives "because you read" chooses from (bounds its cost)."""


def warm_up(bundle: LoadedBundle, users: int = WARM_UP_USERS) -> tuple[float, int]:
    """Run the cascade for a few known users before the bundle goes live: (p90 ms, the longest
    history among them).

    Two reasons: the first requests after a swap would otherwise pay for cold index pages
    and lazily built state, and the service needs to know what an ordinary request costs to
    decide where it runs (``ServingSettings.inline_below_ms``). It is measured at k = 10 with
    the default knobs; the service sends deeper requests to the thread pool whatever this says. A
    bundle without users measures inf.

    The cost is this thread's CPU time, not the wall clock: on a busy host the wall clock of
    a sub-millisecond request measures the neighbours. The 5,000,000-item bench bundle, whose
    cascade costs ~0.7 ms of CPU, measured 0.85–2.6 ms of wall clock from load to load at a
    load average of 2–5, and on the slow side of 2 ms it went to the thread pool, where eight
    concurrent requests cost 1.6–1.9 ms of CPU each instead of 1.3–1.4 on the event loop
    (``python -m benchmarks.profile_serve --concurrency 8 --compare-paths``).
    The rank stages run single-threaded (``pin_threads``), so their CPU time is their cost.
    """
    params = CascadeParams.from_settings(ServingSettings(), 10, explore=True)
    step = max(1, len(bundle.user_order) // users)
    chosen = [bundle.histories[u] for u in bundle.user_order[::step][:users]]
    times = []
    for timed in (False, True):  # the first pass warms, the second measures
        for history in chosen:
            started = time.thread_time()
            bundle.recommend_for("warm-up", history, params, min_interactions=1)
            if timed:
                times.append((time.thread_time() - started) * 1e3)
    longest = max((len(h) for h in chosen), default=0)
    return (float(np.percentile(times, 90)) if times else float("inf")), longest


def _pool(table: pa.Table, item_index: dict[str, int], version: str) -> DailyPool | None:
    """The latest day's pool rows as item indices; rows naming unknown items are dropped."""
    if table.num_rows == 0:
        return None
    cols = table.to_pydict()
    keep = [i for i, item in enumerate(cols["item_id"]) if str(item) in item_index]
    dropped = table.num_rows - len(keep)
    if dropped:
        logger.warning("bundle %s: %d daily_pool rows name items not in the catalogue", version, dropped)
    if not keep:
        return None
    indices = np.array([item_index[str(cols["item_id"][i])] for i in keep], dtype=np.int64)
    topics = [cols["topic"][i] for i in keep]
    whys: list[str | None] = []
    led: set[str] = set()
    for topic in topics:  # rows are in rank order: a topic's first row is its top story
        lead = f"trending in {topic}" if topic in led else f"top story in {topic}"
        whys.append(lead if topic else None)
        if topic:
            led.add(topic)
    return DailyPool(
        pool_date=str(cols["pool_date"][0]),
        indices=indices,
        topics=topics,
        reasons=[cols["reason"][i] for i in keep],
        dropped=dropped,
        whys=whys,
        position={int(idx): pos for pos, idx in enumerate(indices.tolist())},
    )


def _iso(epoch_s: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with a ``Z`` (what the feed's ``published`` says)."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def _search_among(
    index: ItemIndex, vectors: np.ndarray, q: np.ndarray, k: int, among: np.ndarray, boost: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of :meth:`LoadedBundle.search_steered` under a category filter."""
    own = (vectors[among] @ q).astype(np.float32)
    top = np.argsort(-own, kind="stable")[:k]
    rows, scores = among[top], own[top]
    if boost is None:
        return rows, scores
    sims, found = index.search(q[None, :], k)
    keep = found[0] >= 0
    merged = dict(zip(found[0][keep].tolist(), sims[0][keep].tolist(), strict=True))
    for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
        merged[row] = score + boost
    order = sorted(merged, key=lambda r: -merged[r])[:k]
    return np.asarray(order, dtype=np.int64), np.asarray([merged[r] for r in order], dtype=np.float32)


def _categories(
    categories: list[list[str]], vectors: np.ndarray | None
) -> tuple[list[str], list[int], np.ndarray | None]:
    """Category names by size, their item counts and unit mean vectors (None without vectors)."""
    members: dict[str, list[int]] = {}
    for idx, cats in enumerate(categories):
        for cat in cats:
            members.setdefault(cat, []).append(idx)
    names = sorted(members, key=lambda c: (-len(members[c]), c))
    counts = [len(members[c]) for c in names]
    if vectors is None or not names:
        return names, counts, None
    centroids = np.stack([vectors[members[c]].mean(axis=0) for c in names]).astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return names, counts, centroids


def _shared_lists(column: list[list[str] | None]) -> list[list[str]]:
    """Each row's categories, one list object (and its strings) per distinct list.

    ``to_pydict`` makes a new list and new strings for every row: at 5,000,000 items that
    is ~130 bytes a row, 0.6 GB per worker, for a few thousand distinct values. The lists
    are shared between rows, so no caller may change one; nothing does, as with the rest
    of the bundle (see :class:`LoadedBundle`). A null reads as no categories.
    """
    shared: dict[tuple[str, ...], list[str]] = {}
    out: list[list[str]] = []
    for cats in column:
        key = tuple(cats) if cats is not None else ()
        row = shared.get(key)
        if row is None:
            row = shared[key] = list(key)
        out.append(row)
    return out


def _histories(table: pa.Table, n_items: int, version: str) -> dict[str, np.ndarray]:
    """user_id → int32 item-index array, split from one flat buffer (no per-row Python lists)."""
    if table.num_rows == 0:
        return {}
    lists = table.column("items").combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    flat = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=np.int32)
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise BundleError(f"bundle {version}: a user history names an item index out of range")
    parts = np.split(flat, np.cumsum(lengths)[:-1])
    users = [str(u) for u in table.column("user_id").to_pylist()]
    return dict(zip(users, parts, strict=True))


Loader = Callable[[ArtifactStore, str], LoadedBundle]
BundleId = tuple[str, int, int]


class BundleHolder:
    """The live :class:`LoadedBundle`, kept in step with the store's ``CURRENT`` pointer.

    A background thread (started by :meth:`start`) reads ``CURRENT`` every
    ``check_interval_s`` seconds (one small file read) and loads a new version off the
    request path. Without the thread, :meth:`get` does the same check itself at most once per
    interval, with one loader at a time. A version that fails to load is remembered and not
    retried on every check, since bundles are immutable and would fail the same way; the
    previous bundle keeps serving. :meth:`reload` retries it on purpose.

    A version is recognised by its name *and* its manifest file's inode and mtime (one
    ``stat`` per check): the store can hand out a version name again once the bundle that
    had it was pruned, and a reused name must not be mistaken for the bundle already live
    (or already refused).
    """

    def __init__(
        self,
        store: ArtifactStore,
        check_interval_s: float,
        loader: Loader = load_bundle,
        pinned: str | None = None,
    ) -> None:
        self.store = store
        self.pinned = pinned
        """A version served instead of the one ``CURRENT`` names (``serving.bundle_version``)."""
        self.check_interval_s = check_interval_s
        self._loader = loader
        self._bundle: LoadedBundle | None = None
        self._lock = threading.Lock()
        self._live_id: BundleId | None = None
        self._refused: dict[str, str] = {}
        self._refused_ids: dict[str, BundleId] = {}
        self._pointer: str | None = None
        self._last_check = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base: LoadedBundle | None = None
        """The live bundle as loaded, before any delta (deltas are applied to it, never chained)."""
        self._refused_deltas: dict[tuple[str, int], str] = {}

    # Reading -------------------------------------------------------------------------------
    @property
    def bundle(self) -> LoadedBundle | None:
        """The live bundle, or None; never blocks and never checks the pointer."""
        return self._bundle

    @property
    def refused(self) -> dict[str, str]:
        """Versions that failed to load → why (a copy)."""
        return dict(self._refused)

    @property
    def refused_deltas(self) -> dict[str, str]:
        """Deltas that failed to apply (``<version>+<seq>``) → why (a copy)."""
        return {f"{v}+{n}": why for (v, n), why in self._refused_deltas.items()}

    @property
    def pointer(self) -> str | None:
        """The version ``CURRENT`` named at the last check."""
        return self._pointer

    def get(self) -> LoadedBundle:
        """The live bundle; raises :class:`NoBundleError` when there is none to serve."""
        polling = self._thread is not None and self._thread.is_alive()
        if not polling and time.monotonic() - self._last_check >= self.check_interval_s:
            # Block only when there is nothing to serve yet; otherwise one request loads
            # while the others keep answering from the bundle they already have.
            self._check(block=self._bundle is None)
        bundle = self._bundle
        if bundle is None:
            raise NoBundleError(self.unavailable_reason())
        return bundle

    def unavailable_reason(self) -> str:
        """Why nothing can be served, phrased for the person who reads the 503."""
        pointer = self._pointer
        if pointer is not None and pointer in self._refused:
            return (
                f"the live bundle {pointer} named by {self.store.root / 'CURRENT'} could not be "
                f"loaded ({self._refused[pointer]}) and no earlier bundle is loaded; "
                f"{RUN_NIGHTLY_HINT}, or roll back with `recflow bundle rollback`"
            )
        return f"no bundle has been published under {self.store.root} yet; {RUN_NIGHTLY_HINT}"

    def live_refusal(self) -> tuple[str, str] | None:
        """(version, error) when ``CURRENT`` names a refused bundle, so an older one serves."""
        pointer = self._pointer
        if pointer is not None and pointer in self._refused:
            return pointer, self._refused[pointer]
        return None

    # Checking ------------------------------------------------------------------------------
    def check(self) -> bool:
        """Look at ``CURRENT`` now and load it if it changed; True when a new bundle went live."""
        return self._check(block=True)

    def reload(self) -> LoadedBundle | None:
        """Check now, retrying a version refused before (an operator asked for it)."""
        self._check(block=True, retry_refused=True)
        return self._bundle

    def _check(self, *, block: bool, retry_refused: bool = False) -> bool:
        if not self._lock.acquire(blocking=block):
            return False  # another thread is checking/loading right now
        try:
            swapped = self._check_bundle(retry_refused)
            return self._check_delta(retry_refused) or swapped
        finally:
            self._lock.release()

    def _check_delta(self, retry_refused: bool) -> bool:
        """Apply the live version's latest delta if it is new; a failed one is refused and
        remembered, and the live state stays as it was. Called with the lock held."""
        base, live = self._base, self._bundle
        if base is None or live is None or base.version != live.version:
            return False
        try:
            seq = latest_seq(self.store, base.version)
        except OSError as exc:
            logger.warning("could not read the deltas of %s: %s", base.version, exc)
            return False
        if seq is None or seq == live.delta_seq:
            return False
        key = (base.version, seq)
        if key in self._refused_deltas and not retry_refused:
            return False
        try:
            new = apply_delta(base, read_delta(self.store, base.version, seq))
        except Exception as exc:
            self._refused_deltas[key] = f"{type(exc).__name__}: {exc}"
            logger.error(
                "refused delta %s+%d: %s; still serving %s+%s",
                base.version,
                seq,
                self._refused_deltas[key],
                live.version,
                live.delta_seq,
            )
            return False
        self._refused_deltas.pop(key, None)
        self._bundle = new  # the same atomic swap as for bundles
        gc.collect(1)
        gc.freeze()
        logger.info(
            "delta %s+%d is live: %d fresh stories, %d in the freshness slot, pool %s",
            base.version,
            seq,
            new.n_items - new.model_items,
            0 if new.fresh is None else len(new.fresh),
            new.pool.pool_date if new.pool is not None else None,
        )
        return True

    def _check_bundle(self, retry_refused: bool) -> bool:
        """Load the version ``CURRENT`` names if it is new. Called with the lock held."""
        self._last_check = time.monotonic()
        try:
            version = self.pinned or self.store.current_version()
        except OSError as exc:
            logger.warning("could not read %s/CURRENT: %s", self.store.root, exc)
            return False
        self._pointer = version
        if version is None:
            return False
        live = self._bundle
        identity = self._identity(version)
        if live is not None and identity == self._live_id:
            return False
        if self._refused_ids.get(version) == identity and not retry_refused:
            return False
        try:
            new = self._loader(self.store, version)
        except Exception as exc:
            self._refused[version] = f"{type(exc).__name__}: {exc}"
            self._refused_ids[version] = identity
            logger.error(
                "refused bundle %s: %s; still serving %s",
                version,
                self._refused[version],
                live.version if live is not None else "nothing",
            )
            return False
        self._refused.pop(version, None)
        self._refused_ids.pop(version, None)
        self._live_id = identity
        self._base = new  # a new bundle supersedes the old one's deltas
        self._bundle = new  # the atomic swap: one reference assignment
        # A bundle is ~10^5–10^6 long-lived containers (per-item lists) that never form
        # garbage cycles; left in the collector's oldest generation, every full collection
        # walks them all: 305 ms at 500,000 items, a p99 spike and a steady CPU tax.
        # Freezing moves them out of the collector's sight; reference counting still frees
        # the old bundle once its last request is done (a bundle holds no reference cycles;
        # tests/test_serving.py checks the old one is freed). Freezing takes every object
        # alive at that moment, so the young generations, where fresh cyclic garbage sits,
        # are collected first (~3 ms; a full collection would stall requests ~0.3 s).
        gc.collect(1)
        gc.freeze()
        logger.info("bundle %s is live (was %s)", version, live.version if live else "nothing")
        return True

    def _identity(self, version: str) -> BundleId:
        """(name, inode, mtime) of the bundle's manifest; zeros when it cannot be read, so a
        missing bundle is tried once, refused, and tried again only if it appears."""
        try:
            st = os.stat(self.store.root / version / MANIFEST)
        except OSError:
            return (version, 0, 0)
        return (version, st.st_ino, st.st_mtime_ns)

    # Background polling --------------------------------------------------------------------
    def start(self) -> None:
        """Load the live bundle now (if any), then keep checking in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="recflow-bundle-reload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the polling thread (waits for a load in progress, up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        gc.unfreeze()  # let the collector see everything again (and tidy up at exit)

    def _poll(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            try:
                self.check()
            except Exception:  # never let the poller die: the next check may succeed
                logger.exception("bundle check failed")
