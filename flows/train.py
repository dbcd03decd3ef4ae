"""The ``train-models`` flow: k-core → split → train each model → evaluate → record → gate → publish.

Orchestration only (logic in :mod:`tasks.train_models`): one task per model so the UI shows
each model's progress and timing; the best model on validation NDCG@10 is the challenger,
published only if it is not worse than the live bundle beyond ``tolerance``. With
``warm_start`` every torch model starts from the live bundle's checkpoint, its ID tables
grown to today's catalogue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from flows.caching import cache_storage, content_key
from flows.embed import embed_in_process_task
from flows.nightly import kcore_task, split_task
from models.configs import ModelOverrides
from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings
from storage.warehouse import open_warehouse
from tasks.features import FEATURE_MODELS, load_item_features
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT
from tasks.train_models import (
    RunResult,
    live_warm_sources,
    model_config,
    publish_champion,
    record_config_run,
    train_run,
)
from tasks.training import data_fingerprint, load_split_data, protocol


@dataclass(frozen=True)
class TrainOutcome:
    """What a train-models run did: the runs it recorded and what went live."""

    runs: dict[str, str]
    """model → run_id in ``model_runs``."""
    valid_ndcg10: dict[str, float]
    champion: str
    version: str | None
    live: str | None
    reason: str


def announce(outcome: Any, runs: list[Any], champion: Any, prefix: str, what: str) -> TrainOutcome:
    """Show the gate and the report of a publish attempt as Prefect artifacts
    (``<prefix>-gate``, ``<prefix>-report``) and summarise it; train and merge share this."""
    create_markdown_artifact(
        markdown=outcome.gate_markdown, key=f"{prefix}-gate", description=f"{what} against the live bundle"
    )
    create_markdown_artifact(
        markdown=outcome.report_markdown, key=f"{prefix}-report", description="Evaluation report with plots"
    )
    pub = outcome.published
    return TrainOutcome(
        runs={r.model_name: r.run_id for r in runs},
        valid_ndcg10={r.model_name: r.valid.get("ndcg@10", float("nan")) for r in runs},
        champion=champion.model_name,
        version=pub.version,
        live=pub.live,
        reason=pub.reason,
    )


def _flow_run_id() -> str | None:
    return str(flow_run.get_id()) if flow_run.get_id() else None


def _load(settings: Settings, con: Any, names: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    data = load_split_data(
        con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=settings.kcore.item_k > 0
    )
    if FEATURE_MODELS & set(names or []):  # hybrid models read text vectors and categories
        data.item_features = load_item_features(
            con, data, settings.embedding if settings.embedding.enabled else None
        )
    return data, protocol(data, list(settings.eval.ks), settings.kcore.model_dump())


def _fingerprint(con: Any, settings: Settings, name: str, params: dict[str, Any]) -> str:
    return data_fingerprint(
        con,
        KCORE_TABLE,
        {"model": name, "params": params, "kcore": settings.kcore.model_dump(), "flow": "train"},
    )


def train_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The content a trained model depends on: the k-core data's fingerprint, the model and
    its parameters, the evaluation cut-offs, the warm-start source and the code. The same key
    means the same run, so a retried or re-triggered flow reuses it instead of training again.
    Returns None (no caching) when the config is invalid: the task then fails with the reason."""
    settings: Settings = parameters["settings"]
    name: str = parameters["name"]
    try:
        params = model_config(settings, name, parameters.get("overrides"))
    except (ValueError, TypeError):
        return None
    warm_from = None
    if parameters.get("warm_start"):
        warm_from = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep).current_version()
    with open_warehouse(settings.warehouse_path) as con:
        fingerprint = _fingerprint(con, settings, name, params)
    return content_key("train-model", fingerprint, list(settings.eval.ks), warm_from)


@task(
    name="train-model",
    timeout_seconds=3600,
    persist_result=True,
    cache_key_fn=train_cache_key,
    log_prints=True,
)
def train_model_task(
    settings: Settings, name: str, overrides: dict[str, Any] | None, warm_start: bool
) -> RunResult:
    """Fit one model on train (warm when asked and possible), evaluate, record in model_runs."""
    logger = get_run_logger()
    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
    params = model_config(settings, name, overrides)
    warm = None
    if warm_start:
        warm, _, why = live_warm_sources(store, name)
        logger.info("%s: warm start %s", name, f"from {why}" if warm else f"not possible ({why}); cold start")
    started = time.perf_counter()
    with open_warehouse(settings.warehouse_path) as con:
        data, proto = _load(settings, con, [name])
        logger.info("%s: training on %d users × %d items with %s", name, data.n_users, data.n_items, params)
        result = train_run(data, name, params, list(settings.eval.ks), warm, log=logger.info)
        record_config_run(
            con, result, proto, _fingerprint(con, settings, name, result.params), _flow_run_id()
        )
    if result.warm_report is not None:
        logger.info("%s: warm start %s", name, result.warm_report.summary())
    logger.info(
        "%s: valid ndcg@10 %.4f, test ndcg@10 %.4f hr@10 %.4f; fit %.1fs, total %.1fs (run %s)",
        name,
        result.valid.get("ndcg@10", float("nan")),
        result.test.get("ndcg@10", float("nan")),
        result.test.get("hr@10", float("nan")),
        result.train_seconds,
        time.perf_counter() - started,
        result.run_id,
    )
    return result


@task(name="gate-and-publish", timeout_seconds=3600, persist_result=False, cache_policy=NONE)
def gate_publish_task(
    settings: Settings, runs: list[RunResult], tolerance: float, warm_start: bool
) -> TrainOutcome:
    """The champion is refit on everything and published if the gate lets it through."""
    logger = get_run_logger()
    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
    champion = max(runs, key=lambda r: r.valid.get("ndcg@10", float("-inf")))
    live = store.current_version()
    # The gate re-scores the live model on this split: load the side information it reads too.
    live_name = store.manifest(live).get("model", {}).get("name") if live else None
    with open_warehouse(settings.warehouse_path) as con:
        data, proto = _load(settings, con, [champion.model_name, *([live_name] if live_name else [])])
        outcome = publish_champion(
            con,
            store,
            settings,
            data,
            proto,
            runs,
            champion,
            tolerance=tolerance,
            warm_start=warm_start,
            source_run=_flow_run_id(),
            fingerprint=_fingerprint(con, settings, champion.model_name, champion.params),
            log=logger.info,
        )
    return announce(outcome, runs, champion, "train", "Champion")


@flow(name="train-models", log_prints=True)
def train_models(
    catalogue: str | None = None,
    models: list[str] | None = None,
    config: ModelOverrides | None = None,
    tolerance: float = 0.0,
    warm_start: bool = False,
    overrides: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Train ``models`` (default: the configured one) on the warehouse's data and publish the
    best if it is not worse than the live bundle by more than ``tolerance`` (valid ndcg@10).

    ``config`` maps a model name to constructor parameters over the settings' defaults (a
    :class:`models.configs.ModelOverrides`, or the same as a dict: ``{"nextitem-mf": {"epochs": 2}}``;
    the Prefect UI shows it as a form); ``catalogue`` names the catalogue (None: the settings'
    own); ``overrides`` are settings fields, as in the TOML file.
    """
    settings = catalogue_settings(catalogue, overrides)
    names = models or [settings.model.name]
    if len(set(names)) != len(names):
        raise ValueError(f"models {names} name a model twice; give each once (parameters go in config)")
    given = config.given() if config is not None else {}
    unknown_config = sorted(set(given) - set(names))
    if unknown_config:
        raise ValueError(f"config given for {unknown_config}, which are not among the models {names}")
    if settings.embedding.enabled:
        embed_in_process_task(settings)
    kcore_task(settings)
    split_task(settings)
    # Keyed on content: a retry or a re-run on unchanged data reuses finished trainings.
    train = train_model_task.with_options(result_storage=cache_storage(settings))
    runs = [train(settings, name, given.get(name), warm_start) for name in names]
    return gate_publish_task(settings, runs, tolerance, warm_start)
