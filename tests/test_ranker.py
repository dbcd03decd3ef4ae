"""The ranker (C5) over a two-tower retriever's candidates, on a real MovieLens slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.ranker import Ranker
from models.two_tower import TwoTowerModel
from tasks.training import SplitData, train_and_evaluate
from tests.slice_data import load_slice

pytestmark = pytest.mark.slow  # trains the ranker and its retriever

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(ml100k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    return load_slice(ml100k_slice, tmp_path_factory.mktemp("ranker"))


@pytest.fixture(scope="module")
def retriever(data: SplitData) -> TwoTowerModel:
    params = {
        "dim": 32,
        "max_len": 20,
        "layers": 1,
        "epochs": 6,
        "lr": 3e-3,
        "progress": False,
        "encoder": "gru",
    }
    model = train_and_evaluate(data, "two-tower", params, [10]).model
    assert isinstance(model, TwoTowerModel)
    return model


def _popularity(data: SplitData) -> np.ndarray:
    return np.bincount(np.concatenate(data.train), minlength=data.n_items).astype(np.float32)


def _target_percentile(ranker: Ranker, retriever: TwoTowerModel, data: SplitData) -> float:
    """Mean rank percentile (0 = first) of the held-out test item among 50 candidates."""
    histories = data.histories(("train", "valid"))
    scores = retriever.score(histories)
    out = []
    for u, h in enumerate(histories):
        s = scores[u].copy()
        s[h] = -np.inf
        cand = np.unique(np.concatenate([np.argsort(-s)[:49], data.test[u]]))
        r = ranker.score(h, cand)
        target = np.flatnonzero(cand == data.test[u][0])[0]
        out.append(float((r > r[target]).sum()) / len(cand))
    return float(np.mean(out))


def test_ranker_learns_to_put_the_next_item_first(
    data: SplitData, retriever: TwoTowerModel, tmp_path: Path
) -> None:
    assert data.item_features is not None
    # what each user did next at the last five points of their training history, and in valid
    contexts, clicks = [], []
    for u in range(data.n_users):
        h = np.concatenate([data.train[u], data.valid[u]])
        for cut in range(len(h) - 5, len(h)):
            contexts.append(h[:cut])
            clicks.append(h[cut : cut + 1])
    ranker = Ranker(events=["click"], epochs=8, progress=False)
    ranker.fit(retriever, contexts, {"click": clicks}, data.item_features, _popularity(data))
    curve = ranker.training_curve()
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert _target_percentile(ranker, retriever, data) < 0.4  # random ordering would give ≈ 0.5
    ranker.save(tmp_path / "ranker")
    loaded = Ranker.load(tmp_path / "ranker")
    h, cand = data.train[3], np.array([10, 2, 400, 7])
    assert np.allclose(loaded.score(h, cand), ranker.score(h, cand), atol=1e-5)
    assert loaded.params() == ranker.params()


def test_one_head_per_event_and_a_weighted_final_score(data: SplitData, retriever: TwoTowerModel) -> None:
    assert data.item_features is not None
    drama = data.item_features.category_names.index("Drama")
    is_drama = data.item_features.categories[:, drama] > 0
    rng = np.random.default_rng(0)
    scores = retriever.score(data.train)
    skips = [
        np.setdiff1d(np.argsort(-scores[u])[:30], data.valid[u])[rng.integers(0, 20, 2)]
        for u in range(data.n_users)
    ]
    labels = {
        "click": data.valid,
        "like": [v[is_drama[v]] for v in data.valid],  # people "like" the dramas they watch next
        "skip": skips,
    }
    ranker = Ranker(
        events=["click", "like", "skip"],
        weights={"click": 1.0, "like": 0.5, "skip": -1.0},
        epochs=30,
        batch_size=256,
        progress=False,
    )
    ranker.fit(retriever, data.train, labels, data.item_features, _popularity(data))
    h = data.train[0]
    cand = np.argsort(-scores[0])[:100]
    probs = ranker.head_probabilities(h, cand)
    assert probs.shape == (100, 3)
    assert np.allclose(ranker.score(h, cand), probs @ np.array([1.0, 0.5, -1.0]), atol=1e-5)
    # each head learned its own event: a like follows a click on dramas only
    share = probs[:, 1] / probs[:, 0]
    drama_cand = is_drama[cand]
    assert drama_cand.any() and (~drama_cand).any()
    assert share[drama_cand].mean() > 2 * share[~drama_cand].mean()
    # weights are configuration: making skips free changes the order
    ranker.weights = {"click": 1.0, "like": 0.5, "skip": 0.0}
    assert np.allclose(ranker.score(h, cand), probs @ np.array([1.0, 0.5, 0.0]), atol=1e-5)


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ValueError, match="weights for \\['like'\\] but events are \\['click'\\]"):
        Ranker(events=["click"], weights={"like": 1.0})
    with pytest.raises(ValueError, match="at least one event"):
        Ranker(events=[])
