"""Full-ranking top-K metrics over the whole catalogue.

Every user's scores cover all items; items the user saw before the evaluated part are
masked out (score −∞) so the model is never rewarded for recommending what is known.
``targets`` may hold one item (leave-last-out) or several (temporal split).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RANK_METRICS = ("hr", "ndcg", "mrr", "recall")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first. Ties go to the lower index."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def mask_seen(scores: np.ndarray, seen: Sequence[np.ndarray]) -> np.ndarray:
    """Set the scores of already-seen items to −inf in place; returns ``scores``."""
    for row, items in enumerate(seen):
        if len(items):
            scores[row, items] = -np.inf
    return scores


def rank_metrics(
    recommended: np.ndarray, targets: Sequence[np.ndarray], ks: Sequence[int]
) -> dict[str, dict[int, float]]:
    """HR@K, NDCG@K, MRR@K and Recall@K averaged over users.

    ``recommended`` is ``(n_users, max(ks))`` item indices, best first; ``targets[u]`` the
    held-out items of user ``u``. HR: any target in the top K. NDCG: DCG over IDCG with binary
    gains. MRR: reciprocal rank of the first target in the top K, else 0. Recall: share of the
    targets in the top K.
    """
    n_users = recommended.shape[0]
    out: dict[str, dict[int, float]] = {m: {} for m in RANK_METRICS}
    discounts = 1.0 / np.log2(np.arange(2, recommended.shape[1] + 2))
    for k in ks:
        hr = ndcg = mrr = recall = 0.0
        for u in range(n_users):
            target = set(np.asarray(targets[u]).tolist())
            if not target:
                continue
            hits = np.fromiter(
                (i in target for i in recommended[u, :k]), dtype=bool, count=min(k, recommended.shape[1])
            )
            if hits.any():
                hr += 1.0
                mrr += 1.0 / (int(np.argmax(hits)) + 1)
                dcg = float(discounts[: len(hits)][hits].sum())
                idcg = float(discounts[: min(len(target), k)].sum())
                ndcg += dcg / idcg
                recall += float(hits.sum()) / len(target)
        evaluated = sum(1 for t in targets if len(t))
        denom = max(evaluated, 1)
        out["hr"][k] = hr / denom
        out["ndcg"][k] = ndcg / denom
        out["mrr"][k] = mrr / denom
        out["recall"][k] = recall / denom
    return out


def coverage(recommended: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top K."""
    return float(len(np.unique(recommended[:, :k]))) / max(n_items, 1)


def novelty(recommended: np.ndarray, item_popularity: np.ndarray, n_users: int, k: int) -> float:
    """Mean self-information ``-log2(p(i))`` of recommended items, ``p(i)`` = share of users
    who interacted with ``i`` in training (unseen items count as seen once)."""
    p = np.maximum(item_popularity, 1.0) / max(n_users, 1)
    return float(np.mean(-np.log2(p[recommended[:, :k]])))
