"""The nightly-refresh flow on a real slice of MovieLens-100K, against a temporary Prefect API."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest

from storage.artifacts import ArtifactStore
from storage.settings import Settings

pytestmark = pytest.mark.slow  # whole flows on a Prefect API


def test_nightly_refresh_publishes_then_is_idempotent(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.nightly import nightly_refresh

    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "ml-slice",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # one model: not about choosing one
    }
    settings = Settings(**overrides)
    store = ArtifactStore(settings.bundles_dir)

    first = nightly_refresh(overrides=overrides)
    assert first.version is not None and first.live == first.version == store.current_version()
    manifest = store.manifest(first.version)
    assert manifest["model"]["name"] == "itemknn-recency"
    assert manifest["metrics"]["test"]["ndcg@10"] > 0
    assert manifest["protocol"]["split"] == "leave_last_out"
    assert set(manifest["checksums"]) >= {"catalog.duckdb", "model/model.json", "item_vectors.npy"}
    assert manifest["index"]["kind"] == "flat" and manifest["index"]["n"] == 1682
    assert manifest["embedding"]["model"] == "all-MiniLM-L6-v2"
    store.verify(first.version)
    with duckdb.connect(str(store.root / first.version / "catalog.duckdb"), read_only=True) as cat:
        assert cat.execute("SELECT count(*) FROM user_histories").fetchall()[0][0] == 120
        assert cat.execute("SELECT count(*) FROM items").fetchall()[0][0] == 1682

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        before = con.execute("SELECT count(*) FROM interactions").fetchall()[0][0]
        runs = con.execute("SELECT count(*) FROM model_runs").fetchall()[0][0]
    assert runs == 1
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"load-summary", "kcore-summary", "embedding-summary", "model-metrics"} <= keys

    second = nightly_refresh(overrides=overrides)
    assert second.version is None
    assert second.live == first.version == store.current_version()
    assert store.versions() == [first.version]
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == before
        assert con.execute("SELECT count(*) FROM model_runs").fetchall()[0][0] == 1
    assert json.loads((store.root / first.version / "manifest.json").read_text())["version"] == first.version


def test_flow_stops_on_bad_data_and_keeps_current(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.nightly import nightly_refresh

    home = tmp_path / "var"
    good = {
        "home": str(home),
        "catalogue": "c",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},
    }
    live = nightly_refresh(overrides=good).live
    # A CSV whose ratings are mostly off the declared 1-5 scale: more than 5 % bad rows.
    bad = tmp_path / "bad.csv"
    rows = ["user_id,item_id,rating,timestamp"] + [
        f"{u},1,{9 if u % 2 else 3},{880000000 + u}" for u in range(100)
    ]
    bad.write_text("\n".join(rows) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n1,Toy Story\n")
    broken = {**good, "source": {"kind": "csv", "path": str(bad), "items_path": str(items), "value_max": 5}}
    state = nightly_refresh(overrides=broken, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"bad\.csv.*50 of 100 rows.*value"):
        state.result()
    assert ArtifactStore(Settings(**good).bundles_dir).current_version() == live
    with duckdb.connect(str(Settings(**good).warehouse_path), read_only=True) as con:
        assert (
            con.execute("SELECT count(*) FROM quarantine WHERE source_file LIKE '%bad.csv'").fetchall()[0][0]
            == 50
        )


def test_build_index_refuses_low_recall_and_publishes_a_good_index(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.build_index import build_index_flow
    from flows.nightly import nightly_refresh

    base = {
        "home": str(tmp_path / "var"),
        "catalogue": "idx",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # one model: not about choosing one
    }
    live = nightly_refresh(overrides=base).live
    store = ArtifactStore(Settings(**base).bundles_dir)
    # A starved HNSW graph on real text vectors: recall@10 far below the floor.
    starved = {
        "exact_below": 1,
        "approximate": "hnsw",
        "hnsw_m": 4,
        "hnsw_ef_construction": 8,
        "hnsw_ef_search": 1,
        "recall_k": 10,
    }
    state = build_index_flow(overrides={**base, "index": starved}, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"recall@10 = 0\.\d+ .* below the floor 0\.95"):
        state.result()
    assert store.current_version() == live and store.versions() == [live]
    # The default approximate index (IVF, nprobe tuned) on the same vectors passes and goes live.
    good = build_index_flow(overrides={**base, "index": {"exact_below": 1}})
    assert good.version is not None and store.current_version() == good.version
    manifest = store.manifest(good.version)
    assert manifest["index"]["kind"] == "ivf" and manifest["index"]["recall"] >= 0.95
    assert manifest["reindexed_from"] == live
    store.verify(good.version)


def test_nightly_takes_typed_model_config_and_refuses_a_worse_model_through_the_shared_gate(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    """The nightly's ``config`` parameter reaches the model (validated by its config class),
    and a worse model is written but not made live, with the message every publish path gives."""
    from flows.nightly import nightly_refresh
    from tasks.publish import gate_refusal

    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "gate",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # one model: not about choosing one
        "embedding": {"enabled": False},
    }
    store = ArtifactStore(Settings(**overrides).bundles_dir)
    first = nightly_refresh(overrides=overrides, config={"itemknn-recency": {"neighbors": 200}})
    assert first.version is not None and first.live == first.version
    live_manifest = store.manifest(first.version)
    assert live_manifest["model"]["params"] == {"neighbors": 200, "shrink": 0.0, "decay": 0.6}

    worse = nightly_refresh(overrides={**overrides, "model": {"name": "popularity"}})
    assert worse.version is not None and worse.live == first.version == store.current_version()
    refused = store.manifest(worse.version)
    assert refused["metrics"]["valid"]["ndcg@10"] < live_manifest["metrics"]["valid"]["ndcg@10"]
    assert re.match(
        r"^valid ndcg@10 \d\.\d{4} < live \d\.\d{4} - tolerance 0\.0; kept \S+ live$", worse.reason
    )
    assert worse.reason == gate_refusal(
        refused["metrics"]["valid"], first.version, live_manifest["metrics"]["valid"], 0.0
    )
    # The nightly and train-models build their manifests with one builder: the same keys.
    assert set(live_manifest) >= {
        "catalogue",
        "source_run",
        "model_run",
        "model",
        "metrics",
        "protocol",
        "data_fingerprint",
        "counts",
        "bundle_format",
    }

    state = nightly_refresh(overrides=overrides, config={"two-tower": {"dim": 8}}, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"config given for \['two-tower'\], but the nightly refresh trains"):
        state.result()
    state = nightly_refresh(overrides=overrides, config={"itemknn-recency": {"decay": 2}}, return_state=True)
    with pytest.raises(
        Exception, match=r"config\.itemknn-recency\.decay: Input should be less than or equal to 1"
    ):
        state.result()
    assert store.current_version() == first.version


def test_nightly_trains_every_candidate_and_publishes_the_best_on_validation(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    """``model.candidates``: each is trained and recorded; the best validation NDCG@10 is
    published (the test part plays no role), its choice shown as an artifact and in the
    manifest. The fused two-tower-knn (tiny here) goes through the same path."""
    from flows.nightly import nightly_refresh

    tiny = {"dim": 8, "max_len": 10, "layers": 1, "epochs": 2, "windows": "all", "batch_size": 64}
    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "choose",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {
            "candidates": ["popularity", "two-tower-knn", "itemknn", "itemknn-recency"],
            "candidate_cpu_seconds": 120,
        },
        "two_tower_knn": {"two_tower": tiny, "weight_grid": [0.0, 0.5, 1.0]},
    }
    settings = Settings(**overrides)
    assert settings.model.served_candidates() == ["popularity", "two-tower-knn", "itemknn", "itemknn-recency"]
    published = nightly_refresh(overrides=overrides)
    assert published.version is not None and published.live == published.version
    manifest = ArtifactStore(settings.bundles_dir).manifest(published.version)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute("SELECT model, params, metrics FROM model_runs").fetchall()
    valid = {name: json.loads(metrics)["valid"]["ndcg@10"] for name, _, metrics in rows}
    assert sorted(valid) == sorted(settings.model.candidates) and len(rows) == 4
    order = settings.model.candidates  # equal validation NDCG@10: the first listed wins
    best = max(order, key=lambda n: (valid[n], -order.index(n)))
    assert manifest["model"]["name"] == best
    assert manifest["metrics"]["valid"]["ndcg@10"] == pytest.approx(valid[best])
    assert {n: c["valid_ndcg@10"] for n, c in manifest["candidates"].items()} == pytest.approx(valid)
    assert valid["popularity"] < valid["itemknn-recency"]
    # every torch training got the CPU-time budget
    fused = next(json.loads(p) for n, p, _ in rows if n == "two-tower-knn")
    assert fused["two_tower"]["max_cpu_seconds"] == 120 and fused["weight"] in (0.0, 0.5, 1.0)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        table = next(a for a in client.read_artifacts() if a.key == "nightly-candidates")
    assert f"**{best}**" in str(table.data) and "two-tower-knn" in str(table.data)


def test_nightly_embeds_items_beside_kcore_split_and_training(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    """The embedding task runs while k-core, split and training do (it needs items only), and
    the bundle carries the finished vectors: those an encoding of the same texts gives."""
    import numpy as np
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.nightly import nightly_refresh
    from tasks.embedding import encode_texts, item_vectors, plan_embedding

    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "ml-slice",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # no text features: training need not wait
    }
    settings = Settings(**overrides)
    state = nightly_refresh(overrides=overrides, return_state=True)
    published = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    spans = {r.name.rsplit("-", 1)[0]: (r.start_time, r.end_time) for r in runs}
    embed, kcore, split = spans["embed-items-in-process"], spans["k-core"], spans["split"]
    assert embed[0] < split[1] and embed[1] > kcore[0]  # overlapping, not one after the other

    bundle = np.load(ArtifactStore(settings.bundles_dir).root / published.version / "item_vectors.npy")
    with duckdb.connect(str(settings.warehouse_path)) as con:
        ids = [r[0] for r in con.execute("SELECT item_id FROM items").fetchall()]
        with duckdb.connect(
            str(ArtifactStore(settings.bundles_dir).root / published.version / "catalog.duckdb")
        ) as cat:
            order = [r[0] for r in cat.execute("SELECT item_id FROM items ORDER BY item_idx").fetchall()]
        assert sorted(order) == sorted(ids)
        np.testing.assert_array_equal(bundle, item_vectors(con, settings.embedding, order))
        con.execute("DELETE FROM item_vectors")
        plan = plan_embedding(con, settings.embedding)
    text_of = dict(zip(plan.missing_hashes, plan.missing_texts, strict=True))
    hash_of = dict(zip(plan.item_ids, plan.hashes, strict=True))
    fresh = encode_texts([text_of[hash_of[i]] for i in order[:24]], settings.embedding)
    np.testing.assert_allclose(bundle[:24], fresh, atol=1e-5)
