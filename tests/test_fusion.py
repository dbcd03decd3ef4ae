"""``two-tower-knn``: two-tower and ItemKNN-recency scores fused, the weight chosen on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.baselines import RecencyItemKNNModel
from models.configs import FusionConfig
from models.fusion import TwoTowerKNNModel, best_weight, fused, standardise
from models.registry import build_model, load_model
from tasks.training import SplitData, evaluate, fit_for_serving, train_and_evaluate
from tests.slice_data import load_slice

torch.set_num_threads(1)

TINY_TT: dict[str, object] = {"dim": 16, "max_len": 10, "layers": 1, "epochs": 3, "patience": 3}
TINY_TT |= {"progress": False, "windows": "all", "batch_size": 32}


def test_standardise_makes_rows_comparable() -> None:
    scores = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0], [0.0, 100.0, 200.0]])
    z = standardise(scores)
    assert np.allclose(z.mean(axis=1), 0.0)
    assert np.allclose(z[[0, 2]].std(axis=1), 1.0)
    assert np.array_equal(z[1], np.zeros(3))  # a constant row carries no preference
    assert np.allclose(z[0], z[2])  # same order, different scale: the same standardised row


def test_fused_weight_ends_are_the_components() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 7)), rng.normal(size=(4, 7)) * 50 + 3
    assert np.allclose(fused(a, b, 1.0), standardise(a), atol=1e-6)
    assert np.allclose(fused(a, b, 0.0), standardise(b), atol=1e-6)


def test_best_weight_picks_the_component_that_ranks_the_targets() -> None:
    # two users, five items; model A ranks each target first, model B ranks it last
    a = np.array([[5.0, 1, 2, 3, 4], [1.0, 5, 2, 3, 4]])
    b = -a
    histories = [np.array([], dtype=np.int64), np.array([], dtype=np.int64)]
    targets = [np.array([0]), np.array([1])]
    w, tried = best_weight(a, b, histories, targets, [0.0, 0.3, 0.5, 0.7, 1.0])
    assert tried[1.0] == pytest.approx(1.0)
    assert tried[0.0] < 0.5
    assert w == 0.7  # 0.7 already ranks both targets first; the first of the best wins
    w, _ = best_weight(b, a, histories, targets, [0.0, 0.5, 1.0])
    assert w == 0.0


def test_config_names_bad_values() -> None:
    with pytest.raises(ValueError, match="weight_grid"):
        FusionConfig(weight_grid=[0.5, 1.5])
    with pytest.raises(ValueError, match="weight"):
        FusionConfig(weight=2.0)
    with pytest.raises(ValueError, match="bogus"):
        build_model("two-tower-knn", bogus=1)


@pytest.fixture(scope="module")
def data(ml100k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    return load_slice(ml100k_slice, tmp_path_factory.mktemp("fusion"))


@pytest.mark.slow
def test_fusion_on_the_slice_tunes_weight_on_validation_and_round_trips(
    data: SplitData, tmp_path: Path
) -> None:
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    result = train_and_evaluate(
        data, "two-tower-knn", {"two_tower": TINY_TT, "weight_grid": grid, "weight": 0.5}, [10]
    )
    model = result.model
    assert isinstance(model, TwoTowerKNNModel)
    assert set(model.tried) == set(grid)
    assert model.weight == max(grid, key=lambda w: (model.tried[w], -grid.index(w)))
    assert result.params["weight"] == model.weight
    # the tuned weight is what the model scores with: its validation NDCG@10 is the best tried
    assert result.valid["ndcg@10"] == pytest.approx(max(model.tried.values()), abs=1e-6)
    # and the fusion is at least as good on validation as ItemKNN-recency alone (weight 0)
    knn = train_and_evaluate(data, "itemknn-recency", {}, [10])
    assert result.valid["ndcg@10"] >= knn.valid["ndcg@10"] - 1e-9
    assert model.tried[0.0] == pytest.approx(knn.valid["ndcg@10"], abs=1e-6)

    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, TwoTowerKNNModel) and loaded.weight == model.weight
    hist = data.histories(("train",))[:5]
    assert np.allclose(loaded.score(hist), model.score(hist), atol=1e-5)
    items = np.array([3, 1, 7])
    assert np.allclose(loaded.score(hist, items), model.score(hist)[:, items], atol=1e-6)

    # the serving refit (no validation part) keeps the weight chosen on validation
    serving = fit_for_serving(data, "two-tower-knn", result.params)
    assert isinstance(serving, TwoTowerKNNModel)
    assert serving.weight == model.weight and serving.tried == {}
    assert isinstance(serving.knn, RecencyItemKNNModel)
    assert np.isfinite(evaluate(serving, data, "test", [10])["ndcg@10"])


def test_settings_list_candidates_and_model_name_pins_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.nightly import candidate_params
    from models.configs import ModelOverrides
    from storage.settings import Settings

    default = Settings()
    assert default.model.served_candidates() == ["two-tower-knn", "itemknn-recency", "popularity"]
    params = candidate_params(default)
    assert list(params) == default.model.candidates
    budget = default.model.candidate_cpu_seconds
    assert params["two-tower-knn"]["two_tower"]["max_cpu_seconds"] == budget
    assert params["two-tower-knn"]["two_tower"]["windows"] == "all"
    assert params["itemknn-recency"] == {"neighbors": 300, "shrink": 0.0, "chunk": 1024, "decay": 0.6}
    assert Settings(model={"name": "two-tower"}).model.served_candidates() == ["two-tower"]
    assert candidate_params(Settings(model={"name": "neumf"}))["neumf"]["max_cpu_seconds"] == budget
    given = Settings(model={"name": "popularity", "candidates": ["itemknn"]})
    assert given.model.served_candidates() == ["itemknn"]
    assert Settings(model={"candidates": []}).model.served_candidates() == ["itemknn-recency"]
    monkeypatch.setenv("RECFLOW_MODEL__CANDIDATE_CPU_SECONDS", "30")
    assert candidate_params(Settings())["two-tower-knn"]["two_tower"]["max_cpu_seconds"] == 30
    overrides = ModelOverrides.model_validate({"two-tower-knn": {"two_tower": {"max_cpu_seconds": 5}}})
    assert candidate_params(Settings(), overrides)["two-tower-knn"]["two_tower"]["max_cpu_seconds"] == 5
    with pytest.raises(ValueError, match="unknown model 'bpr'"):
        Settings(model={"candidates": ["bpr"]})
    with pytest.raises(ValueError, match="twice"):
        Settings(model={"candidates": ["popularity", "popularity"]})
    with pytest.raises(ValueError, match=r"config given for \['neumf'\]"):
        candidate_params(Settings(), ModelOverrides.model_validate({"neumf": {"dim": 4}}))
