"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import coverage, mask_seen, novelty, rank_metrics, top_k


def test_single_target_hand_computed() -> None:
    # user 0: target at rank 1; user 1: target at rank 3; user 2: target not in the top 3.
    recommended = np.array([[5, 1, 2], [7, 8, 9], [1, 2, 3]])
    targets = [np.array([5]), np.array([9]), np.array([4])]
    m = rank_metrics(recommended, targets, [1, 3])
    assert m["hr"][1] == pytest.approx(1 / 3)
    assert m["hr"][3] == pytest.approx(2 / 3)
    assert m["mrr"][3] == pytest.approx((1 + 1 / 3) / 3)
    assert m["ndcg"][3] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["recall"][3] == pytest.approx(2 / 3)


def test_multi_target_ndcg_and_recall() -> None:
    recommended = np.array([[1, 9, 2, 8]])
    targets = [np.array([2, 1, 3])]
    m = rank_metrics(recommended, targets, [4])
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg"][4] == pytest.approx(dcg / idcg)
    assert m["recall"][4] == pytest.approx(2 / 3)
    assert m["mrr"][4] == pytest.approx(1.0)


def test_users_without_targets_are_not_counted() -> None:
    m = rank_metrics(np.array([[1, 2], [3, 4]]), [np.array([1]), np.array([], dtype=int)], [2])
    assert m["hr"][2] == 1.0


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
