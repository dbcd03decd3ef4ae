"""Impression metrics match values computed by hand the way MIND's scorer computes them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.impression_metrics import auc_score, impression_metrics, mrr_score, ndcg_score

# Shown: a b c d e; clicked a and d. Ranked by score: a(1) b(0) e(0) d(1) c(0).
LABELS = [1, 0, 0, 1, 0]
SCORES = [0.9, 0.8, 0.1, 0.3, 0.5]


def test_single_impression_by_hand() -> None:
    # AUC: a beats b, c, e (3 pairs); d beats c only (1 pair) -> 4 of 6 pairs.
    assert auc_score(np.array(LABELS), np.array(SCORES)) == pytest.approx(4 / 6)
    # MRR: clicks at ranks 1 and 4 -> (1 + 1/4) / 2.
    assert mrr_score(np.array(LABELS), np.array(SCORES)) == pytest.approx(0.625)
    # DCG: 1/log2(2) + 1/log2(5); ideal: 1/log2(2) + 1/log2(3).
    expected = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_score(np.array(LABELS), np.array(SCORES), 10) == pytest.approx(expected)
    assert ndcg_score(np.array(LABELS), np.array(SCORES), 5) == pytest.approx(expected)
    # At k=2 only a counts: 1 / (1 + 1/log2(3)).
    assert ndcg_score(np.array(LABELS), np.array(SCORES), 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ties_follow_the_official_ordering() -> None:
    # Ties: AUC counts one half; MRR/nDCG use np.argsort(...)[::-1], which puts the later
    # of two equal scores first, as MIND's evaluate.py does.
    assert auc_score(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert mrr_score(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert mrr_score(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(1.0)


def test_average_over_impressions_skips_undefined_ones() -> None:
    result = impression_metrics(
        labels=[LABELS, [0, 1, 0], [0, 0, 0], [1, 1]],
        scores=[SCORES, [0.2, 0.1, 0.3], [0.1, 0.2, 0.3], [0.4, 0.1]],
    )
    # Second impression: the click ranks 3rd of 3 -> AUC 0, MRR 1/3, nDCG 1/log2(4) = 0.5.
    assert result.impressions == 2
    assert result.skipped == 2
    assert result.auc == pytest.approx((4 / 6 + 0.0) / 2)
    assert result.mrr == pytest.approx((0.625 + 1 / 3) / 2)
    first = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert result.ndcg10 == pytest.approx((first + 0.5) / 2)
    assert result.ndcg5 == pytest.approx((first + 0.5) / 2)


def test_mismatched_impression_is_named() -> None:
    with pytest.raises(ValueError, match="impression 1: 2 labels but 3 scores"):
        impression_metrics([[1, 0], [1, 0]], [[0.1, 0.2], [0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="no impression has both"):
        impression_metrics([[0, 0]], [[0.1, 0.2]])
