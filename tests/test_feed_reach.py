"""``serving.feed_reach``: a reader with a profile is also offered their best matches among the
recent stories today's pool left out; a new reader, an old story, an undated one never."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from models.ann import build_index
from serving.bundle import LoadedBundle, text_similarity_bundle
from serving.cascade import CascadeParams
from storage.settings import IndexSettings, ServingSettings
from tests.serving_fixtures import pool_bundle

HOUR = 3600.0


def _bundle() -> tuple[LoadedBundle, dict[str, int]]:
    """Twelve stories: a pool of six (topics a and b), and six more it left out, on topic a
    (recent), on topic a but four days old, on topic a undated, and on topic c (recent)."""
    now = time.time()
    rng = np.random.default_rng(0)
    axes = {"a": 0, "b": 1, "c": 2}
    rows = [
        ("pool-a1", "a", now - 2 * HOUR),
        ("pool-a2", "a", now - 3 * HOUR),
        ("pool-b1", "b", now - 1 * HOUR),
        ("pool-b2", "b", now - 2 * HOUR),
        ("pool-b3", "b", now - 4 * HOUR),
        ("pool-b4", "b", now - 5 * HOUR),
        ("read-a1", "a", now - 6 * HOUR),
        ("read-a2", "a", now - 7 * HOUR),
        ("more-a", "a", now - 9 * HOUR),
        ("old-a", "a", now - 96 * HOUR),
        ("undated-a", "a", np.nan),
        ("more-c", "c", now - 1 * HOUR),
    ]
    vectors = np.zeros((len(rows), 8), np.float32)
    for n, (_, topic, _) in enumerate(rows):
        vectors[n, axes[topic]] = 1.0
        vectors[n, 3:] = 0.05 * rng.normal(size=5)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [r[0] for r in rows]
    bundle = pool_bundle(
        ids,
        vectors,
        [[r[1]] for r in rows],
        np.array([r[2] for r in rows], dtype=np.float64),
        np.arange(6),
        "itemknn",
        index=build_index(vectors, ids, IndexSettings()),
    )
    return text_similarity_bundle(bundle), {i: k for k, i in enumerate(ids)}


def _feed(bundle: LoadedBundle, history: list[int], **serving: Any) -> list[int]:
    """The reader's list of six from ``bundle`` under these serving settings."""
    # Stories of one topic are near-duplicates here: keep them all (no de-duplication, no MMR).
    settings = ServingSettings(
        **{"exploration": False, "mmr_lambda": 1.0, "duplicate_threshold": 1.0, **serving}
    )
    params = CascadeParams.from_settings(settings, 6)
    result = bundle.recommend_for(
        "session 's'", np.array(history, np.int64), params, min_interactions=2, use_pool=True
    )
    if any(i >= 6 for i in result.indices):
        assert "reach" in result.pipeline, result.pipeline
    return result.indices


def test_a_reader_with_a_profile_reaches_recent_stories_beyond_the_pool() -> None:
    bundle, at = _bundle()
    reads = [at["read-a1"], at["read-a2"]]
    pool_only = _feed(bundle, reads, feed_reach=0)
    assert set(pool_only) <= set(range(6)), "feed_reach = 0: the pool alone"

    reached = _feed(bundle, reads, feed_reach=3)
    assert at["more-a"] in reached[:3], "the recent story on the reader's topic, beside the pool's"
    assert _feed(bundle, reads) == _feed(bundle, reads, feed_reach=60), "on by default"
    assert at["old-a"] not in reached and at["undated-a"] not in reached, "only the window's stories"
    assert not set(reached) & set(reads), "what the reader read stays out"
    assert at["old-a"] in _feed(bundle, reads, feed_reach=3, feed_reach_hours=120.0)

    # The reach adds candidates; it never takes the reader's list out of the pool alone when a
    # filter allows only pool stories, and a new reader still gets the pool's front page.
    new = bundle.recommend_for(
        "session 'new'",
        np.zeros(0, np.int64),
        CascadeParams.from_settings(ServingSettings(feed_reach=3, exploration=False), 6),
        min_interactions=2,
        use_pool=True,
    )
    assert new.strategy == "fresh_popular_fallback" and set(new.indices) <= set(range(6))
    allowed = np.sort(np.array([at["pool-a1"], at["pool-a2"], at["pool-b1"]]))
    params = CascadeParams.from_settings(ServingSettings(feed_reach=3, exploration=False), 6)
    filtered = bundle.recommend_for(
        "session 's'", np.array(reads), params, min_interactions=2, use_pool=True, allowed=allowed
    )
    assert set(filtered.indices) <= set(allowed.tolist())


def test_reach_counts_only_the_models_stories_of_a_bundle_with_a_pool() -> None:
    bundle, at = _bundle()
    now = time.time()
    beyond = bundle.beyond_pool(now, 48.0)
    assert beyond.tolist() == sorted([at["read-a1"], at["read-a2"], at["more-a"], at["more-c"]])
    assert dataclasses.replace(bundle, pool=None).beyond_pool(now, 48.0).tolist() == []
