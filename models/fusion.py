"""Score fusion of the two-tower retriever and recency-weighted ItemKNN (``two-tower-knn``).

The two models are right about different users: the two-tower reads the order of the whole
recent history, ItemKNN-recency the few items just rated and their co-occurrence neighbours.
Their scores live on different scales (logits against summed cosine similarities), so each
is standardised per user over the catalogue (zero mean, unit variance) before they are
mixed: ``weight · z(two-tower) + (1 - weight) · z(itemknn-recency)``.

``weight`` is chosen on validation: given a validation set (``set_validation``, as the
evaluation and the flows do) the fit tries ``weight_grid`` and keeps the best validation
NDCG@10 (counted exactly as the evaluator counts it). :meth:`params` reports the chosen
weight, so the serving refit on every interaction, which has no validation part, reuses it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from models.baselines import RecencyItemKNNModel
from models.configs import FusionConfig, ModelConfig, resolve_config
from models.features import ItemFeatures
from models.metrics import mask_seen, metrics_at_k, target_ranks
from models.two_tower import TwoTowerModel

TWO_TOWER_DIR, KNN_DIR = "two_tower", "itemknn_recency"


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row to zero mean and unit variance (a constant row becomes all zeros)."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return (scores - mean) / np.where(std > 0, std, 1.0)


def fused(tt: np.ndarray, knn: np.ndarray, weight: float) -> np.ndarray:
    """``weight · z(tt) + (1 - weight) · z(knn)`` as float32 scores."""
    return (weight * standardise(tt) + (1.0 - weight) * standardise(knn)).astype(np.float32)


def best_weight(
    tt: np.ndarray,
    knn: np.ndarray,
    histories: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    grid: Sequence[float],
) -> tuple[float, dict[float, float]]:
    """The weight of ``grid`` with the best NDCG@10 of the fused scores (rows: users with a
    target; history items masked; ties counted against the model), and every weight's NDCG@10.
    Equal NDCG: the first weight of the grid wins."""
    z_tt, z_knn = standardise(tt), standardise(knn)
    tried: dict[float, float] = {}
    for w in grid:
        scores = (w * z_tt + (1.0 - w) * z_knn).astype(np.float32)
        mask_seen(scores, list(histories))
        tried[float(w)] = float(metrics_at_k(target_ranks(scores, list(targets)), [10])["ndcg"][10])
    best = max(tried, key=lambda w: (tried[w], -list(tried).index(w)))
    return best, tried


class TwoTowerKNNModel:
    """Two-tower and ItemKNN-recency, scores fused per user (see the module docstring)."""

    name: ClassVar[str] = "two-tower-knn"
    Config: ClassVar[type[FusionConfig]] = FusionConfig

    def __init__(self, config: ModelConfig | None = None, /, **params: Any) -> None:
        self.config = resolve_config(FusionConfig, config, params)
        self.two_tower = TwoTowerModel(self.config.two_tower)
        self.knn = RecencyItemKNNModel(self.config.knn)
        self.weight = self.config.weight
        self._validation: tuple[list[np.ndarray], list[np.ndarray]] | None = None
        self.tried: dict[float, float] = {}
        """Validation NDCG@10 of each weight tried in the last fit (empty: weight kept)."""
        self.seconds = 0.0

    # ----- contract -------------------------------------------------------------------
    def set_item_features(self, features: ItemFeatures) -> None:
        self.two_tower.set_item_features(features)

    def set_validation(self, histories: list[np.ndarray], targets: list[np.ndarray]) -> None:
        """Early stopping of the two-tower and the choice of ``weight`` use these."""
        self._validation = (histories, targets)
        self.two_tower.set_validation(histories, targets)

    def training_curve(self) -> list[dict[str, Any]]:
        return self.two_tower.training_curve()

    def params(self) -> dict[str, Any]:
        return {
            "two_tower": self.two_tower.params(),
            "knn": self.knn.params(),
            "weight": self.weight,
            "tune_weight": self.config.tune_weight,
            "weight_grid": list(self.config.weight_grid),
        }

    def fit(self, train: sp.csr_matrix, histories: list[np.ndarray]) -> None:
        started = time.perf_counter()
        self.knn.fit(train, histories)
        self.two_tower.fit(train, histories)
        self.tried = {}
        if self.config.tune_weight and self._validation is not None:
            val_hist, val_targets = self._validation
            users = [u for u in range(len(val_targets)) if len(val_targets[u])]
            hist = [np.asarray(val_hist[u], dtype=np.int64) for u in users]
            self.weight, self.tried = best_weight(
                self.two_tower.score(hist),
                self.knn.score(hist),
                hist,
                [val_targets[u] for u in users],
                self.config.weight_grid,
            )
        self.seconds = round(time.perf_counter() - started, 3)

    def score(self, histories: list[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        # standardised over the whole catalogue, so a candidate's score does not depend on
        # which other candidates were asked for
        scores = fused(self.two_tower.score(histories), self.knn.score(histories), self.weight)
        return scores if items is None else np.ascontiguousarray(scores[:, np.asarray(items, np.int64)])

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.two_tower.save(directory / TWO_TOWER_DIR)
        self.knn.save(directory / KNN_DIR)
        tried = {str(k): v for k, v in self.tried.items()}
        meta = {"name": self.name, "params": self.params(), "tried": tried}
        (directory / "model.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> TwoTowerKNNModel:
        meta = json.loads((directory / "model.json").read_text())
        p = meta["params"]
        model = cls(weight=p["weight"], tune_weight=p["tune_weight"], weight_grid=p["weight_grid"])
        model.two_tower = TwoTowerModel.load(directory / TWO_TOWER_DIR)
        model.knn = RecencyItemKNNModel.load(directory / KNN_DIR)
        model.config = resolve_config(
            FusionConfig,
            None,
            {**p, "two_tower": {**model.two_tower.params(), "progress": False}},
        )
        model.tried = {float(k): v for k, v in meta.get("tried", {}).items()}
        return model
