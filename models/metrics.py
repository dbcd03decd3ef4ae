"""Full-ranking top-K metrics over the whole catalogue.

Every user's scores cover all items; items the user saw before the evaluated part are
masked out (score −∞) so the model is never rewarded for recommending what is known.
``targets`` may hold one item (leave-last-out) or several (temporal split).

Ties count against the model, as RecBole's and most published evaluators' do: a target
that shares its score with other items is ranked after all of them,
``rank = 1 + #(score > s_t) + #(score == s_t, other candidate items)``. A popularity-like
scorer that gives every item the same score therefore gets HR ≈ 0, not the HR of whichever
items a sort happens to put first. Several targets tied with each other take the last
places of their tie group, one each (the worst order of the tied items). The metrics read
the scores, never a top-k list, so no list's tie rule (``models/ranking.py``) can change
them; without ties the ranks are the list positions and nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.ranking import NO_ITEM

RANK_METRICS = ("hr", "ndcg", "mrr", "recall")
COMPARE_BELOW = 16
"""Up to this many targets a row, count by direct comparison (O(t·n)); beyond, sort the row."""


def mask_seen(scores: np.ndarray, seen: Sequence[np.ndarray]) -> np.ndarray:
    """Set the scores of already-seen items to −inf in place; returns ``scores``."""
    for row, items in enumerate(seen):
        if len(items):
            scores[row, items] = -np.inf
    return scores


def target_ranks(scores: np.ndarray, targets: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per row, the pessimistic 1-based rank of each distinct target (see the module docstring).

    ``scores`` is ``(n_rows, n_items)`` with seen items already −∞; ``targets[r]`` the held-out
    items of row ``r``. Items scored −∞ or NaN are not candidates: they rank no target lower,
    and a target scored so can never be recommended (rank ``inf``). Float64 ranks, one per
    distinct target, so ``len`` is the number of targets recall divides by.
    """
    out: list[np.ndarray] = []
    for row, items in enumerate(targets):
        t = np.unique(np.asarray(items, dtype=np.int64))
        ranks = np.full(len(t), np.inf)
        scored = scores[row, t]
        ok = scored > -np.inf  # False for −∞ and NaN
        if ok.any():
            ranks[ok] = _ranks_in_row(scores[row], scored[ok])
        out.append(ranks)
    return out


def _ranks_in_row(row: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Pessimistic ranks of targets scored ``s`` (all candidates) within ``row``."""
    if len(s) <= COMPARE_BELOW:
        # comparisons with −∞ and NaN entries are False, so non-candidates never count
        greater = (row[None, :] > s[:, None]).sum(axis=1)
        equal = (row[None, :] == s[:, None]).sum(axis=1)
    else:
        ascending = np.sort(row[row > -np.inf])
        left = np.searchsorted(ascending, s, "left")
        right = np.searchsorted(ascending, s, "right")
        greater, equal = len(ascending) - right, right - left
    # ``equal`` counts the target itself and the targets tied with it: of a group of m tied
    # targets, the one with j more of them after it (in any fixed order) sits j places before
    # the group's last place.
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    after = np.searchsorted(ordered, ordered, "right") - 1 - np.arange(len(s))
    ranks = np.empty(len(s))
    ranks[order] = greater[order] + equal[order] - after
    return ranks


def metrics_at_k(ranks: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """HR@K, NDCG@K, MRR@K and Recall@K averaged over users, from :func:`target_ranks`.

    Users without targets are not counted. HR: any target within the top K. NDCG: DCG over
    IDCG with binary gains. MRR: reciprocal rank of the best-ranked target within the top K,
    else 0. Recall: share of the targets within the top K.
    """
    users = [np.asarray(r, dtype=np.float64) for r in ranks if len(r)]
    out: dict[str, dict[int, float]] = {m: {} for m in RANK_METRICS}
    if not users:
        for k in ks:
            for m in RANK_METRICS:
                out[m][k] = 0.0
        return out
    sizes = np.array([len(r) for r in users])
    flat = np.concatenate(users)
    owner = np.repeat(np.arange(len(users)), sizes)
    best = np.minimum.reduceat(flat, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    gain = np.zeros(len(flat))
    finite = np.isfinite(flat)
    gain[finite] = 1.0 / np.log2(flat[finite] + 1.0)
    for k in ks:
        hit = flat <= k
        n_hits = np.bincount(owner, weights=hit, minlength=len(users))
        dcg = np.bincount(owner, weights=np.where(hit, gain, 0.0), minlength=len(users))
        idcg = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[np.minimum(sizes, k) - 1]
        out["hr"][k] = float(np.mean(n_hits > 0))
        out["ndcg"][k] = float(np.mean(dcg / idcg))
        out["mrr"][k] = float(np.mean(np.where(best <= k, 1.0 / best, 0.0)))
        out["recall"][k] = float(np.mean(n_hits / sizes))
    return out


def rank_metrics(
    scores: np.ndarray, targets: Sequence[np.ndarray], ks: Sequence[int]
) -> dict[str, dict[int, float]]:
    """:func:`metrics_at_k` of one batch of masked ``scores``; ``targets[r]`` for row ``r``."""
    return metrics_at_k(target_ranks(scores, targets), ks)


def coverage(recommended: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top K."""
    top = recommended[:, :k]
    return float(len(np.unique(top[top != NO_ITEM]))) / max(n_items, 1)


def novelty(recommended: np.ndarray, item_popularity: np.ndarray, n_users: int, k: int) -> float:
    """Mean self-information ``-log2(p(i))`` of recommended items, ``p(i)`` = share of users
    who interacted with ``i`` in training (unseen items count as seen once)."""
    p = np.maximum(item_popularity, 1.0) / max(n_users, 1)
    top = recommended[:, :k]
    listed = top[top != NO_ITEM]
    return float(np.mean(-np.log2(p[listed]))) if len(listed) else 0.0
