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
them; without ties the ranks are the list positions and nothing changes. Coverage, novelty
and intra-list diversity describe the lists themselves, so they read the top-k lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.ranking import NO_ITEM

RANK_METRICS = ("hr", "ndcg", "mrr", "recall", "precision", "map")
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
    """HR, NDCG, MRR, Recall, Precision and MAP at each K, averaged over users, from
    :func:`target_ranks`.

    Users without targets are not counted. With ``T`` a user's distinct targets and ``r_t``
    their pessimistic ranks (distinct, so at most K of them are ≤ K):

    * HR@K: 1 if any target is within the top K, else 0.
    * NDCG@K: DCG over IDCG with binary gains, ``Σ_{r_t ≤ K} 1/log2(r_t + 1)`` over the same
      sum for the first ``min(|T|, K)`` places.
    * MRR@K: ``1 / min_t r_t`` when the best-ranked target is within the top K, else 0.
    * Recall@K: ``#{r_t ≤ K} / |T|``.
    * Precision@K: ``#{r_t ≤ K} / K`` — K even when fewer than K unseen items exist, so a
      user with one target scores at most 1/K (Precision ≤ HR always).
    * MAP@K: the mean over users of average precision at K,
      ``AP@K = Σ_{r_t ≤ K} P@r_t / min(|T|, K)``, where ``P@r_t`` is the precision of the
      list cut at the target's own rank (``#{t' : r_t' ≤ r_t} / r_t``). With one target it is
      ``1/r_t`` within the top K, i.e. MRR@K; it is 1 exactly when the first ``min(|T|, K)``
      places are all targets, and 0 ≤ AP ≤ HR per user.
    """
    users = [np.asarray(r, dtype=np.float64) for r in ranks if len(r)]
    out: dict[str, dict[int, float]] = {m: {} for m in RANK_METRICS}
    if not users:
        for k in ks:
            for m in RANK_METRICS:
                out[m][k] = 0.0
        return out
    sizes = np.array([len(r) for r in users])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Each user's ranks ascending, so the j-th hit (1-based) of a user sits at position j - 1
    # of its block: the precision at its rank is j / r.
    flat = np.concatenate([np.sort(r) for r in users])
    owner = np.repeat(np.arange(len(users)), sizes)
    order_in_user = np.arange(len(flat)) - np.repeat(starts, sizes) + 1
    best = flat[starts]
    gain = np.zeros(len(flat))
    finite = np.isfinite(flat)
    gain[finite] = 1.0 / np.log2(flat[finite] + 1.0)
    precision_at_rank = np.zeros(len(flat))
    precision_at_rank[finite] = order_in_user[finite] / flat[finite]
    for k in ks:
        hit = flat <= k
        n_hits = np.bincount(owner, weights=hit, minlength=len(users))
        dcg = np.bincount(owner, weights=np.where(hit, gain, 0.0), minlength=len(users))
        idcg = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[np.minimum(sizes, k) - 1]
        ap = np.bincount(owner, weights=np.where(hit, precision_at_rank, 0.0), minlength=len(users))
        out["hr"][k] = float(np.mean(n_hits > 0))
        out["ndcg"][k] = float(np.mean(dcg / idcg))
        out["mrr"][k] = float(np.mean(np.where(best <= k, 1.0 / best, 0.0)))
        out["recall"][k] = float(np.mean(n_hits / sizes))
        out["precision"][k] = float(np.mean(n_hits / k))
        out["map"][k] = float(np.mean(ap / np.minimum(sizes, k)))
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


def intra_list_diversity(recommended: np.ndarray, categories: np.ndarray, k: int) -> float | None:
    """Intra-list diversity by category at K: the mean over users of the mean pairwise
    Jaccard distance between the category sets of the items in their top K.

    ``categories`` is the multi-hot ``(n_items, n_categories)`` matrix of
    :class:`models.features.ItemFeatures`. For two items with category sets ``A`` and ``B``
    the distance is ``1 − |A ∩ B| / |A ∪ B|``: 0 when they share every category, 1 when they
    share none; a list is averaged over its ``m(m−1)/2`` unordered pairs. Items without any
    category (and ``NO_ITEM`` padding) say nothing about diversity, so they are left out of
    the pairs: a list with fewer than two categorised items is not counted, and ``None`` when
    no list is (a catalogue without categories has no such measure, rather than a 0 that
    would read as "every list is one genre").
    """
    top = recommended[:, :k]
    if categories.ndim != 2 or categories.shape[1] == 0 or top.size == 0:
        return None
    cats = np.asarray(categories, dtype=np.float64) > 0
    per_list: list[np.ndarray] = []
    for start in range(0, len(top), 1024):  # bounds the (users, K, K) intermediates
        block = top[start : start + 1024]
        listed = block != NO_ITEM
        onehot = np.where(listed[..., None], cats[np.where(listed, block, 0)], False).astype(np.float64)
        size = onehot.sum(axis=2)  # categories per listed item
        inter = np.einsum("ukc,ujc->ukj", onehot, onehot)
        union = size[:, :, None] + size[:, None, :] - inter
        known = size > 0
        pair = known[:, :, None] & known[:, None, :]
        pair &= ~np.eye(block.shape[1], dtype=bool)[None]
        distance = np.where(pair, 1.0 - inter / np.where(pair, union, 1.0), 0.0)
        n_pairs = pair.sum(axis=(1, 2))
        counted = n_pairs > 0
        per_list.append(distance.sum(axis=(1, 2))[counted] / n_pairs[counted])
    values = np.concatenate(per_list)
    return float(np.mean(values)) if len(values) else None
