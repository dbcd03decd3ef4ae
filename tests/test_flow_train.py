"""The train-models flow on real MovieLens-100K slices, real DuckDB files, a real Prefect API.

Covers the champion/challenger gate (a worse challenger never moves CURRENT; an equal or
better one does), warm start from the live checkpoint when the catalogue grew, the report
in the bundle and in the UI, and that a recorded run re-runs to the same metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest
import torch

from models.checkpoint import load_state
from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.load import load_source
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT
from tasks.publish import gate_refusal
from tasks.train_models import catalog_ids, recorded_config, reproduce_run
from tasks.training import load_split_data

pytestmark = pytest.mark.slow  # whole flows on a Prefect API

torch.set_num_threads(1)
REFUSAL = r"^valid ndcg@10 \d\.\d{4} < live \d\.\d{4} - tolerance [\d.-]+; kept \S+ live$"
"""The shape of every publish path's refusal (tasks/publish.py::gate_refusal)."""
TINY = {"dim": 16, "window": 10, "epochs": 2, "batch_size": 256, "progress": False}


def users_slice(ml100k_dir: Path, out: Path, max_user: int) -> Path:
    """The ratings of users 1..max_user (real rows, real timestamps), all item metadata."""
    out.mkdir(parents=True, exist_ok=True)
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    kept = [r for r in lines[1:] if int(r.split("\t", 1)[0]) <= max_user]
    (out / "ml-slice.inter").write_text("\n".join([lines[0], *kept]) + "\n")
    (out / "ml-slice.item").write_text((ml100k_dir / "ml-100k.item").read_text())
    return out


def base_overrides(home: Path, source: Path, **extra: Any) -> dict[str, Any]:
    return {
        "home": str(home),
        "catalogue": "train",
        "source": {"kind": "movielens", "path": str(source)},
        "embedding": {"enabled": False},
        **extra,
    }


def load(overrides: dict[str, Any]) -> None:
    with open_warehouse(Settings(**overrides).warehouse_path) as con:
        load_source(con, Settings(**overrides))


def test_gate_refuses_a_worse_challenger_and_publishes_an_equal_one(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.train import train_models

    overrides = base_overrides(tmp_path / "var", ml100k_slice)
    load(overrides)
    store = ArtifactStore(Settings(**overrides).bundles_dir)

    champion = train_models(models=["itemknn-recency", "itemknn"], overrides=overrides)
    assert champion.champion == max(champion.valid_ndcg10, key=champion.valid_ndcg10.__getitem__)
    assert champion.version is not None and store.current_version() == champion.version
    manifest = store.manifest(champion.version)
    assert {
        "report/report.md",
        "report/metric_by_k.png",
        "report/coverage.png",
        "report/popularity.png",
    } <= set(manifest["checksums"])
    report_md = (store.root / champion.version / "report" / "report.md").read_text()
    assert (
        "![Metrics by K (test, leave-last-out)](metric_by_k.png)" in report_md and "| itemknn |" in report_md
    )

    worse = train_models(models=["popularity"], overrides=overrides)
    assert worse.valid_ndcg10["popularity"] < champion.valid_ndcg10[champion.champion]
    assert worse.version is None and worse.live == champion.version
    assert store.current_version() == champion.version and store.versions() == [champion.version]
    assert re.match(REFUSAL, worse.reason)
    assert worse.reason == gate_refusal(
        {"ndcg@10": worse.valid_ndcg10["popularity"]}, champion.version, manifest["metrics"]["valid"], 0.0
    )

    # A tolerance wider than the gap lets the same challenger through.
    gap = champion.valid_ndcg10[champion.champion] - worse.valid_ndcg10["popularity"]
    tolerated = train_models(models=["popularity"], overrides=overrides, tolerance=gap + 0.01)
    assert tolerated.live == tolerated.version == store.current_version()
    # An equal challenger publishes (the gate is "not worse").
    equal = train_models(models=["popularity"], overrides=overrides)
    assert equal.live == equal.version == store.current_version()

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts()}
    assert {"train-gate", "train-report"} <= set(artifacts)
    assert "data:image/png;base64,iVBORw0KGgo" in str(artifacts["train-report"].data)

    with duckdb.connect(str(Settings(**overrides).warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT model, config FROM model_runs JOIN model_run_configs USING (run_id) ORDER BY finished_at"
        ).fetchall()
    # The three popularity challengers trained once: the later runs hit the content-keyed cache.
    assert worse.runs == tolerated.runs == equal.runs
    assert sorted(r[0] for r in rows) == ["itemknn", "itemknn-recency", "popularity"]
    config = json.loads(next(r[1] for r in rows if r[0] == "itemknn-recency"))
    assert config["params"] == {"neighbors": 300, "shrink": 0.0, "decay": 0.6}
    assert config["split"] == LEAVE_LAST_OUT and config["warm_start"] is None


def test_bad_config_names_the_parameter(prefect_api: None, ml100k_slice: Path, tmp_path: Path) -> None:
    from flows.train import train_models

    overrides = base_overrides(tmp_path / "var", ml100k_slice)
    load(overrides)
    state = train_models(
        models=["nextitem-mf"],
        config={"nextitem-mf": {"dimension": 8}},
        overrides=overrides,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match=r"config\.nextitem-mf\.dimension: Extra inputs are not permitted"):
        state.result()
    state = train_models(
        models=["nextitem-mf"], config={"nextitem-mf": {"dim": 0}}, overrides=overrides, return_state=True
    )
    with pytest.raises(Exception, match=r"config\.nextitem-mf\.dim: Input should be greater than 0"):
        state.result()


def test_the_ui_form_of_train_models_lists_every_model_config_with_its_defaults() -> None:
    """``config`` is typed (models.configs.ModelOverrides), so the parameter schema Prefect
    stores with the deployment, and renders as a form, has each model's fields and defaults."""
    from prefect.utilities.callables import parameter_schema

    from flows.nightly import nightly_refresh
    from flows.train import train_models
    from models.configs import CONFIGS, TwoTowerConfig

    schema = parameter_schema(train_models.fn).model_dump()
    defs = schema["definitions"]
    assert schema["properties"]["config"]["anyOf"][0]["$ref"] == "#/definitions/ModelOverrides"
    models = defs["ModelOverrides"]["properties"]
    assert set(models) == set(CONFIGS) and defs["ModelOverrides"]["additionalProperties"] is False
    assert models["two-tower"]["anyOf"][0]["$ref"] == "#/definitions/TwoTowerConfig"
    tower = defs["TwoTowerConfig"]["properties"]
    for field, info in TwoTowerConfig.model_fields.items():
        assert tower[field].get("default") == info.get_default(call_default_factory=True), field
        assert tower[field]["description"] == info.description
    assert tower["threads"]["default"] == 1 and tower["encoder"]["enum"] == ["gru", "lstm", "attention"]
    assert defs["RecencyItemKNNConfig"]["properties"]["neighbors"] == {
        "default": 300,
        "description": "Neighbours kept per item (300 was best on MovieLens-100K validation).",
        "exclusiveMinimum": 0,
        "title": "Neighbors",
        "type": "integer",
    }
    nightly = parameter_schema(nightly_refresh.fn).model_dump()
    assert nightly["properties"]["config"]["anyOf"][0]["$ref"] == "#/definitions/ModelOverrides"


def test_warm_start_grows_the_catalogue_keeps_learned_rows_and_reruns_reproduce(
    prefect_api: None, ml100k_dir: Path, tmp_path: Path
) -> None:
    from flows.train import train_models

    home = tmp_path / "var"
    # item_k=1: the catalogue is the items that have interactions, so more users → more items.
    small = base_overrides(home, users_slice(ml100k_dir, tmp_path / "u60", 60), kcore={"item_k": 1})
    load(small)
    store = ArtifactStore(Settings(**small).bundles_dir)

    cold = train_models(models=["nextitem-mf"], config={"nextitem-mf": TINY}, overrides=small)
    assert cold.live == cold.version
    first = store.root / cold.version
    assert (first / "train_model" / "state.pt").is_file() and (first / "model" / "state.pt").is_file()
    old_ids = catalog_ids(first)["item"]
    old_train_state = load_state(first / "train_model")

    settings = Settings(**small)
    with open_warehouse(settings.warehouse_path) as con:
        data = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=True)
        recorded = recorded_config(con, cold.runs["nextitem-mf"])
        again = reproduce_run(con, cold.runs["nextitem-mf"], data, list(settings.eval.ks))
    assert recorded["seed"] == 42 and recorded["params"]["dim"] == 16
    assert again.valid == recorded["metrics"]["valid"] and again.test == recorded["metrics"]["test"]
    assert again.valid["ndcg@10"] > 0

    # The catalogue grows: the ratings of 60 more users bring items nobody had rated.
    bigger = base_overrides(home, users_slice(ml100k_dir, tmp_path / "u120", 120), kcore={"item_k": 1})
    load(bigger)
    no_training = {"nextitem-mf": {**TINY, "epochs": 0}}
    warm = train_models(
        models=["nextitem-mf"], config=no_training, overrides=bigger, warm_start=True, tolerance=1.0
    )
    assert warm.live == warm.version
    second = store.root / warm.version
    new_ids = catalog_ids(second)["item"]
    assert len(new_ids) > len(old_ids) and set(old_ids) <= set(new_ids)
    new_state = load_state(second / "train_model")
    assert new_state["item_out.weight"].shape[0] == len(new_ids)
    assert new_state["item_in.weight"].shape[0] == len(new_ids) + 1
    # With zero epochs the evaluated model is exactly the grown checkpoint: every persisting
    # item keeps its learned row, wherever its index moved.
    for new_idx, item in enumerate(new_ids):
        if item in old_ids:
            old_idx = old_ids.index(item)
            assert torch.equal(
                new_state["item_out.weight"][new_idx], old_train_state["item_out.weight"][old_idx]
            )
            assert torch.equal(
                new_state["item_in.weight"][new_idx + 1], old_train_state["item_in.weight"][old_idx + 1]
            )
    manifest = store.manifest(warm.version)
    # The gate scored the live bundle's train_model/ on today's split, its items mapped by id.
    assert manifest["gate"]["live_source"] == "rescored" and manifest["gate"]["live_version"] == cold.version
    assert f"of tonight's {len(new_ids)} items mapped by id" in manifest["gate"]["live_how"]
    assert manifest["warm_start"]["train"]["bundle"] == cold.version
    assert manifest["warm_start"]["serving"]["checkpoint"] == "model"
    with open_warehouse(settings.warehouse_path) as con:
        config = recorded_config(con, warm.runs["nextitem-mf"])
        data = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=True)
        rerun = reproduce_run(con, warm.runs["nextitem-mf"], data, list(settings.eval.ks), store)
    assert (
        config["warm_start"]["bundle"] == cold.version and config["warm_start"]["checkpoint"] == "train_model"
    )
    assert rerun.valid == config["metrics"]["valid"] and rerun.test == config["metrics"]["test"]


def test_merge_two_seeded_fits_evaluates_gates_and_publishes_the_average(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.merge import merge_checkpoints
    from flows.train import train_models

    overrides = base_overrides(tmp_path / "var", ml100k_slice)
    load(overrides)
    store = ArtifactStore(Settings(**overrides).bundles_dir)
    a = train_models(models=["nextitem-mf"], config={"nextitem-mf": {**TINY, "seed": 1}}, overrides=overrides)
    b = train_models(
        models=["nextitem-mf"],
        config={"nextitem-mf": {**TINY, "seed": 2}},
        overrides=overrides,
        tolerance=1.0,
    )
    assert a.version and b.version and store.current_version() == b.version

    merged = merge_checkpoints(
        bundles=[a.version, b.version], weights=[3.0, 1.0], overrides=overrides, tolerance=1.0
    )
    assert merged.version is not None and merged.live == merged.version
    out = store.root / merged.version
    for sub in ("train_model", "model"):
        sa, sb = load_state(store.root / a.version / sub), load_state(store.root / b.version / sub)
        sm = load_state(out / sub)
        assert not torch.equal(sa["item_out.weight"], sb["item_out.weight"])
        for key in sa:
            assert torch.allclose(sm[key], 0.75 * sa[key] + 0.25 * sb[key], atol=1e-6), (sub, key)
    manifest = store.manifest(merged.version)
    inputs = manifest["config"]["merge"]["inputs"]
    assert [i["source"] for i in inputs] == [f"bundle {a.version}", f"bundle {b.version}"]
    assert [i["weight"] for i in inputs] == [3.0, 1.0]
    assert sorted(manifest["config"]["merge"]["averaged"]) == [
        "item_bias",
        "item_in.weight",
        "item_out.weight",
    ]
    assert "report/report.md" in manifest["checksums"]
    with duckdb.connect(str(Settings(**overrides).warehouse_path), read_only=True) as con:
        metrics = json.loads(
            con.execute(
                "SELECT metrics FROM model_runs WHERE run_id = ?", [merged.runs["nextitem-mf"]]
            ).fetchall()[0][0]
        )
    assert metrics["valid"]["ndcg@10"] == pytest.approx(merged.valid_ndcg10["nextitem-mf"])
    assert manifest["metrics"]["valid"]["ndcg@10"] == pytest.approx(merged.valid_ndcg10["nextitem-mf"])

    # The gate applies: with no tolerance, a merge is live only if it is not worse.
    live_before = store.current_version()
    live_valid = store.manifest(live_before)["metrics"]["valid"]["ndcg@10"]
    again = merge_checkpoints(bundles=[a.version, b.version], weights=[1.0, 3.0], overrides=overrides)
    went_live = again.valid_ndcg10["nextitem-mf"] >= live_valid
    assert (again.version is not None and store.current_version() == again.version) == went_live
    assert (again.version is None and store.current_version() == live_before) == (not went_live)

    # A merge worse than the live bundle is refused by the same gate, with the same message.
    merged_live = store.current_version()
    better = train_models(models=["itemknn-recency"], overrides=overrides, tolerance=1.0)
    assert better.live == better.version == store.current_version()
    refused = merge_checkpoints(bundles=[a.version, b.version], weights=[3.0, 1.0], overrides=overrides)
    assert refused.valid_ndcg10["nextitem-mf"] < better.valid_ndcg10["itemknn-recency"]
    assert refused.version is None and refused.live == better.version == store.current_version()
    # The live number was re-scored: the train-part model of a torch bundle, a refit otherwise.
    assert (
        store.manifest(better.version)["gate"]["live_how"]
        == f"{merged_live}/train_model (fitted on its training part)"
    )
    assert re.match(REFUSAL, refused.reason)
    assert refused.reason == gate_refusal(
        {"ndcg@10": refused.valid_ndcg10["nextitem-mf"]},
        better.version,
        store.manifest(better.version)["metrics"]["valid"],
        0.0,
    )

    # Bad inputs name what was wrong.
    with pytest.raises(Exception, match="merge needs at least two checkpoints"):
        merge_checkpoints(bundles=[a.version], overrides=overrides)
    with pytest.raises(Exception, match="bundle 'nope' not found"):
        merge_checkpoints(bundles=[a.version, "nope"], overrides=overrides)


def test_training_is_cached_on_content_not_time(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    """Same data, model and parameters: the finished training is reused (a retry redoes
    nothing); other parameters or changed data train again."""
    from flows.train import train_models

    overrides = base_overrides(tmp_path / "var", ml100k_slice)
    load(overrides)
    first = train_models(models=["popularity", "itemknn"], overrides=overrides, tolerance=1.0)
    again = train_models(models=["popularity", "itemknn"], overrides=overrides, tolerance=1.0)
    assert again.runs == first.runs
    other = train_models(
        models=["itemknn"], config={"itemknn": {"neighbors": 50}}, overrides=overrides, tolerance=1.0
    )
    assert other.runs["itemknn"] != first.runs["itemknn"]

    settings = Settings(**overrides)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute(
            "INSERT INTO interactions (event_id, user_id, item_id, event_type, value, ts, seq) "
            "SELECT 'extra-' || item_id, (SELECT min(user_id) FROM interactions), item_id, 'rating', 5, "
            "(SELECT max(ts) + 1 FROM interactions), 10**9 FROM items "
            "WHERE item_id NOT IN (SELECT item_id FROM interactions WHERE user_id = "
            "(SELECT min(user_id) FROM interactions)) LIMIT 1"
        )
    changed = train_models(models=["popularity"], overrides=overrides, tolerance=1.0)
    assert changed.runs["popularity"] != first.runs["popularity"]
    assert (settings.catalogue_dir / "task-cache").is_dir()
