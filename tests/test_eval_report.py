"""The evaluation report: from run_evaluation's results and real fitted models, and in the
nightly refresh's bundle and Prefect artifacts."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.eval_report import (
    coverage_by_k,
    popularity_deciles,
    recommendation_lists,
    report_for_models,
    write_eval_report,
)
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT
from tasks.report import run_evaluation
from tasks.training import load_split_data, train_and_evaluate

pytestmark = pytest.mark.slow  # fits models and runs the nightly

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


def test_report_from_run_evaluation_results_and_fitted_models(ml100k_slice: Path, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "var",
        catalogue="report",
        source={"kind": "movielens", "path": str(ml100k_slice)},
        embedding={"enabled": False},
    )
    grid = {
        "popularity": [{}],
        "itemknn-recency": [{"neighbors": 100, "shrink": 0.0, "decay": 0.6}],
        "nextitem-mf": [{"dim": 16, "window": 10, "epochs": 2, "progress": False}],
    }
    results = run_evaluation(settings, models=grid, out=tmp_path / "eval.json")
    # The one-line hook for `recflow eval`: the chosen parameters refitted (or the kept models).
    with open_warehouse(settings.warehouse_path) as con:
        data = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE)
    ks = results["protocol"]["ks"]
    models = {
        name: train_and_evaluate(data, name, m["params"], ks).model for name, m in results["models"].items()
    }
    report = report_for_models(results, data, models, tmp_path / "report", k=50, title="slice")

    names = {p.name for p in report.files}
    assert names == {"report.md", "metric_by_k.png", "popularity.png", "coverage.png", "training_curves.png"}
    for path in report.files:
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG) and path.stat().st_size > 5_000
    md = (tmp_path / "report" / "report.md").read_text()
    assert "![Training curves](training_curves.png)" in md and "data:image" not in md
    for name in ("popularity", "itemknn-recency", "nextitem-mf"):
        assert (
            f"| {name} | {results['valid'][name]['ndcg@10']:.4f} | {results['models'][name]['hr@10']:.4f} |"
            in md
        )
    # The new measures beside the earlier ones, and the temporal protocol's table after them.
    assert (
        "| test precision@10 | test map@10 | test coverage@10 | test novelty@10 | test diversity@10 |" in md
    )
    temporal = results["temporal"]["models"]
    assert set(temporal) == set(grid) and "## Global temporal split" in md
    for name, m in temporal.items():
        assert f"| {name} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} |" in md
    # The artifact markdown is self-contained: each image a decodable PNG data URI.
    uris = re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report.markdown)
    assert len(uris) == 4 and all(base64.b64decode(u).startswith(PNG) for u in uris)

    # The numbers behind the plots: popularity recommends only the most popular decile.
    recs = recommendation_lists(models["popularity"], data, "test", 10)
    popularity = np.bincount(np.concatenate(data.train), minlength=data.n_items)
    assert popularity_deciles(recs, popularity, 10)[0] == pytest.approx(1.0)
    # Evaluation ranks the top max(ks) = 20, then cuts (the same tie handling at rank 10).
    knn = recommendation_lists(models["itemknn-recency"], data, "test", max(ks))
    assert popularity_deciles(knn, popularity, 10)[0] < 1.0
    cov = coverage_by_k(knn, data.n_items, [1, 5, 10])
    assert cov == sorted(cov) and coverage_by_k(recs, data.n_items, [10])[0] < cov[-1]
    assert cov[-1] == pytest.approx(results["models"]["itemknn-recency"]["coverage@10"], abs=1e-6)


def test_report_needs_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"results\['models'\] is empty"):
        write_eval_report({"models": {}}, {}, np.ones(3), tmp_path)


def test_nightly_refresh_attaches_the_report(prefect_api: None, ml100k_slice: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.nightly import nightly_refresh

    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "nightly-report",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # one model: not about choosing one
        "embedding": {"enabled": False},
    }
    result = nightly_refresh(overrides=overrides)
    store = ArtifactStore(Settings(**overrides).bundles_dir)
    assert result.version is not None
    manifest = store.manifest(result.version)
    assert {
        "report/report.md",
        "report/metric_by_k.png",
        "report/popularity.png",
        "report/coverage.png",
    } <= set(manifest["checksums"])
    store.verify(result.version)
    with get_client(sync_client=True) as client:
        reports = [a for a in client.read_artifacts() if a.key == "eval-report"]
    assert reports and "data:image/png;base64," in str(reports[-1].data)


def test_coverage_by_k_is_the_coverage_at_each_k() -> None:
    """One pass over the lists gives what ``coverage`` gives K by K, padding included."""
    from models.metrics import coverage
    from models.ranking import NO_ITEM

    rng = np.random.default_rng(5)
    lists = rng.integers(0, 300, size=(200, 30))
    lists[rng.random(lists.shape) < 0.1] = NO_ITEM
    lists[:20, 10:] = NO_ITEM  # short rows
    ks = [0, 1, 2, 7, 30, 45]
    assert coverage_by_k(lists, 400, ks) == [coverage(lists, 400, k) for k in ks]
    assert coverage_by_k(np.full((3, 5), NO_ITEM), 400, ks) == [0.0] * len(ks)
    assert coverage_by_k(np.zeros((0, 5), dtype=np.int64), 400, [5]) == [0.0]
