"""Incremental nights through the real nightly-refresh flow (temporary Prefect API): a night
with ~1 % new ratings reuses the live fit instead of fitting again."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from storage.artifacts import ArtifactStore, file_sha256
from storage.settings import Settings

pytestmark = pytest.mark.slow  # whole flows on a Prefect API


def _write_slice(source: Path, out: Path, hold_back: int) -> int:
    """``source``'s slice without its ``hold_back`` newest ratings; returns the rows kept."""
    out.mkdir(parents=True, exist_ok=True)
    header, *rows = (source / "ml-slice.inter").read_text().splitlines()
    newest_last = sorted(rows, key=lambda r: int(r.split("\t")[3]))
    kept = newest_last[: len(newest_last) - hold_back]
    (out / "ml-slice.inter").write_text("\n".join([header, *kept]) + "\n")
    (out / "ml-slice.item").write_text((source / "ml-slice.item").read_text())
    return len(kept)


def test_a_one_percent_night_reuses_the_live_fit(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.nightly import nightly_refresh

    total = len((ml100k_slice / "ml-slice.inter").read_text().splitlines()) - 1
    source = tmp_path / "source"
    kept = _write_slice(ml100k_slice, source, hold_back=total // 100)
    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "ml-slice",
        "source": {"kind": "movielens", "path": str(source)},
        "model": {"name": "itemknn-recency", "refit_max_interactions": 1000},  # "large" data
        "embedding": {"enabled": False},
    }
    store = ArtifactStore(Settings(**overrides).bundles_dir)

    first = nightly_refresh(overrides=overrides)
    assert first.version is not None
    night1 = store.manifest(first.version)
    assert night1["serving_fit"] == "train" and "reused" not in night1
    assert night1["counts"]["interactions"] == kept

    _write_slice(ml100k_slice, source, hold_back=0)  # tonight: the held-back ~1 % arrive
    second = nightly_refresh(overrides=overrides)
    assert second.version is not None and second.live == second.version
    night2 = store.manifest(second.version)
    assert night2["counts"]["interactions"] == total
    assert night2["reused"]["fit_from"] == first.version and night2["reused"]["nights"] == 1
    assert 0 < night2["reused"]["new_share"] <= 0.02
    # only users whose history changed were scored again; the metrics are a full re-score's
    rescored = night2["reused"]["rescored_users"]
    assert 0 < rescored["valid"] < 120 and 0 < rescored["test"] < 120
    from models.registry import load_model
    from tasks.training import evaluate, load_split_data

    with duckdb.connect(str(Settings(**overrides).warehouse_path), read_only=True) as con:
        tonight = load_split_data(con)
    fresh = evaluate(load_model(store.root / second.version / "model"), tonight, "valid", [5, 10, 20])
    for key in ("ndcg@10", "hr@10", "mrr@20", "map@5", "users_evaluated"):
        assert night2["metrics"]["valid"][key] == fresh[key], key
    # the same similarities, tonight's histories, and metrics measured on tonight's split
    sim = "model/similarity.npz"
    assert file_sha256(store.root / second.version / sim) == file_sha256(store.root / first.version / sim)
    # ... not written again: the reused fit's files are the first bundle's, hard-linked
    assert (store.root / second.version / sim).stat().st_ino == (
        store.root / first.version / sim
    ).stat().st_ino
    store.verify(second.version)
    with duckdb.connect(str(store.root / second.version / "catalog.duckdb"), read_only=True) as cat:
        assert cat.execute("SELECT sum(len(items)) FROM user_histories").fetchall()[0][0] == total
    assert night2["metrics"]["test"]["ndcg@10"] > 0
    assert night2["gate"]["live_version"] == first.version
    with duckdb.connect(str(Settings(**overrides).warehouse_path), read_only=True) as con:
        runs = con.execute(
            "SELECT count(*), sum(train_seconds) FILTER (WHERE train_seconds = 0) FROM model_runs"
        )
        assert runs.fetchall()[0] == (2, 0.0)  # two runs recorded, the reused one without a fit

    # why the next night would fit again: reuse switched off, a chain at its limit
    from flows.nightly import candidate_params
    from tasks.incremental import plan_reuse
    from tasks.training import load_split_data

    settings = Settings(**overrides)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        data = load_split_data(con)
    candidates = candidate_params(settings)
    assert plan_reuse(store, candidates, data, 0.02, 7).model is not None  # night 2 of 7
    assert "reuse is off" in plan_reuse(store, candidates, data, 0.0, 7).reason
    assert "reused 1 nights in a row" in plan_reuse(store, candidates, data, 0.02, 1).reason
    other = {"itemknn-recency": {**candidates["itemknn-recency"], "neighbors": 10}}
    assert "parameters differ" in plan_reuse(store, other, data, 0.02, 7).reason
