"""Batch export from real published bundles of the MovieLens-100K slice, through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.ranking import top_k
from serving.bundle import load_bundle
from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import connect
from tasks.export import export_recommendations
from tasks.publish import publish_bundle
from tasks.training import SplitData, fit_for_serving

REPO = Path(__file__).resolve().parents[1]


def ratings(slice_dir: Path) -> dict[str, set[str]]:
    """user id → item ids the user rated, straight from the source file."""
    seen: dict[str, set[str]] = {}
    for line in (slice_dir / "ml-slice.inter").read_text().splitlines()[1:]:
        user, item = line.split("\t")[:2]
        seen.setdefault(user, set()).add(item)
    return seen


def check_export(path: Path, k: int, seen: dict[str, set[str]], item_ids: set[str]) -> dict[str, list]:
    table = pq.read_table(path)
    assert table.schema.names == ["user_id", "rank", "item_id", "score"]
    rows = table.to_pylist()
    per_user: dict[str, list[dict]] = {}
    for row in rows:
        per_user.setdefault(row["user_id"], []).append(row)
    assert set(per_user) == set(seen)  # every user, with the dataset's ids
    for user, recs in per_user.items():
        expected = min(k, len(item_ids) - len(seen[user]))
        assert len(recs) == expected, user
        assert [r["rank"] for r in recs] == list(range(1, expected + 1))
        items = [r["item_id"] for r in recs]
        assert len(set(items)) == len(items) and set(items) <= item_ids
        assert not set(items) & seen[user], f"user {user} gets items they rated"
        scores = [r["score"] for r in recs]
        assert all(a >= b for a, b in pairwise(scores)), user
    assert len(rows) == sum(min(k, len(item_ids) - len(s)) for s in seen.values())
    return per_user


@pytest.mark.slow  # runs the nightly and the CLI
def test_export_all_users_from_the_live_bundle_via_the_cli(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.nightly import nightly_refresh

    home = tmp_path / "var"
    overrides = {
        "home": str(home),
        "catalogue": "export",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # one model: not about choosing one
        "embedding": {"enabled": False},
    }
    live = nightly_refresh(overrides=overrides).live
    assert live is not None
    seen = ratings(ml100k_slice)
    item_ids = {line.split("\t")[0] for line in (ml100k_slice / "ml-slice.item").read_text().splitlines()[1:]}
    assert len(seen) == 120 and len(item_ids) == 1682

    out = tmp_path / "out" / "top100.parquet"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RECFLOW_HOME": str(home),
        "RECFLOW_CATALOGUE": "export",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deployments.cli",
            "recommend",
            "--all-users",
            "--k",
            "100",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "12,000 rows for 120 users" in done.stdout
    per_user = check_export(out, 100, seen, item_ids)
    assert len(pq.read_table(out)) == 120 * 100

    # The same order as the HTTP service's /recommend for the same bundle.
    bundle = load_bundle(ArtifactStore(Settings(**overrides).bundles_dir), live)
    for user in ("1", "7", "120"):
        ranked = bundle.recommend(user, 100)
        assert [bundle.item_ids[i] for i in ranked.indices] == [r["item_id"] for r in per_user[user]]

    # k beyond what some users have left: those users get every unseen item, no more.
    store = ArtifactStore(Settings(**overrides).bundles_dir)
    summary = export_recommendations(store, tmp_path / "all.parquet", k=1500, progress=False, batch_size=7)
    heavy = sum(1 for s in seen.values() if len(item_ids) - len(s) < 1500)
    assert summary.short_users == heavy > 0
    check_export(tmp_path / "all.parquet", 1500, seen, item_ids)

    bad = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "recommend", "--k", "10"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--all-users" in bad.stdout


@pytest.mark.slow  # trains a torch model
def test_export_from_a_torch_bundle_and_without_one(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.train import train_models
    from storage.warehouse import open_warehouse
    from tasks.load import load_source

    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "export-torch",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # one model: not about choosing one
        "embedding": {"enabled": False},
    }
    store = ArtifactStore(Settings(**overrides).bundles_dir)
    with pytest.raises(FileNotFoundError, match="no live bundle"):
        export_recommendations(store, tmp_path / "x.parquet", k=10, progress=False)
    with open_warehouse(Settings(**overrides).warehouse_path) as con:
        load_source(con, Settings(**overrides))
    tiny = {"dim": 16, "window": 10, "epochs": 1, "progress": False}
    result = train_models(models=["nextitem-mf"], config={"nextitem-mf": tiny}, overrides=overrides)
    assert result.live is not None
    summary = export_recommendations(store, tmp_path / "torch.parquet", k=20, progress=False)
    assert summary.model == "nextitem-mf" and summary.rows == 120 * 20
    seen = ratings(ml100k_slice)
    item_ids = {line.split("\t")[0] for line in (ml100k_slice / "ml-slice.item").read_text().splitlines()[1:]}
    per_user = check_export(tmp_path / "torch.parquet", 20, seen, item_ids)
    scores = np.array([r["score"] for r in per_user["1"]])
    assert np.isfinite(scores).all() and len(np.unique(scores)) > 1


def test_export_and_service_order_equal_scores_the_same_way(tmp_path: Path) -> None:
    """One bundle whose lists are mostly ties (ItemKNN with two neighbours scores most items
    0): each user's exported list is the service's list, equal scores more popular first."""
    n_items, n_users, k = 40, 30, 25
    rng = np.random.default_rng(3)
    # popularity grows with the item index, so the popularity order is not the index order
    weights = np.arange(1, n_items + 1, dtype=np.float64)
    picks = [rng.choice(n_items, 5, replace=False, p=weights / weights.sum()) for _ in range(n_users)]
    data = SplitData(
        "leave_last_out",
        np.array([f"u{u}" for u in range(n_users)], dtype=object),
        np.array([str(500 + i) for i in range(n_items)], dtype=object),
        [p[:3].astype(np.int64) for p in picks],
        [p[3:4].astype(np.int64) for p in picks],
        [p[4:].astype(np.int64) for p in picks],
    )
    with connect(tmp_path / "w.duckdb") as con:
        for i in range(n_items):
            con.execute("INSERT INTO items (item_id, title) VALUES (?, ?)", [str(500 + i), f"Film {i}"])
        model = fit_for_serving(data, "itemknn", {"neighbors": 2})
        manifest = {"model": {"name": "itemknn", "params": model.params()}, "metrics": {"valid": {}}}
        version = publish_bundle(ArtifactStore(tmp_path / "bundles"), con, data, model, manifest).version
    assert version is not None
    store = ArtifactStore(tmp_path / "bundles")
    export_recommendations(store, tmp_path / "top.parquet", k=k, progress=False)
    exported: dict[str, list[str]] = {}
    for row in pq.read_table(tmp_path / "top.parquet").to_pylist():
        exported.setdefault(row["user_id"], []).append(row["item_id"])

    bundle = load_bundle(store, version)
    by_index_differs = 0
    for user in data.user_ids:
        served = bundle.recommend(user, k)
        assert [bundle.item_ids[i] for i in served.indices] == exported[user], user
        # the lists reach into the ties, where the index order would have given another list
        history = bundle.histories[user]
        scores = np.asarray(bundle.model.score([history])[0], dtype=np.float64)
        by_index_differs += top_k(scores, k, exclude=history).tolist() != served.indices.tolist()
    assert by_index_differs > n_users // 2
