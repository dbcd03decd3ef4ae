"""The ``tune-models`` flow: Optuna (TPE, median pruning) over one model's hyper-parameters.

k-core → split → load train + valid (the test part emptied) → trials → record → store the
best. Each trial is a Prefect task (``tune-trial``) that fits the model on the training part
and is pruned when its validation NDCG@10 after an epoch falls below the median of finished
trials at that epoch; every trial, pruned and failed ones too, is a ``model_runs`` row with
its full config. With ``tune.dask_address`` (a running scheduler) or ``tune.dask_workers``
(a local cluster) trials fan out over Prefect's Dask task runner, several at a time;
otherwise they run one after the other in the flow's process. torch trains on the GPU when
it sees one (the models' ``device = "auto"``).

The best trial's parameters go to ``<home>/<catalogue>/tuned/<model>.json`` with their
provenance and become that model's default for the catalogue: the nightly refresh and
``train-models`` train them unless a setting or flow parameter says otherwise
(``storage.settings.Settings.config_of``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from pydantic import PositiveInt

from flows.embed import embed_in_process_task
from flows.nightly import kcore_task, split_task
from models.configs import config_class
from storage.settings import Settings, catalogue_settings
from storage.tuned import TunedConfig, read_tuned, tuned_path, write_tuned
from storage.warehouse import open_warehouse
from tasks.features import FEATURE_MODELS, load_item_features
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT
from tasks.training import SplitData, data_fingerprint, load_split_data, protocol
from tasks.tune import (
    SearchSpace,
    TrialOutcome,
    distributions,
    in_space,
    plot_study,
    png_markdown,
    record_trial,
    resolve_space,
    run_trial,
    tell,
    trial_fixed,
    trial_table,
    without_test,
)


@dataclass(frozen=True)
class TuneOutcome:
    """What a tune-models run did and where its result went."""

    study: str
    model: str
    catalogue: str
    trials: list[TrialOutcome]
    best_trial: int | None
    best_valid_ndcg10: float | None
    best_params: dict[str, Any]
    tuned_path: str | None
    """The tuned config file the catalogue now trains with (None: nothing finished)."""
    note: str
    runs: dict[int, str] = field(default_factory=dict)
    """trial number → run_id in ``model_runs``."""
    plot: str | None = None
    seconds: float = 0.0
    searched: list[str] = field(default_factory=list)


@task(name="load-tuning-data", cache_policy=NONE, persist_result=False)
def tuning_data_task(settings: Settings, model: str) -> tuple[SplitData, dict[str, Any], str]:
    """Train and validation parts (test emptied), the protocol, and the data's fingerprint."""
    with open_warehouse(settings.warehouse_path) as con:
        data = load_split_data(
            con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=settings.kcore.item_k > 0
        )
        if model in FEATURE_MODELS:
            data.item_features = load_item_features(
                con,
                data,
                settings.embedding if settings.embedding.enabled else None,
                side=settings.source.books,
            )
        fingerprint = data_fingerprint(
            con, KCORE_TABLE, {"kcore": settings.kcore.model_dump(), "split": LEAVE_LAST_OUT}
        )
    proto = {
        **protocol(data, list(settings.eval.ks), settings.kcore.model_dump()),
        "test": "not read (tuning)",
    }
    return without_test(data), proto, fingerprint


@task(name="tune-trial", task_run_name="trial-{number}", cache_policy=NONE, persist_result=False)
def trial_task(
    data: SplitData,
    model: str,
    number: int,
    sampled: dict[str, Any],
    base: dict[str, Any],
    ks: list[int],
    finished: list[optuna.trial.FrozenTrial],
    startup_trials: int,
    warmup_epochs: int,
) -> TrialOutcome:
    """One trial: fit on train, prune on valid NDCG@10 per epoch, evaluate on valid."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    outcome = run_trial(data, model, number, sampled, base, ks, finished, pruner)
    value = "—" if outcome.value is None else f"{outcome.value:.4f}"
    get_run_logger().info(
        "trial %d %s: valid ndcg@10 %s after %d epochs, %.1fs%s",
        number,
        outcome.state,
        value,
        len(outcome.curve),
        outcome.seconds,
        f" ({outcome.error})" if outcome.error else "",
    )
    return outcome


def _parallelism(settings: Settings) -> int:
    """Trials in flight at once: 1 without Dask; the configured or discovered worker count."""
    tune = settings.tune
    if tune.dask_address is None:
        return tune.dask_workers if tune.dask_workers > 0 else 1
    if tune.dask_workers > 0:
        return tune.dask_workers
    from distributed import Client

    with Client(tune.dask_address, timeout=30) as client:
        return max(len(client.scheduler_info().get("workers", {})), 1)


def _runner(settings: Settings) -> Any:
    from prefect_dask import DaskTaskRunner

    if settings.tune.dask_address:
        return DaskTaskRunner(address=settings.tune.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.tune.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


@flow(name="tune-models", log_prints=True)
def tune_models(
    catalogue: str | None = None,
    model: str = "two-tower",
    trials: PositiveInt = 30,
    time_budget_s: float | None = None,
    space: SearchSpace | None = None,
    seed: int = 42,
    enqueue: list[dict[str, Any]] | None = None,
    start_from_defaults: bool = True,
    keep_better: bool = True,
    overrides: dict[str, Any] | None = None,
) -> TuneOutcome:
    """Search ``model``'s hyper-parameters for ``catalogue`` with ``trials`` Optuna trials
    (TPE seeded with ``seed``), stopping new trials once ``time_budget_s`` seconds are spent.

    ``space`` replaces or extends the model's default search space; ``enqueue`` lists
    parameter sets tried first (after the current defaults, with ``start_from_defaults``, so
    the best is never worse on validation than what the catalogue trains today). The best
    trial becomes the catalogue's default config unless ``keep_better`` finds a stored one
    that scored higher on the same data. ``overrides`` are settings fields, as in the TOML file.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    settings = catalogue_settings(catalogue, overrides)
    config_class(model)  # an unknown model fails here, with the known ones
    searched = resolve_space(model, space)
    if time_budget_s is not None and time_budget_s <= 0:
        raise ValueError(f"time_budget_s must be positive seconds or None, got {time_budget_s}")
    if settings.embedding.enabled and model in FEATURE_MODELS:
        embed_in_process_task(settings)
    kcore_task(settings)
    split_task(settings)
    data, proto, fingerprint = tuning_data_task(settings, model)

    # The current default (tuned config included) is the base every trial starts from.
    defaults = settings.config_of(model).model_dump()
    study_name = f"{model}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    tune_dir = settings.catalogue_dir / "tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    parallel = _parallelism(settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        direction="maximize",
        storage=optuna.storages.JournalStorage(JournalFileBackend(str(tune_dir / f"{study_name}.journal"))),
        sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(2, trials // 3)), constant_liar=parallel > 1
        ),
    )
    if start_from_defaults:
        study.enqueue_trial(in_space(searched, defaults), skip_if_exists=True)
    for values in enqueue or []:
        unknown = sorted(set(values) - set(searched))
        if unknown:
            raise ValueError(f"enqueue entry {values} names {unknown}, which are not in the search space")
        study.enqueue_trial(values)
    dists = distributions(searched)
    ks = list(settings.eval.ks)
    flow_run_id = str(flow_run.get_id()) if flow_run.get_id() else None
    logger.info(
        "study %s: %d trials of %s over %s, %s, %d at a time, epoch cap %d",
        study_name,
        trials,
        model,
        sorted(searched),
        f"time budget {time_budget_s:.0f}s" if time_budget_s else "no time budget",
        parallel,
        settings.tune.max_epochs,
    )
    outcomes: list[TrialOutcome] = []
    runs: dict[int, str] = {}
    runner = _runner(settings) if parallel > 1 or settings.tune.dask_address else None
    if runner is not None:
        runner.__enter__()
    try:
        while len(outcomes) < trials:
            left = None if time_budget_s is None else time_budget_s - (time.perf_counter() - started)
            if left is not None and left <= 0:
                logger.info("time budget of %.0fs spent after %d trials", time_budget_s, len(outcomes))
                break
            batch = [study.ask(dists) for _ in range(min(parallel, trials - len(outcomes)))]
            finished = study.get_trials(
                deepcopy=True, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            )
            base = {**defaults, **trial_fixed(model, settings.tune.max_epochs, left)}
            kwargs: list[dict[str, Any]] = [
                {
                    "data": data,
                    "model": model,
                    "number": t.number,
                    "sampled": dict(t.params),
                    "base": base,
                    "ks": ks,
                    "finished": finished,
                    "startup_trials": settings.tune.pruner_startup_trials,
                    "warmup_epochs": settings.tune.pruner_warmup_epochs,
                }
                for t in batch
            ]
            if runner is None:
                results = [trial_task(**kw) for kw in kwargs]
            else:
                futures = [runner.submit(trial_task, parameters=kw) for kw in kwargs]
                results = [f.result() for f in futures]
            with open_warehouse(settings.warehouse_path) as con:
                for trial, outcome in zip(batch, results, strict=True):
                    tell(study, trial, outcome)
                    run_id = uuid.uuid4().hex
                    trial_fp = data_fingerprint(
                        con,
                        KCORE_TABLE,
                        {
                            "model": model,
                            "params": outcome.params,
                            "kcore": settings.kcore.model_dump(),
                            "flow": "tune",
                        },
                    )
                    record_trial(con, outcome, model, run_id, study_name, proto, trial_fp, flow_run_id)
                    runs[outcome.number] = run_id
                    outcomes.append(outcome)
    finally:
        if runner is not None:
            runner.__exit__(None, None, None)

    complete = [o for o in outcomes if o.state == "complete" and o.value is not None]
    best = max(complete, key=lambda o: o.value or 0.0, default=None)
    plot = plot_study(
        outcomes, tune_dir / study_name / "optimisation.png", f"tune-models: {model} ({study_name})"
    )
    table = trial_table(outcomes, best.number if best else None, sorted(searched))
    written: str | None = None
    if best is None:
        note = "no trial finished unpruned: nothing stored; the catalogue keeps its config"
    else:
        existing = read_tuned(settings.catalogue_dir, model)
        if (
            keep_better
            and existing is not None
            and existing.data_fingerprint == fingerprint
            and existing.valid_ndcg10 > (best.value or 0.0)
        ):
            written = str(tuned_path(settings.catalogue_dir, model))
            note = (
                f"kept the stored config of study {existing.study} (trial {existing.trial}, valid ndcg@10 "
                f"{existing.valid_ndcg10:.4f} > {best.value:.4f} on the same data)"
            )
        else:
            path = write_tuned(
                settings.catalogue_dir,
                TunedConfig(
                    model=model,
                    params=best.sampled,
                    study=study_name,
                    trial=best.number,
                    valid_ndcg10=float(best.value or 0.0),
                    data_fingerprint=fingerprint,
                    created_at=datetime.now(UTC),
                    flow_run_id=flow_run_id,
                    trials=len(outcomes),
                    fixed=trial_fixed(model, settings.tune.max_epochs, None),
                    space={k: v.model_dump() for k, v in searched.items()},
                ),
            )
            written = str(path)
            note = (
                f"trial {best.number} (valid ndcg@10 {best.value:.4f}) is now the default config of "
                f"{model} for {settings.catalogue}: {path}"
            )
    counts = {s: sum(o.state == s for o in outcomes) for s in ("complete", "pruned", "failed")}
    seconds = round(time.perf_counter() - started, 1)
    create_markdown_artifact(
        key="tune-trials",
        description=f"Trials of study {study_name}",
        markdown=(
            f"### tune-models: {model} on {settings.catalogue}\n\n"
            f"Study `{study_name}`: {len(outcomes)} trials ({counts['complete']} complete, "
            f"{counts['pruned']} pruned, {counts['failed']} failed) in "
            f"{seconds:.0f}s; validation NDCG@10 only (the test part is never read).\n\n{note}\n\n"
            + table
            + "\n"
            + png_markdown(plot, "Optimisation history and validation curves")
        ),
    )
    logger.info("%s", note)
    return TuneOutcome(
        study=study_name,
        model=model,
        catalogue=settings.catalogue,
        trials=outcomes,
        best_trial=best.number if best else None,
        best_valid_ndcg10=best.value if best else None,
        best_params=dict(best.sampled) if best else {},
        tuned_path=written,
        note=note,
        runs=runs,
        plot=str(plot),
        seconds=seconds,
        searched=sorted(searched),
    )
