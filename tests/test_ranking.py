"""The one top-k rule (models/ranking.py): by hand, and against a brute-force sort."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ranking import NO_ITEM, popularity_rank, top_k
from serving.bundle import rank_unseen


def brute_force(scores: np.ndarray, k: int, exclude: set[int], key: np.ndarray | None) -> list[int]:
    """Sort every candidate by (score descending, key ascending) and cut: the documented rule."""
    keys = np.arange(len(scores)) if key is None else key
    candidates = [
        i for i in range(len(scores)) if i not in exclude and not np.isnan(scores[i]) and scores[i] > -np.inf
    ]
    return sorted(candidates, key=lambda i: (-scores[i], keys[i]))[:k]


def test_equal_scores_go_by_the_key_then_by_index() -> None:
    scores = np.array([0.0, 2.0, 0.0, 1.0, 0.0, 0.0, np.nan, -np.inf])
    # without a key: equal scores by item index
    assert top_k(scores.copy(), 4).tolist() == [1, 3, 0, 2]
    # the popularity rank as key: item 5 is the most popular of the zeros, then 4
    popular = popularity_rank(np.array([1, 50, 2, 9, 7, 8, 100, 100]))
    assert popular.tolist() == [7, 2, 6, 3, 5, 4, 0, 1]
    assert top_k(scores.copy(), 4, tiebreak=popular).tolist() == [1, 3, 5, 4]
    # NaN, −∞ and excluded items are never returned, even when k asks for more
    assert top_k(scores.copy(), 10, exclude=np.array([3]), tiebreak=popular).tolist() == [1, 5, 4, 2, 0]
    assert top_k(scores.copy(), 3, exclude=np.arange(8)).tolist() == []


def test_one_row_is_overwritten_in_place_and_a_batch_is_padded() -> None:
    row = np.array([0.5, np.nan, 0.7, 0.1])
    assert top_k(row, 2, exclude=np.array([2])).tolist() == [0, 3]
    assert row.tolist() == [0.5, -np.inf, -np.inf, 0.1]
    batch = np.array([[0.1, 0.3, 0.3], [np.nan, 1.0, -np.inf]])
    got = top_k(batch, 3, exclude=[np.array([0]), np.zeros(0, dtype=np.int64)])
    assert got.tolist() == [[1, 2, NO_ITEM], [1, NO_ITEM, NO_ITEM]]
    with pytest.raises(ValueError, match="exclusion lists"):
        top_k(np.zeros((2, 3)), 1, exclude=[np.array([0])])


def test_popularity_rank_is_a_permutation_most_popular_first() -> None:
    popularity = np.array([3.0, 3.0, 10.0, 0.0, 3.0])
    rank = popularity_rank(popularity)
    assert sorted(rank.tolist()) == list(range(5))
    assert np.argsort(rank).tolist() == [2, 0, 1, 4, 3]


# Scores from a handful of values (many ties), with NaN and −∞ among them.
score_values = st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, -1.0, np.nan, -np.inf, np.inf])


@st.composite
def ranking_cases(draw: st.DrawFn) -> tuple[np.ndarray, int, set[int], np.ndarray | None]:
    n = draw(st.integers(1, 40))
    scores = np.array(draw(st.lists(score_values, min_size=n, max_size=n)), dtype=np.float64)
    k = draw(st.integers(0, n + 3))
    exclude = set(draw(st.lists(st.integers(0, n - 1), max_size=n)))
    key = np.array(draw(st.permutations(range(n))), dtype=np.int64) if draw(st.booleans()) else None
    return scores, k, exclude, key


@settings(max_examples=300, deadline=None)
@given(ranking_cases())
def test_one_row_matches_a_brute_force_sort(
    case: tuple[np.ndarray, int, set[int], np.ndarray | None],
) -> None:
    scores, k, exclude, key = case
    expected = brute_force(scores, k, exclude, key)
    got = top_k(scores.copy(), k, exclude=np.array(sorted(exclude), dtype=np.int64), tiebreak=key)
    assert got.tolist() == expected
    if key is not None:  # the service's name for it: the same list
        assert (
            rank_unseen(scores.copy(), np.array(sorted(exclude), dtype=np.int64), k, key).tolist() == expected
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(ranking_cases(), min_size=1, max_size=5), st.integers(1, 12))
def test_a_batch_matches_a_brute_force_sort_per_row(
    cases: list[tuple[np.ndarray, int, set[int], np.ndarray | None]], k: int
) -> None:
    n = len(cases[0][0])
    rows = [c for c in cases if len(c[0]) == n]
    scores = np.stack([c[0] for c in rows])
    exclude = [np.array(sorted(c[2]), dtype=np.int64) for c in rows]
    got = top_k(scores.copy(), k, exclude=exclude)
    assert got.shape == (len(rows), min(k, n))
    for row, (s, _, ex, _) in enumerate(rows):
        expected = brute_force(s, k, ex, None)
        assert got[row].tolist() == expected + [NO_ITEM] * (min(k, n) - len(expected))


def test_the_cascade_cuts_its_candidates_by_the_same_rule() -> None:
    """Without item vectors the cascade's list is the top k of the candidates by relevance:
    equal relevance in candidate order, a NaN candidate never listed, a short list when fewer
    candidates remain."""
    from serving.cascade import CascadeParams, CascadeResult, diversify

    candidates = np.array([40, 10, 30, 20, 50, 60])
    relevance = np.array([0.2, 0.5, np.nan, 0.5, 0.9, 0.2])
    params = CascadeParams(
        k=4,
        candidates=6,
        mmr_lambda=0.7,
        retrieval_weight=0.0,
        duplicate_threshold=0.97,
        explore=False,
        seed=0,
    )
    result = CascadeResult("personalized")
    diversify(candidates, relevance, None, params, result, base_stage="ranker")
    assert result.indices == [50, 10, 20, 40]
    assert result.indices == candidates[top_k(relevance.copy(), 4)].tolist()
    assert np.isnan(relevance[2])  # the caller's relevance is left as it was
    short = CascadeResult("personalized")
    diversify(candidates[:3], np.array([np.nan, 0.1, np.nan]), None, params, short, base_stage="ranker")
    assert short.indices == [10]
