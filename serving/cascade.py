"""The recommendation cascade: retrieve → rank → diversify (MMR) → de-duplicate → explore.

Why a cascade: scoring every item with the best model does not scale to a large catalogue
within milliseconds, and the best-scored list is often ten near-copies of one thing. So:

1. **Retrieve** ``N`` candidates from the item index with the user vector (an ANN search,
   sub-millisecond at 500,000 items). The user vector is the two-tower model's
   (``encode_users``, contract C4) when the bundle's model has one, else the mean of the
   history's item text vectors; a session's private delta moves it (``session_delta``).
2. **Rank** the candidates with a :class:`RankStage`: the bundle's ``ranker/`` (C5) when it
   has one, else the bundle model's scores for those columns. The rank score is
   min-max scaled over the candidates and blended with the user vector's similarity
   (``retrieval_weight``), so a session's delta changes the order, not only the pool.
3. **MMR** picks the list greedily by ``λ·relevance − (1−λ)·max similarity to the picks``.
4. **Near-duplicates** (cosine above ``duplicate_threshold`` to a pick) are dropped.
5. **Exploration**: the last slot goes to a relevant candidate unlike the list (a random
   one, seeded per user and day, among the candidates least similar to the picks), so the
   reader can show a taste the model does not know yet.

Every item says which stage put it in the list: ``ranker`` (it is in the top-k by
relevance anyway), ``mmr`` (diversity pulled it in from further down), ``exploration``,
``fresh_popular`` or ``popular`` (fallbacks). A bundle without item vectors cannot retrieve
or measure similarity, so it is served by the rank stage over all items, as before.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from models.ann import ItemIndex
from models.ranking import top_k

if TYPE_CHECKING:
    from storage.settings import ServingSettings

logger = logging.getLogger("recflow.serving")

_search_threads = 1
_thread_state = threading.local()


def set_search_threads(n: int) -> None:
    """FAISS (OpenMP) threads per query for every request thread from now on."""
    global _search_threads
    _search_threads = n


def pin_threads() -> None:
    """Limit BLAS and OpenMP (FAISS, numpy's BLAS, torch) to ``search_threads`` in this thread.

    Concurrency comes from requests, not from splitting one small product over cores: left
    at their defaults, each request thread's BLAS/OpenMP teams spin-wait after every call and
    a MovieLens request cost 8.4 ms of CPU instead of 2.0 (measured, ``make bench-serve``).
    OpenMP's count is per calling thread, so this runs once in each thread that serves.
    """
    if getattr(_thread_state, "threads", None) != _search_threads:
        import faiss
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=_search_threads)
        faiss.omp_set_num_threads(_search_threads)
        _thread_state.threads = _search_threads


Stage = Literal["ranker", "mmr", "exploration", "fresh_popular", "popular", "similar", "search", "fresh"]
Strategy = Literal["personalized", "fresh_popular_fallback", "popularity_fallback"]


# The rank stage -----------------------------------------------------------------------------
@runtime_checkable
class RankStage(Protocol):
    """Scores candidate items for one history; higher is better. ``models.ranker.Ranker`` (C5)
    has exactly this method, so a bundle's ``ranker/`` plugs in without an adapter."""

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``history``: item indices, oldest first; ``candidates``: item indices. One score each."""
        ...


class ModelRanker:
    """The bundle's recommender as a rank stage: ``score(histories, items=...)`` when the model
    accepts candidate columns (C4), else its full score row, of which the candidates are taken."""

    def __init__(self, model: Any) -> None:
        self.model = model
        try:
            self._takes_items = "items" in inspect.signature(model.score).parameters
        except (TypeError, ValueError):
            self._takes_items = False

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if self._takes_items:
            return np.asarray(self.model.score([history], items=candidates)[0], dtype=np.float64)
        return np.asarray(self.model.score([history])[0])[candidates].astype(np.float64)


DENSE_ROW_BELOW = 50_000
"""Catalogue size below which the neighbour sums go into a full score row (one ``bincount``,
the fastest way when the row is small); above it they are matched to the candidates through
a per-thread slot table instead, so no 500,000-wide row is allocated per request."""


class NeighbourhoodRanker:
    """ItemKNN-family scores for the candidate columns, straight from the similarity rows.

    A score is ``Σ_t w_t · S[h_t, c]`` over the history's rows of the item-item matrix ``S``,
    with ``w_t = decay^age`` (itemknn-recency, repeats summed) or 1 per distinct item
    (itemknn), exactly as the models weigh a profile; ``tests/test_serving_cascade.py`` checks
    the two agree. The models' own ``score(items=...)`` slices ``S`` column-wise through
    scipy, which is the slow direction for a CSR matrix: 2.4 ms per request on MovieLens-100K
    and 42 ms at 500,000 items, against 0.23 ms and ~50 µs here.
    """

    MODELS = ("itemknn", "itemknn-recency")

    def __init__(self, model: Any, dense_below: int = DENSE_ROW_BELOW) -> None:
        similarity = model.similarity.tocsr()
        # Raw CSR arrays: slicing a scipy matrix costs ~100 µs of bookkeeping per request,
        # gathering the history's rows straight from ``indptr`` costs a few.
        self.indptr = similarity.indptr.astype(np.int64)
        self.indices = similarity.indices
        self.data = similarity.data
        self.n_items = similarity.shape[1]
        self.dense = self.n_items < dense_below
        self.decay = float(getattr(model, "decay", 1.0)) if model.name == "itemknn-recency" else None
        self._powers = np.ones(1, dtype=np.float64)
        self._local = threading.local()

    def _slots(self) -> np.ndarray:
        """This thread's item → candidate-position table, all −1 between calls.

        One per thread (4 bytes per item: 2 MB at 500,000 items) because requests run on the
        event loop and in the thread pool at once; within a thread a call never interleaves.
        """
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = np.full(self.n_items, -1, dtype=np.int32)
        return slots

    def _recency(self, n: int) -> np.ndarray:
        """``decay^(n-1), ..., decay^0``: the weights of a history of ``n``, oldest first."""
        decay = 1.0 if self.decay is None else self.decay
        if n > len(self._powers):  # grows to the longest history seen, then only slices
            self._powers = np.power(decay, np.arange(max(n, 2 * len(self._powers))), dtype=np.float64)
        return self._powers[n - 1 :: -1]

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores of distinct ``candidates`` (a repeated candidate scores once, the others 0)."""
        history = np.asarray(history, dtype=np.int64)
        candidates = np.asarray(candidates, dtype=np.int64)
        if len(history) == 0 or len(candidates) == 0:
            return np.zeros(len(candidates), dtype=np.float64)
        if self.decay is None:
            history = np.unique(history)
            weights = np.ones(len(history), dtype=np.float64)
        else:
            weights = self._recency(len(history))
        starts = self.indptr[history]
        lengths = self.indptr[history + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(len(candidates), dtype=np.float64)
        # Positions of every history row's entries: run t covers starts[t] .. starts[t]+len[t].
        offsets = np.arange(total, dtype=np.int64) + np.repeat(
            starts - (np.cumsum(lengths) - lengths), lengths
        )
        cols = self.indices[offsets]
        vals = self.data[offsets] * np.repeat(weights, lengths)
        if self.dense:  # MovieLens: 113 history rows × 300 neighbours, 0.23 ms here, 0.37 below
            return np.bincount(cols, weights=vals, minlength=self.n_items)[candidates]
        # Each neighbour entry finds its candidate's position through the thread's table,
        # which is set for these candidates and cleared again: no sort, no search.
        slots = self._slots()
        slots[candidates] = np.arange(len(candidates), dtype=np.int32)
        try:
            pos = slots[cols]
        finally:
            slots[candidates] = -1
        hit = pos >= 0
        return np.bincount(pos[hit], weights=vals[hit], minlength=len(candidates))


def load_rank_stage(bundle_dir: Path, model: Any) -> tuple[RankStage, str]:
    """The bundle's ``ranker/`` (C5) if it has one, else the model; and a name for the stage.

    A bundle that ships a ranker this code cannot load is refused (the caller raises), rather
    than silently served with a different ranking than the pipeline evaluated.
    """
    ranker_dir = bundle_dir / "ranker"
    if ranker_dir.is_dir():
        from models.ranker import Ranker

        load = Ranker.load
        ranker = load(ranker_dir) if _is_classmethod(Ranker, "load") else _load_instance(Ranker, ranker_dir)
        return ranker, "ranker"
    name = getattr(model, "name", type(model).__name__)
    if name in NeighbourhoodRanker.MODELS and hasattr(model, "similarity"):
        return NeighbourhoodRanker(model), f"model:{name}"
    return ModelRanker(model), f"model:{name}"


def _is_classmethod(cls: type, name: str) -> bool:
    return isinstance(inspect.getattr_static(cls, name), classmethod | staticmethod)


def _load_instance(cls: type, directory: Path) -> Any:
    instance = cls()
    loaded = instance.load(directory)
    return loaded if loaded is not None else instance


# The retrieval space ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RetrievalSpace:
    """Item vectors, their index, and how a history becomes a user vector in the same space."""

    vectors: np.ndarray
    """(n_items, d) float32; row i is item index i."""
    index: ItemIndex
    source: Literal["two-tower", "text"]
    model: Any = None
    """The two-tower model when ``source`` is ``two-tower`` (for ``encode_users``)."""

    def user_vector(self, history: np.ndarray) -> np.ndarray:
        """(d,) float32; zeros for an empty history."""
        if len(history) == 0:
            return np.zeros(self.vectors.shape[1], dtype=np.float32)
        if self.source == "two-tower":
            return np.asarray(self.model.encode_users([history])[0], dtype=np.float32)
        # mean(axis=0) without numpy's Python-level wrapper: the same float32 result, ~10 µs less
        return np.add.reduce(self.vectors[history], axis=0) / np.float32(len(history))


def retrieval_space(
    model: Any, vectors: np.ndarray | None, index: ItemIndex | None, item_ids: Sequence[str]
) -> RetrievalSpace | None:
    """Two-tower vectors when the model has them (C4), else the bundle's text vectors and index."""
    # NeuMF-like models encode users and items but do not score by their dot product.
    dot_space = getattr(model, "retrieval", True)
    if dot_space and hasattr(model, "encode_items") and hasattr(model, "encode_users"):
        from models.ann import build_index
        from storage.settings import IndexSettings

        item_vecs = np.ascontiguousarray(model.encode_items(), dtype=np.float32)
        if item_vecs.shape[0] != len(item_ids):
            raise ValueError(f"model encodes {item_vecs.shape[0]} items, the catalogue has {len(item_ids)}")
        tower_index = build_index(item_vecs, list(item_ids), IndexSettings())
        return RetrievalSpace(item_vecs, tower_index, "two-tower", model)
    if vectors is not None and index is not None:
        return RetrievalSpace(vectors, index, "text")
    return None


def session_delta(
    vectors: np.ndarray, weighted_items: Iterable[tuple[int, float]], learning_rate: float
) -> np.ndarray | None:
    """The session's private user-vector delta: toward liked/clicked items, away from skipped
    ones, ``learning_rate`` per unit of event weight. None when the session did nothing."""
    pairs = list(weighted_items)
    if not pairs or learning_rate == 0.0:
        return None
    rows = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
    weights = np.fromiter((w for _, w in pairs), dtype=np.float32, count=len(pairs))
    return learning_rate * (weights @ vectors[rows])


# The cascade --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ItemBoost:
    """Item-level scores every reader shares (``update_mode: global``), in one bundle's indices.

    ``scores[i]`` is added to item ``i``'s relevance; ``top`` (most trending first) join the
    candidates, so an item readers are clicking can rise even where retrieval missed it."""

    scores: np.ndarray
    """(n_items,) float64, >= 0; 0 for items with no signal."""
    top: np.ndarray
    """Item indices of the most trending items, best first."""

    def extra(self, cand: np.ndarray, exclude: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
        """The top items not already candidates nor excluded (and inside ``within``, if given)."""
        extra = self.top
        if len(extra) == 0:
            return extra
        keep = ~np.isin(extra, cand) & ~np.isin(extra, exclude)
        if within is not None:
            keep &= np.isin(extra, within)
        return extra[keep]


@dataclass(frozen=True)
class CascadeParams:
    """Per-request knobs (defaults come from ``ServingSettings``)."""

    k: int
    candidates: int
    mmr_lambda: float
    retrieval_weight: float
    duplicate_threshold: float
    explore: bool
    seed: int
    reach: int = 0
    """Candidates beyond a pool: the reader's best matches among recent stories it left out."""
    reach_hours: float = 48.0

    @classmethod
    def from_settings(
        cls,
        serving: ServingSettings,
        k: int,
        *,
        mmr_lambda: float | None = None,
        explore: bool | None = None,
        seed: int = 0,
    ) -> CascadeParams:
        """The knobs for a list of ``k``: the settings' values where the request left them out.
        At least ``k`` candidates are retrieved, so a deep request is never short for want of them."""
        return cls(
            k=k,
            candidates=max(serving.candidates, k),
            mmr_lambda=serving.mmr_lambda if mmr_lambda is None else mmr_lambda,
            retrieval_weight=serving.retrieval_weight,
            duplicate_threshold=serving.duplicate_threshold,
            explore=serving.exploration if explore is None else explore,
            seed=seed,
            reach=serving.feed_reach,
            reach_hours=serving.feed_reach_hours,
        )


@dataclass
class CascadeResult:
    """A list as item indices, best first, each with its score and the stage that placed it."""

    strategy: Strategy
    indices: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    reason: str | None = None
    pipeline: list[str] = field(default_factory=list)
    """The stages that ran, in order (e.g. ``retrieval``, ``ranker:model:itemknn``, ``mmr``...)."""
    candidates: int = 0
    duplicates_removed: int = 0

    def add(self, idx: int, score: float, stage: Stage) -> None:
        self.indices.append(int(idx))
        self.scores.append(float(score))
        self.stages.append(stage)


def stable_seed(*parts: object) -> int:
    """A seed from strings (user, bundle, day...): the same request gets the same exploration."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def retrieve(
    space: RetrievalSpace,
    user_vec: np.ndarray,
    n: int,
    exclude: np.ndarray,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` nearest items to ``user_vec`` not in ``exclude`` (and in ``allowed``, sorted
    item indices, if given), and their similarity."""
    norm = float(np.linalg.norm(user_vec))
    if norm == 0.0 or not np.isfinite(norm):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    query = (user_vec / norm).astype(np.float32)[None, :]
    pin_threads()
    if allowed is not None:
        return retrieve_among(space.vectors, query[0], n, not_in(allowed, exclude))
    want = min(n + len(exclude), space.index.n)
    scores, rows = space.index.search(query, want)
    rows, scores = rows[0], scores[0]
    keep = rows >= 0
    if len(exclude):
        # membership by binary search in the (small) sorted exclusion list: np.isin sorts
        # both arrays on every call, 5× slower at these sizes
        ex = np.sort(exclude)
        pos = np.minimum(np.searchsorted(ex, rows), len(ex) - 1)
        keep &= ex[pos] != rows
    return rows[keep][:n], scores[keep][:n]


def not_in(items: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """``items`` without those in ``exclude``, in their order (binary search in the sorted
    exclusions: ``exclude`` is a reader's history, ``items`` may be a whole category)."""
    if not len(exclude) or not len(items):
        return items
    ex = np.unique(exclude)
    pos = np.minimum(np.searchsorted(ex, items), len(ex) - 1)
    return items[ex[pos] != items]


def retrieve_among(
    vectors: np.ndarray, query: np.ndarray, n: int, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` of ``rows`` with the highest inner product with ``query`` (unit, float32), best
    first (equal scores by lower row), and those scores: an exact search among a strict
    filter's items. The index would return the same list for the same rows, but reaching
    them through it means excluding every other item: a full scan of 5,000,000 rows for a
    category of 100,000, where this scores the 100,000 alone."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows) or n <= 0:
        return rows[:0], np.zeros(0, dtype=np.float32)
    # np.take gathers the rows in half the time of vectors[rows] (10.9 against 20.4 ms for
    # 125,000 of a 5M bundle's memory-mapped rows, measured alternately in one process)
    scores = np.take(vectors, rows, axis=0) @ query
    if len(rows) > n:
        head = np.argpartition(-scores, n - 1)[:n]
        rows, scores = rows[head], scores[head]
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order].astype(np.float32, copy=False)


MMR_DEPTH_PER_SLOT = 5
MMR_MIN_DEPTH = 50


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; constant (or empty) input becomes zeros. NaN/inf count as the minimum."""
    v = np.asarray(values, dtype=np.float64)
    if len(v):
        lo, hi = float(v.min()), float(v.max())
        if math.isfinite(lo) and math.isfinite(hi):  # the usual case: two reductions, no masks
            return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros_like(v)
    lo, hi = v[finite].min(), v[finite].max()
    out = np.where(finite, v, lo)
    return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def diversify(
    candidates: np.ndarray,
    relevance: np.ndarray,
    vectors: np.ndarray | None,
    params: CascadeParams,
    result: CascadeResult,
    *,
    base_stage: Stage,
    explore_by_relevance: bool = False,
) -> None:
    """MMR + near-duplicate removal + exploration over ``candidates`` (any order), into ``result``.

    The exploration slot is a candidate no more similar to the list than average: the one the
    request's seed picks, or with ``explore_by_relevance`` (a learned rank stage, whose
    relevance already says what this reader clicks and what they scrolled past) the most
    relevant of them, so the slot still leaves the reader's usual topics but not at random.

    ``relevance`` is in [0, 1]-ish and higher is better; a NaN candidate is never listed.
    ``vectors`` must be unit rows (see :func:`unit_rows`); without them the list is the top-k
    by relevance. The head is cut by ``models/ranking.py``'s rule, equal relevance in
    candidate order.
    """
    k = min(params.k, len(candidates))
    if k == 0:
        return
    # MMR re-ranks the head of the list: beyond a few times k, candidates are too weak to be
    # picked at any useful λ, and every extra row costs in each greedy step.
    depth = max(MMR_DEPTH_PER_SLOT * k, MMR_MIN_DEPTH) if vectors is not None else k
    order = top_k(np.array(relevance, dtype=np.float64), depth)
    k = min(k, len(order))
    if k == 0:
        return
    cand, rel = candidates[order], relevance[order]
    if vectors is None:
        for i in range(k):
            result.add(cand[i], rel[i], base_stage)
        return
    explore = params.explore and k >= 3 and len(cand) > k
    slots = k - 1 if explore else k
    d = vectors[cand]
    # One similarity matrix up front, then each greedy step is four vector operations over
    # the head (~50 rows): a Python loop over pairs took ~600 µs for k = 10.
    rel01 = minmax(rel)
    sim = (d @ d.T).astype(np.float64)
    # value = λ·relevance − (1−λ)·max(similarity to the picks, 0), −inf once picked or dropped.
    # The penalty term is kept as a running minimum of the picked rows of −(1−λ)·sim, which
    # equals −(1−λ)·max(…, 0) exactly (scaling by one factor preserves the order of floats).
    base = params.mmr_lambda * rel01
    scaled = sim * -(1.0 - params.mmr_lambda)
    penalty = np.zeros(len(cand))
    near_copies = sim > params.duplicate_threshold
    np.fill_diagonal(near_copies, False)
    has_copies = near_copies.any(axis=1).tolist()
    is_open = np.ones(len(cand), dtype=bool)
    duplicates = 0
    picks: list[int] = []
    j = int(np.argmax(rel01))  # the first pick is the most relevant; argmax takes the first of ties
    while True:
        picks.append(j)
        base[j] = -np.inf
        is_open[j] = False
        if has_copies[j]:
            near = near_copies[j] & is_open
            if (n_near := int(np.count_nonzero(near))) > 0:
                duplicates += n_near
                base[near] = -np.inf
                is_open[near] = False
        if len(picks) == slots:
            break
        np.minimum(penalty, scaled[j], out=penalty)
        value = penalty + base
        j = int(value.argmax())
        if value[j] == -np.inf:
            break
    result.indices.extend(cand[picks].tolist())
    result.scores.extend(rel[picks].tolist())
    result.stages.extend(base_stage if j < slots else "mmr" for j in picks)
    result.duplicates_removed += duplicates
    if explore:
        rest = np.flatnonzero(is_open)
        if len(rest):
            max_sim = np.maximum(sim[picks].max(axis=0), -1.0)
            # Unlike the list: a remaining candidate no more similar to the picks than average,
            # chosen by the request's seed (the same reader gets the same one all day).
            near = max_sim[rest]
            novel = rest[near <= sum(near.tolist()) / len(rest)]
            if explore_by_relevance:
                j = int(novel[int(np.argmax(rel[novel]))])
            else:
                j = int(novel[params.seed % len(novel)])
            result.add(cand[j], rel[j], "exploration")
    result.pipeline.extend(["mmr", "dedup"] + (["exploration"] if explore else []))


UNIT_TOLERANCE = 1e-5
"""Rows whose lengths all lie this close to 1 are unit rows already (float32 rounding)."""


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so similarity is one dot product per pair.

    Already-unit float32 rows (text embeddings usually are) come back as the same array, not
    a copy: at 500,000 × 64 a copy is 128 MB more per worker, and memory the cache must share.
    """
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if len(v) and float(np.abs(norms - 1.0).max()) <= UNIT_TOLERANCE:
        return v
    return v / np.maximum(norms, 1e-12)


def personalized(
    history: np.ndarray,
    exclude: np.ndarray,
    space: RetrievalSpace,
    ranker: RankStage,
    ranker_name: str,
    diversity_vectors: np.ndarray | None,
    params: CascadeParams,
    *,
    delta: np.ndarray | None = None,
    extra_vectors: np.ndarray | None = None,
    pool: np.ndarray | None = None,
    beyond: np.ndarray | None = None,
    boost: ItemBoost | None = None,
    allowed: np.ndarray | None = None,
) -> CascadeResult:
    """The full cascade for one reader.

    ``history`` feeds the ranker and the user vector; ``extra_vectors`` (e.g. encoded free
    titles) join the user vector's mean; ``delta`` is the session's private shift. ``pool``
    restricts candidates to given items (today's feed) instead of searching the index;
    ``beyond`` (sorted item indices outside it) adds the ``params.reach`` of them nearest to
    the user vector.
    ``boost`` (global mode) adds shared item scores and its trending items as candidates.
    ``allowed`` (sorted item indices: a strict category filter) limits every candidate to them.
    """
    result = CascadeResult("personalized")
    user_vec = space.user_vector(history)
    if extra_vectors is not None and len(extra_vectors):
        n_hist = len(history)
        user_vec = (user_vec * n_hist + extra_vectors.sum(axis=0)) / (n_hist + len(extra_vectors))
    if delta is not None:
        norm = float(np.linalg.norm(user_vec))
        user_vec = (user_vec / norm if norm > 0 else user_vec) + delta
    if pool is None:
        cand, sims = retrieve(space, user_vec, params.candidates, exclude, allowed)
        result.pipeline.append(f"retrieval:{space.source}")
    else:
        cand = pool[~np.isin(pool, exclude)] if len(exclude) else pool
        if allowed is not None:
            cand = cand[np.isin(cand, allowed)]
        norm = float(np.linalg.norm(user_vec))
        unit = user_vec / norm if norm > 0 else user_vec
        sims = space.vectors[cand] @ unit.astype(np.float32)
        result.pipeline.append("pool")
        if beyond is not None and len(beyond) and params.reach > 0 and norm > 0:
            reach = beyond if allowed is None else beyond[np.isin(beyond, allowed)]
            query = unit.astype(np.float32)
            more, more_sims = retrieve_among(space.vectors, query, params.reach, not_in(reach, exclude))
            if len(more):
                cand = np.concatenate([cand, more])
                sims = np.concatenate([sims, more_sims])
                result.pipeline.append("reach")
    if boost is not None:
        within = pool if allowed is None else allowed if pool is None else pool[np.isin(pool, allowed)]
        extra = boost.extra(cand, exclude, within)
        if len(extra):
            norm = float(np.linalg.norm(user_vec))
            unit = user_vec / norm if norm > 0 else user_vec
            cand = np.concatenate([cand, extra])
            sims = np.concatenate([np.asarray(sims), space.vectors[extra] @ unit.astype(np.float32)])
    result.candidates = len(cand)
    if len(cand) == 0:
        return result
    rank_scores = ranker.score(history, cand) if len(history) else np.zeros(len(cand))
    relevance = minmax(rank_scores) + params.retrieval_weight * np.asarray(sims, dtype=np.float64)
    if boost is not None:
        relevance = relevance + boost.scores[cand]
    result.pipeline.append(f"ranker:{ranker_name}")
    diversify(
        cand,
        relevance,
        diversity_vectors,
        params,
        result,
        base_stage="ranker",
        explore_by_relevance=bool(getattr(ranker, "orders_exploration", False)),
    )
    return result
