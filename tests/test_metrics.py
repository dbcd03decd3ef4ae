"""Ranking metrics against values computed by hand, and ties counted against the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from models.baselines import PopularityModel
from models.metrics import (
    coverage,
    intra_list_diversity,
    mask_seen,
    metrics_at_k,
    novelty,
    rank_metrics,
    target_ranks,
)
from models.ranking import NO_ITEM, top_k


def scores_listing(order: list[int], n_items: int) -> np.ndarray:
    """One row of distinct scores whose descending order is ``order``, then the other items."""
    rest = [i for i in range(n_items) if i not in order]
    row = np.empty(n_items)
    row[order + rest] = np.arange(n_items, 0, -1, dtype=np.float64)
    return row


def test_single_target_hand_computed() -> None:
    # user 0: target at rank 1; user 1: target at rank 3; user 2: target not in the top 3.
    scores = np.stack([scores_listing(o, 10) for o in ([5, 1, 2], [7, 8, 9], [1, 2, 3])])
    targets = [np.array([5]), np.array([9]), np.array([4])]
    m = rank_metrics(scores, targets, [1, 3])
    assert m["hr"][1] == pytest.approx(1 / 3)
    assert m["hr"][3] == pytest.approx(2 / 3)
    assert m["mrr"][3] == pytest.approx((1 + 1 / 3) / 3)
    assert m["ndcg"][3] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["recall"][3] == pytest.approx(2 / 3)


def test_multi_target_ndcg_and_recall() -> None:
    scores = scores_listing([1, 9, 2, 8], 10)[None, :]
    m = rank_metrics(scores, [np.array([2, 1, 3])], [4])
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg"][4] == pytest.approx(dcg / idcg)
    assert m["recall"][4] == pytest.approx(2 / 3)
    assert m["mrr"][4] == pytest.approx(1.0)


def test_users_without_targets_are_not_counted() -> None:
    scores = np.stack([scores_listing([1, 2], 5), scores_listing([3, 4], 5)])
    m = rank_metrics(scores, [np.array([1]), np.array([], dtype=int)], [2])
    assert m["hr"][2] == 1.0


def test_a_target_ranks_after_every_item_tied_with_it() -> None:
    #                  0    1    2    3    4    5     6       7
    row = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.5, -np.inf, np.nan])
    # target 2 ties with 1, 3 and 5: three items above it, plus the 0.9 → rank 5, not 2
    assert target_ranks(row[None, :], [np.array([2])])[0].tolist() == [5.0]
    # two tied targets take the last two places of their group (4 and 5), one each
    assert sorted(target_ranks(row[None, :], [np.array([3, 1])])[0].tolist()) == [4.0, 5.0]
    # a masked (−∞) or NaN target can never be recommended; masked items never count as ties
    assert target_ranks(row[None, :], [np.array([6, 7, 4])])[0].tolist() == [6.0, np.inf, np.inf]
    m = rank_metrics(row[None, :], [np.array([2])], [4, 5])
    assert (m["hr"][4], m["hr"][5], m["mrr"][5]) == (0.0, 1.0, pytest.approx(1 / 5))


def test_a_scorer_that_ties_every_item_gets_hr_zero_not_one() -> None:
    """Popularity fitted on nothing scores every item 0. Breaking ties by index put item 0
    first, and users whose target is item 0 made a constant scorer look perfect."""
    n_users, n_items = 200, 500
    model = PopularityModel()
    model.fit(sp.csr_matrix((n_users, n_items), dtype=np.float32), [])
    histories = [np.array([u % n_items + 1]) for u in range(n_users)]
    scores = mask_seen(model.score(histories), histories)
    targets = [np.array([0]) for _ in range(n_users)]
    assert set(top_k(scores.copy(), 10)[:, 0].tolist()) == {0}  # every list starts with the target
    m = rank_metrics(scores, targets, [10])
    assert m["hr"][10] == 0.0 and m["ndcg"][10] == 0.0 and m["mrr"][10] == 0.0
    # one notch above the crowd and the target is first: ties are what the model loses
    scores[:, 0] = 1e-6
    assert rank_metrics(scores, targets, [1])["hr"][1] == 1.0


def test_more_targets_than_the_direct_comparison_handles() -> None:
    rng = np.random.default_rng(7)
    row = rng.integers(0, 5, 300).astype(np.float32)
    targets = rng.choice(300, 40, replace=False)
    assert np.array_equal(
        np.sort(target_ranks(row[None, :], [targets])[0]), np.sort(worst_case_ranks(row, targets))
    )


def test_top_k_orders_and_masks_seen() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.0]])
    mask_seen(scores, [np.array([1])])
    assert top_k(scores, 3).tolist() == [[3, 2, 0]]


def test_coverage_and_novelty() -> None:
    recommended = np.array([[0, 1], [0, 2]])
    assert coverage(recommended, n_items=10, k=2) == pytest.approx(0.3)
    popularity = np.array([4.0, 2.0, 1.0])
    expected = np.mean([-math.log2(4 / 4), -math.log2(2 / 4), -math.log2(4 / 4), -math.log2(1 / 4)])
    assert novelty(recommended, popularity, n_users=4, k=2) == pytest.approx(expected)
    padded = np.array([[0, 1], [2, NO_ITEM]])  # a user with one unseen item left
    assert coverage(padded, n_items=10, k=2) == pytest.approx(0.3)
    assert novelty(padded, popularity, n_users=4, k=2) == pytest.approx(
        np.mean([-math.log2(4 / 4), -math.log2(2 / 4), -math.log2(1 / 4)])
    )


def test_precision_and_map_hand_computed() -> None:
    # user 0: targets 1 and 3 at ranks 1 and 3, target 9 outside the top 3;
    # user 1: its one target at rank 2.
    scores = np.stack([scores_listing([1, 2, 3, 4], 10), scores_listing([5, 6, 7], 10)])
    m = rank_metrics(scores, [np.array([1, 3, 9]), np.array([6])], [1, 3])
    assert m["precision"][3] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # AP@3: (P@1 + P@3) / min(3 targets, 3) = (1 + 2/3) / 3 for user 0; 1/2 for user 1
    assert m["map"][3] == pytest.approx(((1 + 2 / 3) / 3 + 1 / 2) / 2)
    assert m["precision"][1] == pytest.approx(1 / 2)
    # AP@1 divides by min(3, 1) = 1: user 0's first place is a target, so 1
    assert m["map"][1] == pytest.approx(1 / 2)
    # all the first min(|T|, K) places targets: AP 1
    perfect = rank_metrics(scores_listing([4, 2, 8], 10)[None, :], [np.array([2, 4, 8])], [2, 3])
    assert perfect["map"][2] == perfect["map"][3] == 1.0
    assert perfect["precision"][3] == 1.0 and perfect["precision"][2] == 1.0


def test_precision_and_map_count_ties_against_the_model() -> None:
    row = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    # target 2 ties with 1 and 3: rank 4, not 2
    m = rank_metrics(row[None, :], [np.array([2])], [3, 4])
    assert (m["precision"][3], m["map"][3]) == (0.0, 0.0)
    assert m["precision"][4] == pytest.approx(1 / 4) and m["map"][4] == pytest.approx(1 / 4)


def test_intra_list_diversity_hand_computed() -> None:
    #                       A  B  C
    categories = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    lists = np.array([[0, 1, 2], [0, 3, 1], [3, 2, NO_ITEM]])
    # list 0: d(0,1) = 1 - |{A}|/|{A,B}| = 0.5, d(0,2) = d(1,2) = 1 → 2.5 / 3
    # list 1: item 3 has no category, only the pair (0, 1) counts → 0.5
    # list 2: one categorised item, no pair: not counted
    assert intra_list_diversity(lists, categories, 3) == pytest.approx((2.5 / 3 + 0.5) / 2)
    assert intra_list_diversity(lists, categories, 2) == pytest.approx(0.5)  # only [0, 1]
    assert intra_list_diversity(lists[2:], categories, 3) is None
    assert intra_list_diversity(lists, np.zeros((4, 0), np.float32), 3) is None


# Brute force: the worst order of the tied items, sorted outright ------------------------------
def worst_case_ranks(row: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Candidates by score descending, non-targets before targets among equal scores; the
    1-based positions of the targets (inf for targets that are not candidates)."""
    target_set = set(np.asarray(targets).tolist())
    candidates = [i for i in range(len(row)) if row[i] > -np.inf]  # NaN > −∞ is False
    order = sorted(candidates, key=lambda i: (-row[i], i in target_set, i))
    position = {item: p + 1 for p, item in enumerate(order)}
    return np.array([position.get(t, np.inf) for t in sorted(target_set)], dtype=np.float64)


def average_precision(positions: np.ndarray, k: int) -> float:
    """AP@K walking the list: at each target's position, the precision of the list so far."""
    at = set(np.asarray(positions).tolist())
    found, total = 0, 0.0
    for position in range(1, k + 1):
        if position in at:
            found += 1
            total += found / position
    return total / min(len(positions), k)


def list_metrics(positions: list[np.ndarray], ks: list[int]) -> dict[str, dict[int, float]]:
    """HR, NDCG, MRR, recall, precision and MAP from explicit list positions, the textbook way."""
    out: dict[str, dict[int, float]] = {m: {} for m in ("hr", "ndcg", "mrr", "recall", "precision", "map")}
    users = [p for p in positions if len(p)]
    for k in ks if users else []:
        hits = [[q for q in p if q <= k] for p in users]
        out["precision"][k] = float(np.mean([len(h) / k for h in hits]))
        out["map"][k] = float(np.mean([average_precision(p, k) for p in users]))
        out["hr"][k] = float(np.mean([len(h) > 0 for h in hits]))
        out["mrr"][k] = float(np.mean([1 / min(h) if h else 0.0 for h in hits]))
        out["recall"][k] = float(np.mean([len(h) / len(p) for h, p in zip(hits, users, strict=True)]))
        out["ndcg"][k] = float(
            np.mean(
                [
                    sum(1 / math.log2(q + 1) for q in h)
                    / sum(1 / math.log2(i + 2) for i in range(min(len(p), k)))
                    for h, p in zip(hits, users, strict=True)
                ]
            )
        )
    return out


score_values = st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 0.5, -np.inf, np.nan])


@st.composite
def evaluation_cases(draw: st.DrawFn) -> tuple[np.ndarray, list[np.ndarray]]:
    n_users, n_items = draw(st.integers(1, 6)), draw(st.integers(1, 30))
    scores = np.array(
        draw(st.lists(score_values, min_size=n_users * n_items, max_size=n_users * n_items)), dtype=np.float64
    ).reshape(n_users, n_items)
    targets = [
        np.array(draw(st.lists(st.integers(0, n_items - 1), max_size=min(n_items, 20))), dtype=np.int64)
        for _ in range(n_users)
    ]
    return scores, targets


@settings(max_examples=300, deadline=None)
@given(evaluation_cases())
def test_ranks_and_metrics_match_the_worst_case_sort(case: tuple[np.ndarray, list[np.ndarray]]) -> None:
    scores, targets = case
    ranks = target_ranks(scores, targets)
    expected = [worst_case_ranks(scores[u], targets[u]) for u in range(len(targets))]
    for got, want in zip(ranks, expected, strict=True):
        assert np.array_equal(np.sort(got), np.sort(want))
    ks = [1, 3, 10]
    got_m, want_m = metrics_at_k(ranks, ks), list_metrics(expected, ks)
    for name in want_m:
        for k in want_m[name]:
            assert got_m[name][k] == pytest.approx(want_m[name][k]), (name, k)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(2, 60), st.integers(0, 2**32 - 1))
def test_without_ties_the_metrics_are_those_of_the_top_k_list(n_users: int, n_items: int, seed: int) -> None:
    """Distinct scores: the pessimistic ranks are the list positions, as before the tie rule."""
    rng = np.random.default_rng(seed)
    scores = rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float64)
    seen = [rng.choice(n_items, rng.integers(0, n_items // 2 + 1), replace=False) for _ in range(n_users)]
    mask_seen(scores, seen)
    targets = [np.setdiff1d(rng.choice(n_items, 2), s)[:1] for s in seen]
    listed = top_k(scores.copy(), n_items)
    positions = [
        np.array([np.flatnonzero(listed[u] == t)[0] + 1 for t in targets[u]], dtype=np.float64)
        for u in range(n_users)
    ]
    ks = [1, 5]
    got, want = rank_metrics(scores, targets, ks), list_metrics(positions, ks)
    for name in want:
        for k in want[name]:
            assert got[name][k] == pytest.approx(want[name][k])


@settings(max_examples=200, deadline=None)
@given(evaluation_cases())
def test_precision_and_map_bounds(case: tuple[np.ndarray, list[np.ndarray]]) -> None:
    """Per user P@K ≤ 1[hit] and AP@K ≤ 1[hit], so both means stay ≤ HR; K·P@K is the hit
    count, so P@K ≤ Recall@K·|T|/K; with one target AP@K is the reciprocal rank."""
    scores, targets = case
    ranks = target_ranks(scores, targets)
    ks = [1, 2, 5, 10]
    m = metrics_at_k(ranks, ks)
    for k in ks:
        assert 0.0 <= m["precision"][k] <= m["hr"][k] + 1e-12
        assert 0.0 <= m["map"][k] <= m["hr"][k] + 1e-12
    single = [r[:1] for r in ranks]
    one = metrics_at_k(single, ks)
    for k in ks:
        assert one["map"][k] == pytest.approx(one["mrr"][k])
        assert one["precision"][k] == pytest.approx(one["hr"][k] / k)


def pairwise_diversity(lists: np.ndarray, categories: np.ndarray, k: int) -> float | None:
    """Intra-list diversity with Python sets, pair by pair."""
    sets = [frozenset(np.flatnonzero(row).tolist()) for row in categories]
    per_list = []
    for row in lists[:, :k]:
        items = [i for i in row.tolist() if i != NO_ITEM and sets[i]]
        pairs = [(a, b) for x, a in enumerate(items) for b in items[x + 1 :]]
        if pairs:
            per_list.append(np.mean([1 - len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a, b in pairs]))
    return float(np.mean(per_list)) if per_list else None


@st.composite
def category_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n_items, n_categories = draw(st.integers(1, 12)), draw(st.integers(1, 5))
    cells = draw(st.lists(st.booleans(), min_size=n_items * n_categories, max_size=n_items * n_categories))
    categories = np.array(cells, dtype=np.float32).reshape(n_items, n_categories)
    n_users, width = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    lists = np.array(
        draw(st.lists(st.integers(NO_ITEM, n_items - 1), min_size=n_users * width, max_size=n_users * width))
    ).reshape(n_users, width)
    return lists, categories


@settings(max_examples=300, deadline=None)
@given(category_cases(), st.integers(1, 6))
def test_intra_list_diversity_matches_the_pairwise_definition(
    case: tuple[np.ndarray, np.ndarray], k: int
) -> None:
    lists, categories = case
    got, want = intra_list_diversity(lists, categories, k), pairwise_diversity(lists, categories, k)
    if want is None:
        assert got is None
    else:
        assert got is not None and 0.0 <= got <= 1.0 and got == pytest.approx(want)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 10), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_diversity_is_zero_for_one_category_and_one_for_disjoint_ones(
    width: int, n_users: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n_items = 3 * width
    lists = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    one_genre = np.zeros((n_items, 4), np.float32)
    one_genre[:, 2] = 1.0
    assert intra_list_diversity(lists, one_genre, width) == 0.0
    same_set = np.zeros((n_items, 4), np.float32)
    same_set[:, [0, 3]] = 1.0  # every item in the same two categories: still 0
    assert intra_list_diversity(lists, same_set, width) == 0.0
    disjoint = np.eye(n_items, dtype=np.float32)  # every item its own category
    assert intra_list_diversity(lists, disjoint, width) == 1.0
    # the order of a list does not matter, only its set of items
    shuffled = np.stack([rng.permutation(row) for row in lists])
    mixed = (rng.random((n_items, 4)) < 0.5).astype(np.float32)
    a, b = intra_list_diversity(lists, mixed, width), intra_list_diversity(shuffled, mixed, width)
    assert (a is None and b is None) or a == pytest.approx(b)
