"""`recflow eval`'s measures and its second protocol: precision, MAP and intra-list diversity
beside the earlier measures, and every model also on the global temporal split with the
parameters leave-last-out's validation chose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from models.baselines import PopularityModel
from models.features import ItemFeatures
from models.metrics import intra_list_diversity
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.eval_report import recommendation_lists
from tasks.prepare import KCORE_TABLE, TEMPORAL
from tasks.report import PEERS, print_report, run_evaluation
from tasks.training import SplitData, evaluate, load_split_data


def small_split(categories: np.ndarray | None) -> SplitData:
    """Six items, four users; item 0 the most popular, then 1, then 2."""
    train = [np.array([0, 1]), np.array([0, 2]), np.array([0, 1]), np.array([3])]
    data = SplitData(
        "leave_last_out",
        np.array(["a", "b", "c", "d"], dtype=object),
        np.array([str(i) for i in range(6)], dtype=object),
        train,
        [np.array([4]), np.array([1]), np.array([5]), np.array([0])],
        [np.array([2]), np.array([3]), np.array([4]), np.array([1])],
    )
    if categories is not None:
        data.item_features = ItemFeatures(None, categories, np.full(6, 0.5, np.float32))
    return data


def fitted_popularity(data: SplitData) -> PopularityModel:
    model = PopularityModel()
    model.fit(data.matrix(("train",)), data.train)
    return model


def test_evaluate_reports_precision_map_and_diversity_beside_the_earlier_measures() -> None:
    categories = np.eye(6, 3, dtype=np.float32)  # items 0-2 one category each, 3-5 none
    data = small_split(categories)
    model = fitted_popularity(data)
    ks = [1, 3]
    out = evaluate(model, data, "test", ks)
    for k in ks:
        # one target per user: precision is HR / K and MAP is MRR
        assert out[f"precision@{k}"] == pytest.approx(out[f"hr@{k}"] / k)
        assert out[f"map@{k}"] == pytest.approx(out[f"mrr@{k}"])
    # the same lists coverage and novelty read: diversity by the categories of listed items
    lists = recommendation_lists(model, data, "test", 3)
    assert out["diversity@3"] == pytest.approx(intra_list_diversity(lists, categories, 3))
    assert "diversity@1" not in out  # a list of one item has no pair
    # without categories there is no diversity, and nothing else changes
    plain = evaluate(model, small_split(None), "test", ks)
    assert plain == {k: v for k, v in out.items() if not k.startswith("diversity@")}


def test_both_protocols_in_the_json_the_table_and_the_report(ml100k_slice: Path, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "var",
        catalogue="protocols",
        source={"kind": "movielens", "path": str(ml100k_slice)},
        embedding={"enabled": False},
    )
    grid = {
        "popularity": [{}],
        "itemknn-recency": [
            {"neighbors": 50, "shrink": 0.0, "decay": 0.9},
            {"neighbors": 50, "shrink": 0.0, "decay": 0.5},
        ],
    }
    out = tmp_path / "eval.json"
    results = run_evaluation(settings, models=grid, out=out)
    assert json.loads(out.read_text()) == results
    # leave-last-out stays where readers look for it, now with the new measures
    assert results["protocol"]["split"] == "leave_last_out"
    for metrics in results["models"].values():
        assert {"precision@10", "map@10", "diversity@10", "hr@10", "novelty@10"} <= set(metrics)
    temporal = results["temporal"]
    proto = temporal["protocol"]
    assert proto["split"] == TEMPORAL and proto["cut_quantile"] == settings.eval.temporal_cut_quantile
    assert set(temporal["models"]) == set(grid)
    # the temporal fit keeps the parameters validation chose on leave-last-out
    chosen = results["models"]["itemknn-recency"]["params"]
    assert temporal["models"]["itemknn-recency"]["params"] == chosen
    # only users with history before the cut are evaluated; the others are counted
    with open_warehouse(settings.warehouse_path) as con:
        data = load_split_data(con, TEMPORAL, KCORE_TABLE)
    known = [u for u in range(data.n_users) if len(data.test[u]) and len(data.train[u])]
    cold = [u for u in range(data.n_users) if len(data.test[u]) and not len(data.train[u])]
    assert proto["test_users"] == len(known) > 0
    assert proto["cold_users_left_out"] == len(cold)
    assert proto["test_interactions"] == sum(len(data.test[u]) for u in known)
    assert temporal["models"]["popularity"]["users_evaluated"] == len(known)
    for metrics in temporal["models"].values():
        assert 0.0 <= metrics["precision@10"] <= metrics["hr@10"] <= 1.0
        assert 0.0 <= metrics["map@10"] <= metrics["hr@10"]
        assert 0.0 <= metrics["diversity@10"] <= 1.0

    console = Console(record=True, width=120)
    print_report(results, console)
    text = console.export_text()
    assert "leave_last_out" in text and "temporal (cut at quantile 0.9)" in text
    for name in grid:
        llo, tmp = results["models"][name], temporal["models"][name]
        assert f"{llo['hr@10']:.4f} │ {llo['ndcg@10']:.4f}" in text
        assert f"{tmp['precision@10']:.4f} │ {tmp['map@10']:.4f}" in text

    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Global temporal split" in md
    for name in grid:
        llo, tmp = results["models"][name], temporal["models"][name]
        assert f"| {name} | {results['valid'][name]['ndcg@10']:.4f} | {llo['hr@10']:.4f} |" in md
        assert f"{llo['map@10']:.4f} | {llo['coverage@10']:.4f} | {llo['novelty@10']:.4f} |" in md
        assert f"| {name} | {tmp['hr@10']:.4f} | {tmp['ndcg@10']:.4f} |" in md


@pytest.mark.slow  # trains a two-tower twice
def test_fusion_keeps_its_validated_weight_on_the_temporal_refit_and_peers_are_listed(
    ml100k_slice: Path, tmp_path: Path
) -> None:
    """``two-tower-knn`` (what the nightly serves) is measured on both protocols: the temporal
    refit has no validation part, so it reuses the weight leave-last-out's validation chose.
    The peers' published figures stand beside the measured rows in the JSON, table and report,
    and every row carries the fit's CPU seconds."""
    settings = Settings(
        home=tmp_path / "var",
        catalogue="fusion",
        source={"kind": "movielens", "path": str(ml100k_slice)},
        embedding={"enabled": False},
    )
    tower = {"use_text": False, "dim": 8, "epochs": 2, "threads": 1, "progress": False, "max_len": 10}
    grid: dict[str, list[dict[str, Any]]] = {
        "two-tower-knn": [{"two_tower": tower, "weight_grid": [0.0, 1.0]}],
        "popularity": [{}],
    }
    results = run_evaluation(settings, models=grid, out=tmp_path / "eval.json")

    chosen = results["models"]["two-tower-knn"]["params"]
    assert chosen["weight"] in (0.0, 1.0) and chosen["tune_weight"] is True
    refit = results["temporal"]["models"]["two-tower-knn"]["params"]
    assert refit["weight"] == chosen["weight"] and refit["tune_weight"] is False
    for table in (results["models"], results["temporal"]["models"]):
        assert table["two-tower-knn"]["cpu_seconds"] > 0.0
        assert all(m["cpu_seconds"] >= 0.0 for m in table.values())

    assert results["peers"]["models"] == PEERS and "same protocol" in results["peers"]["source"]
    console = Console(record=True, width=160)
    print_report(results, console)
    text = console.export_text()
    for name, figures in PEERS.items():
        assert f"peer: {name}" in text and f"{figures['hr@10']:.4f} │ {figures['ndcg@10']:.4f}" in text
    md = (tmp_path / "report" / "report.md").read_text()
    assert all(f"| {name} | {m['ndcg@10']:.3f} | {m['hr@10']:.3f} |" in md for name, m in PEERS.items())
