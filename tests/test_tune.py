"""The tune-models flow (Optuna) and what it leaves behind.

Fast tests: search spaces fail early and by name, the trainer's per-epoch hook, the test part
emptied before any trial, the tuned config under explicit settings. The slow test runs the
flow on a real MovieLens-100K slice, a real DuckDB file and the temporary Prefect API: trials
in ``model_runs``, a bad trial pruned, the artifact, the stored config, then ``train-models``
and the CLI training and printing with it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.trainer import FitConfig, fit_module, on_epoch
from storage.settings import Settings
from storage.tuned import TunedConfig, tuned_path, write_tuned
from storage.warehouse import open_warehouse
from tasks.load import load_source
from tasks.training import SplitData
from tasks.tune import Choice, FloatRange, SearchSpace, in_space, resolve_space, without_test

torch.set_num_threads(1)


def test_search_space_merges_over_the_default_and_fails_by_name() -> None:
    space = resolve_space("two-tower", SearchSpace(params={"dim": Choice(choices=[16])}))
    assert space["dim"] == Choice(choices=[16]) and "lr" in space
    only = resolve_space(
        "two-tower", SearchSpace(params={"lr": FloatRange(low=1e-3, high=1e-2)}, replace=True)
    )
    assert list(only) == ["lr"]
    with pytest.raises(ValueError, match=r"names \['hidden'\], which 'two-tower' does not have"):
        resolve_space("two-tower", SearchSpace(params={"hidden": Choice(choices=[1])}))
    with pytest.raises(ValueError, match=r"search space dropout=1\.5 is not a valid two-tower parameter"):
        resolve_space("two-tower", SearchSpace(params={"dropout": FloatRange(low=0.1, high=1.5)}))
    with pytest.raises(ValueError, match="no default search space"):
        resolve_space("popularity", None)
    with pytest.raises(ValueError, match="low <= high"):
        FloatRange(low=2.0, high=1.0)
    assert in_space(space, {"dim": 16, "lr": 1.0, "dropout": 0.2, "other": 3}) == {"dim": 16, "dropout": 0.2}


def test_trials_never_see_the_test_part() -> None:
    data = SplitData(
        "s",
        np.array(["u"], dtype=object),
        np.array(["a", "b", "c"], dtype=object),
        [np.array([0])],
        [np.array([1])],
        [np.array([2])],
    )
    blind = without_test(data)
    assert [len(t) for t in blind.test] == [0] and list(blind.valid[0]) == [1] and list(data.test[0]) == [2]


def test_epoch_hook_sees_every_epoch_and_can_stop_training() -> None:
    net = torch.nn.Linear(2, 1)
    x = torch.randn(16, 2)
    seen: list[tuple[int, float | None]] = []

    def fit() -> Any:
        return fit_module(
            net,
            FitConfig(epochs=5, progress=False, patience=10),
            lambda rng: [x],
            lambda batch: net(batch).pow(2).mean(),
            lambda: float(-net(x).pow(2).mean()),
        )

    with on_epoch(lambda epoch, metric, row: seen.append((epoch, metric))):
        report = fit()
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5] and all(m is not None for _, m in seen)
    assert len(report.curve) == 5

    class Stop(Exception):
        pass

    def stop_at_two(epoch: int, metric: float | None, row: dict[str, Any]) -> None:
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop), on_epoch(stop_at_two):
        fit()
    seen.clear()
    fit()  # outside the block no hook runs
    assert seen == []


def _tuned(**params: Any) -> TunedConfig:
    return TunedConfig(
        model="two-tower",
        params=params,
        study="s",
        trial=0,
        valid_ndcg10=0.1,
        data_fingerprint="f",
        created_at=datetime.now(UTC),
        trials=1,
    )


def test_tuned_config_is_the_default_under_explicit_settings(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, catalogue="c")
    assert settings.config_of("two-tower").lr == 4e-3
    write_tuned(settings.catalogue_dir, _tuned(lr=0.007, dim=32))
    tuned = settings.config_of("two-tower")
    assert (tuned.lr, tuned.dim) == (0.007, 32)
    explicit = Settings(home=tmp_path, catalogue="c", two_tower={"dim": 128})
    assert (explicit.config_of("two-tower").lr, explicit.config_of("two-tower").dim) == (0.007, 128)
    assert settings.config_of("two-tower", {"lr": 0.001}).lr == 0.001  # flow parameters win
    assert Settings(home=tmp_path, catalogue="c", tune={"use_tuned": False}).config_of("two-tower").lr == 4e-3
    assert Settings(home=tmp_path, catalogue="other").config_of("two-tower").lr == 4e-3  # per catalogue
    tuned_path(settings.catalogue_dir, "two-tower").write_text("{not json")
    with pytest.raises(ValueError, match=r"tuned config .*two-tower\.json is not a valid tuned config"):
        settings.config_of("two-tower")


def _overrides(home: Path, source: Path) -> dict[str, Any]:
    return {
        "home": str(home),
        "catalogue": "tune",
        "source": {"kind": "movielens", "path": str(source)},
        "embedding": {"enabled": False},
        # explicit: small and fast; the search space below leaves these alone
        "two_tower": {
            "dim": 16,
            "max_len": 10,
            "layers": 1,
            "batch_size": 64,
            "epochs": 4,
            "progress": False,
        },
        "tune": {"max_epochs": 4, "pruner_startup_trials": 1, "pruner_warmup_epochs": 1},
    }


@pytest.mark.slow
def test_tune_flow_records_prunes_stores_and_becomes_the_default(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train_models
    from flows.tune import tune_models

    overrides = _overrides(tmp_path / "var", ml100k_slice)
    settings = Settings(**overrides)
    with open_warehouse(settings.warehouse_path) as con:
        load_source(con, settings)
    space = SearchSpace(
        params={"lr": FloatRange(low=1e-7, high=1e-2, log=True), "dropout": FloatRange(low=0.0, high=0.4)},
        replace=True,
    )
    # trial 0: today's default; trial 1: a learning rate too small to learn anything -> pruned
    outcome = tune_models(
        model="two-tower", trials=3, space=space, enqueue=[{"lr": 1e-7, "dropout": 0.3}], overrides=overrides
    )
    states = {o.number: o.state for o in outcome.trials}
    assert len(outcome.trials) == 3 and states[0] == "complete" and states[1] == "pruned", states
    assert outcome.trials[1].sampled["lr"] == 1e-7 and len(outcome.trials[1].curve) < 4
    assert outcome.best_trial is not None and outcome.best_valid_ndcg10 is not None

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT r.model, r.metrics, c.config FROM model_runs r JOIN model_run_configs c USING (run_id)"
        ).fetchall()
    assert len(rows) == 3 and {r[0] for r in rows} == {"two-tower"}
    configs = {json.loads(c)["tune"]["trial"]: (json.loads(m), json.loads(c)) for _, m, c in rows}
    for number, (metrics, config) in configs.items():
        assert metrics["test"] == {}  # the test part is never read while tuning
        assert config["tune"]["study"] == outcome.study and config["tune"]["state"] == states[number]
        assert (
            config["params"]["lr"] == outcome.trials[number].sampled["lr"] and config["params"]["dim"] == 16
        )
    assert configs[outcome.best_trial][0]["valid"]["ndcg@10"] == pytest.approx(outcome.best_valid_ndcg10)

    stored = json.loads(Path(str(outcome.tuned_path)).read_text())
    assert stored["study"] == outcome.study and stored["trial"] == outcome.best_trial
    assert stored["valid_ndcg10"] == pytest.approx(outcome.best_valid_ndcg10)
    assert set(stored["params"]) == {"lr", "dropout"} and len(stored["data_fingerprint"]) == 32
    assert Path(str(outcome.plot)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts()}
    body = str(artifacts["tune-trials"].data)
    assert "| trial | state | valid ndcg@10 |" in body and "pruned" in body
    assert "data:image/png;base64,iVBORw0KGgo" in body

    # train-models now trains the tuned parameters; the explicit two_tower fields still hold.
    trained = train_models(models=["two-tower"], overrides=overrides)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        (params,) = con.execute(
            "SELECT params FROM model_runs WHERE run_id = ?", [trained.runs["two-tower"]]
        ).fetchone()
    params = json.loads(params)
    assert params["lr"] == pytest.approx(stored["params"]["lr"]) and params["dropout"] == pytest.approx(
        stored["params"]["dropout"]
    )
    assert params["dim"] == 16 and params["epochs"] == 4

    # The CLI: one more trial; a worse result does not replace the stored config.
    for key, value in {
        "RECFLOW_HOME": overrides["home"],
        "RECFLOW_SOURCE__PATH": str(ml100k_slice),
        "RECFLOW_EMBEDDING__ENABLED": "false",
        "RECFLOW_TWO_TOWER": json.dumps(overrides["two_tower"]),
        "RECFLOW_TUNE": json.dumps(overrides["tune"]),
    }.items():
        monkeypatch.setenv(key, value)
    from deployments.cli import app

    result = CliRunner().invoke(
        app,
        ["run", "tune", "--catalogue", "tune", "--trials", "1", "--space", space.model_dump_json()],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert (
        "valid ndcg@10" in result.output
        and "trials in" in result.output
        and "optimisation plot" in result.output
    )
    assert ("now the default config" in result.output) or ("kept the stored config" in result.output)


@pytest.mark.slow
def test_trials_fan_out_over_a_local_dask_cluster(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from flows.tune import tune_models

    overrides = _overrides(tmp_path / "var", ml100k_slice)
    overrides["tune"] = {**overrides["tune"], "dask_workers": 2}
    with open_warehouse(Settings(**overrides).warehouse_path) as con:
        load_source(con, Settings(**overrides))
    space = SearchSpace(params={"dropout": FloatRange(low=0.0, high=0.4)}, replace=True)
    outcome = tune_models(model="two-tower", trials=2, space=space, overrides=overrides)
    assert [o.state for o in outcome.trials] == ["complete", "complete"]
    assert outcome.best_trial is not None and Path(str(outcome.tuned_path)).is_file()
    with duckdb.connect(str(Settings(**overrides).warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM model_runs").fetchall() == [(2,)]
