"""Impression metrics exactly as MIND's official scorer computes them.

A news log is judged per *impression*: the list of stories one user was shown at one time,
with the ones they clicked. Each metric is computed on one impression's scores and labels
and then averaged over impressions, as ``evaluate.py`` of the MIND competition does:

* AUC: ``sklearn.metrics.roc_auc_score`` (ties count one half), here as the equivalent
  Mann-Whitney statistic over average ranks, so scikit-learn is not needed;
* MRR: ``Σ_i label_i / rank_i`` divided by the number of clicks;
* nDCG@k: gains ``2^label - 1``, discounts ``log2(rank + 1)``, divided by the ideal DCG.

Ranks come from ``np.argsort(scores)[::-1]``, the scorer's own ordering, so tied scores
are ordered exactly as the official script orders them. Impressions with no click or with
only clicks have no defined AUC and break MRR/nDCG (division by zero) in the official script;
they are skipped here and counted in :attr:`ImpressionScores.skipped`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one impression (needs at least one click and one non-click)."""
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels > 0
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs clicks and non-clicks; got {n_pos} clicks, {n_neg} non-clicks")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # average ranks: ties count 1/2
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mrr_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean reciprocal rank of the clicked stories (MIND's ``mrr_score``)."""
    order = np.argsort(np.asarray(scores))[::-1]
    ranked = np.take(np.asarray(labels, dtype=np.float64), order)
    return float(np.sum(ranked / (np.arange(len(ranked)) + 1)) / np.sum(ranked))


def dcg_score(labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Discounted cumulative gain at ``k`` (gains ``2^label - 1``)."""
    order = np.argsort(np.asarray(scores))[::-1]
    ranked = np.take(np.asarray(labels, dtype=np.float64), order[:k])
    gains = 2**ranked - 1
    discounts = np.log2(np.arange(len(ranked)) + 2)
    return float(np.sum(gains / discounts))


def ndcg_score(labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """nDCG at ``k``: DCG of ``scores`` over the DCG of the ideal order."""
    labels = np.asarray(labels, dtype=np.float64)
    return dcg_score(labels, scores, k) / dcg_score(labels, labels, k)


@dataclass(frozen=True)
class ImpressionScores:
    """Averages over the impressions that have both clicks and non-clicks."""

    auc: float
    mrr: float
    ndcg5: float
    ndcg10: float
    impressions: int
    """Impressions averaged over."""
    skipped: int
    """Impressions left out because they had no click or nothing but clicks."""

    def as_dict(self) -> dict[str, float | int]:
        return {
            "AUC": self.auc,
            "MRR": self.mrr,
            "nDCG@5": self.ndcg5,
            "nDCG@10": self.ndcg10,
            "impressions": self.impressions,
            "skipped": self.skipped,
        }


def impression_metrics(
    labels: Iterable[Sequence[float] | np.ndarray], scores: Iterable[Sequence[float] | np.ndarray]
) -> ImpressionScores:
    """AUC, MRR, nDCG@5 and nDCG@10 per impression, averaged over impressions.

    ``labels[i]`` and ``scores[i]`` belong to impression ``i`` (one entry per shown story,
    1 = clicked). A length mismatch inside an impression is an error naming the impression.
    """
    sums = np.zeros(4, dtype=np.float64)
    used = skipped = 0
    for i, (lab, sc) in enumerate(zip(labels, scores, strict=True)):
        lab_arr = np.asarray(lab, dtype=np.float64)
        sc_arr = np.asarray(sc, dtype=np.float64)
        if lab_arr.shape != sc_arr.shape:
            raise ValueError(
                f"impression {i}: {lab_arr.shape[0]} labels but {sc_arr.shape[0]} scores; expected one "
                "score per shown story"
            )
        n_pos = int((lab_arr > 0).sum())
        if n_pos == 0 or n_pos == len(lab_arr):
            skipped += 1
            continue
        sums += (
            auc_score(lab_arr, sc_arr),
            mrr_score(lab_arr, sc_arr),
            ndcg_score(lab_arr, sc_arr, 5),
            ndcg_score(lab_arr, sc_arr, 10),
        )
        used += 1
    if used == 0:
        raise ValueError(f"no impression has both clicks and non-clicks ({skipped} skipped)")
    auc, mrr, n5, n10 = (sums / used).tolist()
    return ImpressionScores(auc, mrr, n5, n10, used, skipped)
