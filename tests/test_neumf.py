"""NeuMF (GMF + MLP + category projection) on a real slice of MovieLens-100K."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.neumf import NeuMFModel
from models.registry import build_model, load_model
from tasks.training import SplitData, train_and_evaluate
from tests.slice_data import load_slice

pytestmark = pytest.mark.slow  # trains NeuMF

torch.set_num_threads(1)

FAST = {"dim": 16, "mlp_layers": [32, 16], "epochs": 5, "patience": 5, "batch_size": 1024, "progress": False}


@pytest.fixture(scope="module")
def data(ml100k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    return load_slice(ml100k_slice, tmp_path_factory.mktemp("neumf"))


@pytest.fixture(scope="module")
def fitted(data: SplitData) -> NeuMFModel:
    result = train_and_evaluate(data, "neumf", FAST, [10])
    assert isinstance(result.model, NeuMFModel)
    return result.model


def test_loss_falls_and_it_learns_beyond_random(data: SplitData, fitted: NeuMFModel) -> None:
    curve = fitted.training_curve()
    assert curve[-1]["loss"] < curve[0]["loss"]
    # below the BCE of always predicting the base rate (1 positive : 4 negatives)
    base = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    assert curve[-1]["loss"] < base - 0.05
    # held-out next items rank far above random (random NDCG@10 over ~1,600 items ≈ 0.003)
    assert max(c["val_ndcg10"] for c in curve) > 0.02


def test_category_projection_changes_item_vectors(data: SplitData) -> None:
    with_cats = build_model("neumf", **{**FAST, "epochs": 1})
    without = build_model("neumf", **{**FAST, "epochs": 1, "use_categories": False})
    for m in (with_cats, without):
        m.set_item_features(data.item_features)  # type: ignore[attr-defined]
        m.fit(data.matrix(("train",)), data.train)
    assert with_cats.net.cat_gmf is not None and without.net.cat_gmf is None  # type: ignore[attr-defined]
    # two items with the same ID embedding but different genres score differently
    net = with_cats.net  # type: ignore[attr-defined]
    cats = net.categories.numpy()
    a, b = next((i, j) for i in range(50) for j in range(50) if not np.array_equal(cats[i], cats[j]))
    with torch.no_grad():
        net.item_gmf.weight[b] = net.item_gmf.weight[a]
        net.item_mlp.weight[b] = net.item_mlp.weight[a]
    s = with_cats.score([data.train[0]], np.array([a, b]))
    assert s[0, 0] != pytest.approx(s[0, 1])


def test_save_load_round_trip_and_candidate_scores(
    data: SplitData, fitted: NeuMFModel, tmp_path: Path
) -> None:
    fitted.save(tmp_path / "n")
    loaded = load_model(tmp_path / "n")
    h = data.histories(("train", "valid"))[:20]
    full = fitted.score(h)
    assert full.shape == (20, data.n_items)
    assert np.allclose(loaded.score(h), full, atol=1e-5)
    items = np.array([3, 900, 12])
    assert np.allclose(loaded.score(h, items), full[:, items], atol=1e-5)
    assert loaded.encode_users(h).shape[0] == 20 and loaded.encode_items().shape[0] == data.n_items
    # the pairwise path used in training agrees with the all-items path used for scoring
    net = loaded.net  # type: ignore[attr-defined]
    with torch.no_grad():
        ug, um = loaded._user_vectors(h[:1])  # type: ignore[attr-defined]
        ig, im = net.item_vectors()
        pair = net.pair_logits(ug.expand(3, -1), um.expand(3, -1), ig[items], im[items]).numpy()
    assert np.allclose(pair, full[0, items], atol=1e-4)
