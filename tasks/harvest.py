"""The morning harvest: today's pool of K fresh, diverse stories (contract C2's ``daily_pool``).

Steps, all on the items published in the last ``window_hours``:

1. **score** — freshness (halves every ``freshness_half_life_hours``; halved again for
   undated entries, whose fetch time only bounds their age) × coverage (a story
   several outlets carry matters more: 1 + ½·log2(outlets)) × engagement (1 + log1p of the
   recent interaction value on the story, when there is any).
2. **collapse near-duplicates** — the same story from several outlets under different
   headlines: greedily, best score first, a story joins an earlier representative when their
   MiniLM text vectors have cosine ≥ ``near_duplicate_cosine``, they were published within
   ``near_duplicate_hours`` (undated entries may match any time) and they quote the same
   figures (or one quotes none). Only the representative can enter the pool; its outlets count.
3. **cluster** — spherical k-means over the vectors; an item's topic is its category, else
   its cluster (``cluster-<n>``).
4. **select** — maximal marginal relevance (λ·score − (1−λ)·max cosine to what is already
   chosen) under caps: no topic beyond ``max_topic_share`` and no source beyond
   ``max_source_share`` of the pool. When the wishlist names topics or sources,
   ``reserved_wishlist_share`` of the pool is filled first from those. If the caps leave the
   pool short (too few topics), they are relaxed and the reason says so.

Every chosen story carries its rank, topic, cluster, score and the reason it was chosen.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import duckdb
import numpy as np
import pandas as pd

from models.text_encoder import encode, model_id
from storage.settings import EmbeddingSettings, HarvestSettings
from tasks.embedding import render_texts, store_vectors, text_hash

UNDATED_DISCOUNT = 0.5
"""Freshness factor of entries without a date (their fetch time may be long after publication)."""
_FIGURE = re.compile(r"\d+(?:[.,]\d+)?")


@dataclass
class PoolRow:
    rank: int
    item_id: str
    title: str
    source: str
    topic: str
    cluster: int
    reason: str
    score: float


@dataclass
class Pool:
    pool_date: date
    rows: list[PoolRow]
    candidates: int
    stories: int
    """Distinct stories among the candidates after collapsing near-duplicates."""
    collapsed: int
    """Candidates folded into another outlet's version of the same story."""
    wished: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def shares(self, key: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            value = getattr(row, key)
            counts[value] = counts.get(value, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def log_line(self) -> str:
        topics = self.shares("topic")
        sources = self.shares("source")
        return (
            f"pool {self.pool_date}: {len(self.rows)} stories from {self.candidates} candidates "
            f"({self.stories} distinct stories, {self.collapsed} near-duplicates collapsed); "
            f"{len(topics)} topics (largest {max(topics.values(), default=0)}), {len(sources)} sources "
            f"(largest {max(sources.values(), default=0)}); wishlist {self.wished or 'empty'}; "
            f"{self.seconds:.1f}s"
        )

    def markdown(self, limit: int = 50) -> str:
        lines = [
            f"### Pool of {self.pool_date}",
            "",
            self.log_line(),
            "",
            "| rank | title | source | topic | reason |",
            "|---:|---|---|---|---|",
        ]
        lines += [
            f"| {r.rank} | {_md(r.title)} | {_md(r.source)} | {_md(r.topic)} | {_md(r.reason)} |"
            for r in self.rows[:limit]
        ]
        if len(self.rows) > limit:
            lines.append(f"| … | {len(self.rows) - limit} more | | | |")
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- candidates ------------------------------------------------------------------------------


def load_candidates(
    con: duckdb.DuckDBPyConnection, window_hours: int, now: datetime, engagement_days: int
) -> pd.DataFrame:
    """Items published in the window, with their outlets, undated flag and recent engagement."""
    since = int(now.timestamp()) - window_hours * 3600
    return con.execute(
        """
        WITH outlets AS (
            SELECT item_id, count(DISTINCT source) AS outlets,
                   bool_or(merged_by = 'new' AND date_estimated) AS date_estimated
            FROM item_outlets GROUP BY item_id
        ), engagement AS (
            SELECT item_id, sum(value) AS engagement FROM interactions
            WHERE ts >= ? GROUP BY item_id
        )
        SELECT i.item_id, i.title, coalesce(i.description, '') AS description, i.categories,
               coalesce(i.source, '') AS source, i.published_ts,
               coalesce(o.outlets, 1) AS outlets, coalesce(o.date_estimated, false) AS date_estimated,
               coalesce(e.engagement, 0.0) AS engagement
        FROM items i LEFT JOIN outlets o USING (item_id) LEFT JOIN engagement e USING (item_id)
        WHERE i.published_ts >= ? AND i.published_ts <= ?
        ORDER BY i.published_ts DESC, i.item_id
        """,
        [int(now.timestamp()) - engagement_days * 86400, since, int(now.timestamp()) + 600],
    ).df()


def read_wishlist(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Wished topics and sources (from :mod:`tasks.demand`)."""
    out: dict[str, list[str]] = {}
    for kind, value in con.execute("SELECT kind, value FROM wishlist ORDER BY ratio DESC").fetchall():
        out.setdefault(kind, []).append(value)
    return out


def candidate_vectors(
    con: duckdb.DuckDBPyConnection, embedding: EmbeddingSettings, ids: list[str]
) -> np.ndarray:
    """Text vectors of ``ids`` in order, encoding (and caching in ``item_vectors``) only those
    not cached yet — the same text and cache key as the nightly embedding, so nothing is
    encoded twice, and a harvest never waits for the whole catalogue to be embedded."""
    con.register("wanted_ids", pd.DataFrame({"item_id": ids, "pos": np.arange(len(ids))}))
    items = con.execute(
        "SELECT i.item_id, i.title, i.categories, i.year, i.description, i.url, i.source "
        "FROM wanted_ids w JOIN items i USING (item_id) ORDER BY w.pos"
    ).df()
    con.unregister("wanted_ids")
    mid = model_id(embedding.model)
    hashes = [text_hash(t) for t in render_texts(items, embedding.template)]
    texts = dict(zip(hashes, render_texts(items, embedding.template), strict=True))
    con.register("wanted_hashes", pd.DataFrame({"text_hash": hashes, "pos": np.arange(len(hashes))}))
    table = con.sql(
        "SELECT w.pos, v.vector FROM wanted_hashes w JOIN item_vectors v "
        "ON v.text_hash = w.text_hash AND v.model_id = ?",
        params=[mid],
    ).to_arrow_table()
    con.unregister("wanted_hashes")
    cached = {
        int(p): np.asarray(v, dtype=np.float32)
        for p, v in zip(table.column("pos").to_pylist(), table.column("vector").to_pylist(), strict=True)
    }
    missing = list(dict.fromkeys(h for i, h in enumerate(hashes) if i not in cached))
    fresh: dict[str, np.ndarray] = {}
    if missing:
        encoded = encode(
            [texts[h] for h in missing], embedding.model, embedding.device, embedding.batch_size, False
        )
        store_vectors(con, mid, missing, encoded)
        fresh = dict(zip(missing, encoded, strict=True))
    rows = [cached[i] if i in cached else fresh[h] for i, h in enumerate(hashes)]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)


# --- near-duplicates, clusters ---------------------------------------------------------------


def collapse_near_duplicates(
    vectors: np.ndarray,
    order: np.ndarray,
    published: np.ndarray,
    undated: np.ndarray,
    texts: list[str],
    cosine: float,
    hours: float,
) -> np.ndarray:
    """``group[i]`` = index of the representative of item ``i``'s story (itself if it leads).

    ``order`` is the visiting order (best first), so a representative is always the best
    version of its story.
    """
    n = len(order)
    group = np.full(len(vectors), -1, dtype=np.int64)
    reps: list[int] = []
    rep_vecs = np.zeros((n, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
    figures = [frozenset(_FIGURE.findall(t)) for t in texts]
    for i in order:
        if reps:
            sims = rep_vecs[: len(reps)] @ vectors[i]
            for j in np.argsort(-sims):
                if sims[j] < cosine:
                    break
                rep = reps[j]
                close = (
                    undated[i] or undated[rep] or abs(int(published[i]) - int(published[rep])) <= hours * 3600
                )
                same_figures = not figures[i] or not figures[rep] or bool(figures[i] & figures[rep])
                if close and same_figures:
                    group[i] = rep
                    break
        if group[i] < 0:
            group[i] = i
            rep_vecs[len(reps)] = vectors[i]
            reps.append(int(i))
    return group


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int = 42, iterations: int = 25) -> np.ndarray:
    """Cluster labels of unit vectors (cosine k-means, k-means++ start); deterministic for ``seed``."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [vectors[rng.integers(n)]]
    for _ in range(1, k):
        dist = 1.0 - np.max(vectors @ np.stack(centres).T, axis=1)
        dist = np.clip(dist, 0, None)
        total = dist.sum()
        probs = dist / total if total > 0 else np.full(n, 1.0 / n)
        centres.append(vectors[rng.choice(n, p=probs)])
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        new = np.argmax(vectors @ c.T, axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            members = vectors[labels == j]
            if len(members):
                mean = members.mean(axis=0)
                c[j] = mean / (np.linalg.norm(mean) or 1.0)
    return labels


# --- selection -------------------------------------------------------------------------------


@dataclass
class _Candidate:
    idx: int
    topic: str
    source: str
    wished: bool


def select_pool(
    scores: np.ndarray,
    vectors: np.ndarray,
    eligible: np.ndarray,
    topics: list[str],
    sources: list[str],
    wished: np.ndarray,
    settings: HarvestSettings,
) -> list[tuple[int, str]]:
    """MMR under topic/source caps, wished stories first; returns (index, phase) in rank order.

    Phases: ``reserved`` (wishlist slots), ``mmr`` (capped), ``relaxed`` (caps lifted because
    the capped candidates ran out).
    """
    k = settings.pool_size
    topic_cap = max(1, math.floor(settings.max_topic_share * k))
    source_cap = max(1, math.floor(settings.max_source_share * k))
    top = float(scores[eligible].max()) if eligible.any() else 1.0
    relevance = scores / (top or 1.0)
    lam = settings.mmr_lambda
    max_sim = np.zeros(len(scores), dtype=np.float32)
    taken = np.zeros(len(scores), dtype=bool)
    topic_count: dict[str, int] = {}
    source_count: dict[str, int] = {}
    chosen: list[tuple[int, str]] = []

    def pick(mask: np.ndarray, phase: str, limit: int, capped: bool) -> None:
        while len(chosen) < limit:
            allowed = mask & eligible & ~taken
            if capped:
                allowed &= np.array(
                    [
                        topic_count.get(t, 0) < topic_cap and source_count.get(s, 0) < source_cap
                        for t, s in zip(topics, sources, strict=True)
                    ]
                )
            if not allowed.any():
                return
            mmr = np.where(allowed, lam * relevance - (1.0 - lam) * max_sim, -np.inf)
            best = int(np.argmax(mmr))
            taken[best] = True
            topic_count[topics[best]] = topic_count.get(topics[best], 0) + 1
            source_count[sources[best]] = source_count.get(sources[best], 0) + 1
            np.maximum(max_sim, vectors @ vectors[best], out=max_sim)
            chosen.append((best, phase))

    everyone = np.ones(len(scores), dtype=bool)
    if wished.any() and settings.reserved_wishlist_share > 0:
        pick(wished, "reserved", round(settings.reserved_wishlist_share * k), capped=True)
    pick(everyone, "mmr", k, capped=True)
    pick(everyone, "relaxed", k, capped=False)
    return chosen


def harvest(
    con: duckdb.DuckDBPyConnection,
    settings: HarvestSettings,
    embedding: EmbeddingSettings,
    *,
    now: datetime | None = None,
    pool_date: date | None = None,
) -> Pool:
    """Choose today's pool from the warehouse and write it to ``daily_pool`` (replacing the day's)."""
    started = time.perf_counter()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    pool_date = pool_date or now.date()
    wishlist = read_wishlist(con)
    cands = load_candidates(con, settings.window_hours, now, settings.demand_days)
    if cands.empty:
        write_pool(con, pool_date, [])
        return Pool(pool_date, [], 0, 0, 0, wishlist, time.perf_counter() - started)
    ids = cands["item_id"].astype(str).tolist()
    vectors = candidate_vectors(con, embedding, ids)
    texts = (cands["title"].fillna("") + " " + cands["description"].fillna("")).tolist()
    age_h = np.clip((now.timestamp() - cands["published_ts"].to_numpy(dtype=np.float64)) / 3600.0, 0, None)
    freshness = 0.5 ** (age_h / settings.freshness_half_life_hours)
    # An undated entry got its fetch time, which only bounds its age from above: discount it.
    undated = cands["date_estimated"].to_numpy(dtype=bool)
    freshness = np.where(undated, freshness * UNDATED_DISCOUNT, freshness)
    engagement = 1.0 + np.log1p(np.clip(cands["engagement"].to_numpy(dtype=np.float64), 0, None))
    base = freshness * engagement
    order = np.argsort(-base, kind="stable")
    group = collapse_near_duplicates(
        vectors,
        order,
        cands["published_ts"].to_numpy(),
        undated,
        texts,
        settings.near_duplicate_cosine,
        settings.near_duplicate_hours,
    )
    # A story's outlets: every outlet of every version folded into it.
    sources = cands["source"].astype(str).tolist()
    outlets_of: dict[int, set[str]] = {}
    for i, rep in enumerate(group):
        outlets_of.setdefault(int(rep), set()).add(sources[i])
    outlet_counts = np.array(
        [max(len(outlets_of.get(i, ())), int(cands["outlets"].iat[i])) for i in range(len(cands))],
        dtype=np.float64,
    )
    scores = base * (1.0 + 0.5 * np.log2(np.maximum(outlet_counts, 1.0)))
    eligible = group == np.arange(len(group))
    labels = spherical_kmeans(vectors, settings.clusters)
    topics = [
        (cats[0] if cats is not None and len(cats) else f"cluster-{labels[i]}")
        for i, cats in enumerate(cands["categories"])
    ]
    wished_topics = set(wishlist.get("topic", []))
    wished_sources = set(wishlist.get("source", []))
    wished = np.array(
        [t in wished_topics or s in wished_sources for t, s in zip(topics, sources, strict=True)]
    )
    picks = select_pool(scores, vectors, eligible, topics, sources, wished, settings)
    topic_seen: dict[str, int] = {}
    rows: list[PoolRow] = []
    for rank, (i, phase) in enumerate(picks, start=1):
        topic_seen[topics[i]] = topic_seen.get(topics[i], 0) + 1
        folded = int((group == i).sum()) - 1
        parts = [f"fresh {age_h[i]:.1f}h" + (" (undated: fetch time)" if undated[i] else "")]
        if outlet_counts[i] > 1:
            parts.append(
                f"{int(outlet_counts[i])} outlets"
                + (f" ({folded} near-duplicates collapsed)" if folded else "")
            )
        if engagement[i] > 1.0:
            parts.append(f"engagement {cands['engagement'].iat[i]:.0f}")
        parts.append(f"topic {topics[i]} #{topic_seen[topics[i]]}")
        if phase == "reserved":
            parts.append("reserved for the wishlist")
        elif wished[i]:
            parts.append("wished")
        if phase == "relaxed":
            parts.append("caps relaxed: too few topics/sources")
        rows.append(
            PoolRow(
                rank,
                ids[i],
                str(cands["title"].iat[i]),
                sources[i],
                topics[i],
                int(labels[i]),
                "; ".join(parts),
                round(float(scores[i]), 6),
            )
        )
    write_pool(con, pool_date, rows)
    return Pool(
        pool_date,
        rows,
        len(cands),
        int(eligible.sum()),
        int((~eligible).sum()),
        wishlist,
        time.perf_counter() - started,
    )


def write_pool(con: duckdb.DuckDBPyConnection, pool_date: date, rows: list[PoolRow]) -> None:
    """Replace ``pool_date``'s pool in one transaction (re-running the harvest is idempotent)."""
    frame = pd.DataFrame(
        [
            {
                "pool_date": pool_date,
                "rank": r.rank,
                "item_id": r.item_id,
                "topic": r.topic,
                "cluster": r.cluster,
                "source": r.source,
                "reason": r.reason,
                "score": r.score,
            }
            for r in rows
        ],
        columns=["pool_date", "rank", "item_id", "topic", "cluster", "source", "reason", "score"],
    )
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM daily_pool WHERE pool_date = ?", [pool_date])
        if len(frame):
            con.register("pool_rows", frame)
            con.execute(
                "INSERT INTO daily_pool SELECT CAST(pool_date AS DATE), rank, item_id, topic, cluster, "
                "source, reason, score FROM pool_rows"
            )
            con.unregister("pool_rows")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def latest_pool(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The newest pool's rows in rank order (empty frame when none was harvested)."""
    return con.execute(
        "SELECT * FROM daily_pool WHERE pool_date = (SELECT max(pool_date) FROM daily_pool) ORDER BY rank"
    ).df()


def ensure_pool(
    con: duckdb.DuckDBPyConnection,
    settings: HarvestSettings,
    embedding: EmbeddingSettings,
    now: datetime | None = None,
) -> Pool | None:
    """Harvest today's pool unless it exists already; returns the new pool or None."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if con.execute("SELECT count(*) FROM daily_pool WHERE pool_date = ?", [today]).fetchall()[0][0]:
        return None
    return harvest(con, settings, embedding, now=now)


def pool_fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """Identity of the latest pool, so a new pool alone makes the nightly publish a new bundle."""
    rows = con.execute(
        "SELECT max(pool_date)::VARCHAR, count(*), bit_xor(hash(item_id || rank::VARCHAR)) FROM daily_pool "
        "WHERE pool_date = (SELECT max(pool_date) FROM daily_pool)"
    ).fetchall()
    return "|".join(str(v) for v in rows[0]) if rows else ""
