"""The ``nightly-refresh`` flow: load → validate → k-core → split → train → evaluate → publish.

Orchestration only: each step is a plain function in ``tasks/``, wrapped here as a Prefect
task with retries where I/O can fail; summaries are Prefect artifacts so the UI shows them.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from expectations import DataQualityError
from flows.embed import embed_alongside
from models.configs import ModelOverrides
from models.news_ranker import FEATURES as NEWS_RANKER_FEATURES
from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings
from storage.warehouse import open_warehouse
from tasks.cold_start import cold_start_reason, cold_start_result
from tasks.eval_report import report_for_models
from tasks.events import EventIngestSummary, ingest_events
from tasks.features import FEATURE_MODELS, load_item_features
from tasks.harvest import ensure_pool, pool_fingerprint
from tasks.incremental import (
    EVAL_CACHE,
    SERVING_FIT_ALL,
    SERVING_FIT_TRAIN,
    ReusePlan,
    plan_reuse,
    reused_result,
    save_eval_cache,
)
from tasks.load import LoadSummary, load_source
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, KCoreSummary, kcore_filter, make_splits
from tasks.publish import BUNDLE_FORMAT, LiveScore, PublishResult, build_manifest, live_score, publish_bundle
from tasks.served_impressions import ingest_impressions
from tasks.sources import SourceFormatError
from tasks.train_models import (
    TRAIN_MODEL_DIR,
    bundle_vectors,
    is_torch_model,
    live_vectors,
    results_dict,
    vectors_key,
)
from tasks.training import (
    SplitData,
    TrainResult,
    data_fingerprint,
    fit_for_serving,
    load_split_data,
    protocol,
    record_run,
    sample_eval_users,
    train_and_evaluate,
)


def _artifact(key: str, markdown: str, description: str) -> None:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    create_markdown_artifact(markdown=markdown, key=key, description=description)


def model_params(settings: Settings, config: ModelOverrides | None = None) -> dict[str, Any]:
    """The configured model's constructor parameters: its config from settings, with the
    parameters ``config`` gives for it on top (validated by the model's config class)."""
    name = settings.model.name
    given = config.given() if config is not None else {}
    others = sorted(set(given) - {name})
    if others:
        raise ValueError(f"config given for {others}, but the nightly refresh trains {name!r} (model.name)")
    return settings.config_of(name, given.get(name)).model_dump()


def with_cpu_budget(params: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``params`` with a CPU-time budget for the torch training inside, unless one is given:
    the model's own ``max_cpu_seconds``, or its two-tower part's (``two-tower-knn``)."""
    out = dict(params)
    if "max_cpu_seconds" in out and out["max_cpu_seconds"] is None:
        out["max_cpu_seconds"] = seconds
    if isinstance(out.get("two_tower"), dict):
        out["two_tower"] = with_cpu_budget(out["two_tower"], seconds)
    return out


def candidate_params(settings: Settings, config: ModelOverrides | None = None) -> dict[str, dict[str, Any]]:
    """Each nightly candidate (``model.candidates``, else ``model.name``) → its constructor
    parameters: its config from settings, ``config``'s entry for it on top, and the CPU-time
    budget ``model.candidate_cpu_seconds`` for its training."""
    names = settings.model.served_candidates()
    given = config.given() if config is not None else {}
    others = sorted(set(given) - set(names))
    if others:
        raise ValueError(
            f"config given for {others}, but the nightly refresh trains {names} (model.candidates)"
        )
    return {
        name: with_cpu_budget(
            settings.config_of(name, given.get(name)).model_dump(), settings.model.candidate_cpu_seconds
        )
        for name in names
    }


def fingerprint_settings(settings: Settings, candidates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every setting tonight's bundle depends on: when these and the data match the live
    bundle's, the nightly publishes nothing. The news rank stage's settings are among them
    (the nightly trains it with the NRMS champion), so changing ``serving.ranker_l2`` retrains,
    and so does a release whose ranker reads other features (serving cannot use the old one)."""
    name0 = next(iter(candidates))
    single = len(candidates) == 1
    return {
        # one candidate: the same fingerprint as before candidates existed
        **({"model": name0, "params": candidates[name0]} if single else {"candidates": candidates}),
        "kcore": settings.kcore.model_dump(),
        "ks": settings.eval.ks,
        "embedding": settings.embedding.model_dump() if settings.embedding.enabled else None,
        "index": settings.index.model_dump(),
        "bundle_format": BUNDLE_FORMAT,
        "ranker": {
            "weights": settings.serving.rank_weights,
            "hidden": settings.serving.ranker_hidden,
            "l2": settings.serving.ranker_l2,
            "features": list(NEWS_RANKER_FEATURES),
        },
    }


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups only: an OS-level error (a dropped connection, a timeout, a busy
    disk) or DuckDB failing to open or lock its file. Anything else, bad data above all (a
    TypeError, an OverflowError, a failed expectation) or a missing file, fails the same way
    every time, so it is not retried."""
    try:
        state.result()
    except (DataQualityError, SourceFormatError, FileNotFoundError, NotADirectoryError, PermissionError):
        return False
    except (OSError, duckdb.IOException):
        return True
    except Exception:
        return False
    return True


@task(
    name="load-and-validate",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_if_transient,
)
def load_task(settings: Settings) -> LoadSummary:
    with open_warehouse(settings.warehouse_path) as con:
        summary = load_source(con, settings)
    get_run_logger().info(
        "loaded %s: %s",
        summary.source,
        ", ".join(f"{t.table} +{t.rows_added} (quarantined {t.rows_quarantined})" for t in summary.tables),
    )
    _artifact("load-summary", summary.markdown(), "Rows loaded and quarantined per file")
    return summary


@task(name="k-core")
def kcore_task(settings: Settings) -> KCoreSummary:
    with open_warehouse(settings.warehouse_path) as con:
        result = kcore_filter(con, settings.kcore.user_k, settings.kcore.item_k, events=settings.events)
    get_run_logger().info(
        "events admitted by train_from=%s (%d anonymous session events held back); "
        "k-core (users ≥ %d, items ≥ %d): %d → %d interactions in %d passes",
        settings.events.train_from,
        result.held_back,
        settings.kcore.user_k,
        settings.kcore.item_k,
        result.rows_before,
        result.rows_after,
        result.iterations,
    )
    _artifact(
        "kcore-summary",
        "### k-core\n\n| events admitted | held back | user k | item k | before | after | removed "
        "| users | items | passes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {settings.events.train_from} | {result.held_back:,} "
        f"| {settings.kcore.user_k} | {settings.kcore.item_k} "
        f"| {result.rows_before:,} | {result.rows_after:,} "
        f"| {result.removed:,} | {result.users_after:,} | {result.items_after:,} | {result.iterations} |\n",
        "Interactions kept and removed by k-core filtering",
    )
    return result


@task(name="split")
def split_task(settings: Settings) -> dict[str, dict[str, int]]:
    with open_warehouse(settings.warehouse_path) as con:
        sizes = make_splits(con, KCORE_TABLE, settings.eval.temporal_cut_quantile)
    get_run_logger().info("splits: %s", json.dumps(sizes))
    return sizes


@task(name="train-evaluate-publish", timeout_seconds=3600, cache_policy=NONE)
def train_publish_task(
    settings: Settings,
    run_id: str | None,
    candidates: dict[str, dict[str, Any]] | None = None,
    embedded: Callable[[], Any] | None = None,
) -> PublishResult:
    """Train every candidate, keep the best on validation NDCG@10, evaluate and publish it, in
    one task: the fitted models never leave the process. ``candidates``: model name → its
    constructor parameters (default: :func:`candidate_params` of settings). ``embedded``:
    waits for the item embedding still running beside this task (:func:`flows.embed.embed_alongside`);
    called before anything reads the vectors (a feature model's training, the bundle's index)."""
    logger = get_run_logger()

    def vectors_ready() -> None:
        if embedded is not None:
            embedded()

    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
    candidates = candidates if candidates is not None else candidate_params(settings)
    if not candidates:
        raise ValueError("the nightly refresh needs at least one candidate model")
    with open_warehouse(settings.warehouse_path) as con:
        fingerprint = data_fingerprint(
            con,
            KCORE_TABLE,
            fingerprint_settings(settings, candidates)
            | ({"daily_pool": pool_fingerprint(con)} if settings.source.kind == "feeds" else {}),
        )
        live = store.current_version()
        if live is not None and store.manifest(live).get("data_fingerprint") == fingerprint:
            logger.info("data and settings unchanged since bundle %s: nothing to train or publish", live)
            return PublishResult(None, live, "unchanged data: live bundle is up to date")
        data = load_split_data(
            con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=settings.kcore.item_k > 0
        )
        sample_eval_users(data, settings.eval.max_users, settings.model.seed)
        proto = protocol(data, list(settings.eval.ks), settings.kcore.model_dump())
        cold = cold_start_reason(data) if settings.source.kind == "feeds" else None
        tried: list[tuple[TrainResult, float]] = []
        skipped: dict[str, str] = {}  # candidate → why it could not train tonight
        reuse = (
            ReusePlan(None, None, "cold start")
            if cold
            else plan_reuse(
                store, candidates, data, settings.model.reuse_max_new_share, settings.model.reuse_max_nights
            )
        )
        logger.info("incremental: %s", reuse.reason)
        if reuse.model is not None:
            cpu = time.process_time()
            result = reused_result(reuse, data, list(settings.eval.ks), store)
            record_run(con, result, proto, fingerprint, run_id)
            tried.append((result, time.process_time() - cpu))
        elif cold:
            logger.info("cold start: %s", cold)
            result = cold_start_result(data)
            record_run(con, result, proto, fingerprint, run_id)
        else:
            if FEATURE_MODELS & set(candidates):  # hybrid models read item features
                # text vectors only for a feature model that trains tonight (categories are
                # also what evaluation's diversity reads): the others need not wait for them
                reads_text = settings.embedding.enabled and any(
                    over_size_limit(name, data, settings.model.torch_max_interactions) is None
                    for name in FEATURE_MODELS & set(candidates)
                )
                if reads_text:
                    vectors_ready()
                data.item_features = load_item_features(
                    con, data, settings.embedding if reads_text else None, side=settings.source.books
                )
            for name, params in candidates.items():
                why = untrainable(name, data, settings.model.torch_max_interactions)
                if why is not None:
                    logger.info("candidate %s skipped: %s", name, why)
                    skipped[name] = why
                    continue
                cpu = time.process_time()
                candidate = train_and_evaluate(data, name, params, list(settings.eval.ks))
                cpu = time.process_time() - cpu
                record_run(con, candidate, proto, fingerprint, run_id)
                tried.append((candidate, cpu))
                logger.info(
                    "candidate %s: valid ndcg@10=%.4f (fit %.1fs wall, %.1fs CPU with evaluation)",
                    name,
                    candidate.valid.get("ndcg@10", float("nan")),
                    candidate.train_seconds,
                    cpu,
                )
            if not tried:
                raise ValueError(f"no nightly candidate could train: {skipped}")
            result = pick_best([r for r, _ in tried])
            if len(candidates) > 1:
                _artifact(
                    "nightly-candidates",
                    candidates_markdown(tried, result, skipped),
                    "Candidate models on validation NDCG@10; the best is published",
                )
        logger.info(
            "%s valid ndcg@10=%.4f test ndcg@10=%.4f hr@10=%.4f (fit %.1fs)",
            result.model_name,
            result.valid.get("ndcg@10", float("nan")),
            result.test.get("ndcg@10", float("nan")),
            result.test.get("hr@10", float("nan")),
            result.train_seconds,
        )
        # the refit reuses what the evaluated fit chose (e.g. two-tower-knn's fusion weight);
        # above model.refit_max_interactions, or reusing a fit, the evaluated fit is served
        refit_limit = settings.model.refit_max_interactions
        refit = (
            not cold and reuse.model is None and (refit_limit is None or data.n_interactions <= refit_limit)
        )
        serving_model = fit_for_serving(data, result.model_name, result.params) if refit else result.model
        serving_fit = SERVING_FIT_TRAIN if not cold and not refit else SERVING_FIT_ALL
        logger.info("serving model fitted on %s", serving_fit)
        vectors_ready()
        # unchanged item texts and settings: the live bundle's vectors and index, linked below
        vkey = vectors_key(con, settings)
        reuse_files = {"model": reuse.record["live"]} if reuse.model is not None and reuse.record else {}
        same_vectors = live_vectors(store, vkey, data)
        vectors: np.ndarray | None
        if same_vectors is not None:
            vectors, index, vectors_from = same_vectors
            reuse_files |= {"item_vectors.npy": vectors_from, "index": vectors_from}
            logger.info("item vectors and index of %s reused: items and settings unchanged", vectors_from)
        else:
            vectors, index = bundle_vectors(con, settings, data, logger.info)  # raises below the recall floor
        manifest = build_manifest(
            catalogue=settings.catalogue,
            source_run=run_id,
            result=result,
            proto=proto,
            fingerprint=fingerprint,
            embedding=settings.embedding if settings.embedding.enabled else None,
            extra={
                **(
                    {
                        "candidates": {
                            r.model_name: {"run_id": r.run_id, "valid_ndcg@10": r.valid.get("ndcg@10")}
                            for r, _ in tried
                        }
                    }
                    if len(tried) > 1
                    else {}
                ),
                **({"skipped_candidates": skipped} if skipped else {}),
                "serving_fit": serving_fit,
                **({"vectors_key": vkey} if vkey else {}),
                **({"reused": reuse.record} if reuse.record else {}),
            },
        )
        # The live model scored on tonight's split: the gate compares like with like (a
        # reused fit is the live model: its own scores are the live ones).
        live_scored = (
            LiveScore(store.current_version(), result.valid, "rescored", f"reused fit: {reuse.reason}")
            if reuse.model is not None
            else live_score(store, data, list(settings.eval.ks))
        )
        logger.info(
            "gate: live %s valid metrics %s (%s)", live_scored.version, live_scored.source, live_scored.how
        )
        live_valid = live_scored.valid
        with tempfile.TemporaryDirectory(prefix="recflow-report-") as tmp:
            attachments: dict[str, Path] = {}
            if save_eval_cache(Path(tmp) / EVAL_CACHE, data, result):  # the next nights' unchanged users
                attachments[EVAL_CACHE] = Path(tmp) / EVAL_CACHE
            if not cold and is_torch_model(result.model):  # the next night's gate scores this one
                result.model.save(Path(tmp) / TRAIN_MODEL_DIR)
                attachments[TRAIN_MODEL_DIR] = Path(tmp) / TRAIN_MODEL_DIR
            if not cold and result.model_name == "nrms" and data.impressions:  # the news rank stage
                from tasks.news_ranking import attach_news_ranker

                ranker_dir = attach_news_ranker(
                    con, settings, data, result.model, vectors, Path(tmp), logger.info
                )
                attachments["ranker"] = ranker_dir
            report = report_for_models(
                results_dict(settings, proto, [result]),
                data,
                {result.model_name: result.model},
                Path(tmp) / "report",
                title=f"nightly-refresh: {result.model_name}",
                lists={result.model_name: result.test_lists},
            )
            published = publish_bundle(
                store,
                con,
                data,
                serving_model,
                manifest,
                vectors=vectors,
                index=index,
                attachments={**attachments, "report": report.directory},
                live_scored=live_scored,
                reuse=reuse_files,
            )
    _artifact(
        "eval-report", report.markdown, "Evaluation report with plots (metric by K, popularity, coverage)"
    )
    _artifact(
        "model-metrics",
        _metrics_markdown(
            result.model_name,
            result.valid,
            result.test,
            published,
            live_valid,
            index.metadata() if index is not None else None,
            live_scored.source,
        ),
        "Validation and test metrics of tonight's model",
    )
    logger.info(
        "bundle %s written; live bundle is %s (%s)", published.version, published.live, published.reason
    )
    return published


@task(name="ingest-event-log", retries=1, retry_delay_seconds=5)
def ingest_events_task(settings: Settings) -> EventIngestSummary:
    """Contract C1: serving's event log → interactions, idempotent by event id; then the
    impression log → ``served_impressions`` (by request id) and, for impressions whose click
    window has closed, news-model training rows in ``impressions`` (events first: they
    decide what was clicked)."""
    with open_warehouse(settings.warehouse_path) as con:
        summary = ingest_events(
            con,
            settings.events_dir,
            value_min=settings.source.value_min,
            value_max=settings.source.value_max,
            future_skew_s=settings.source.future_skew_s,
            events=settings.events,
        )
        shown = ingest_impressions(
            con, settings.impressions_dir, click_window_s=settings.events.impression_click_window_s
        )
    get_run_logger().info("%s", summary.log_line())
    get_run_logger().info("%s", shown.log_line())
    _artifact("event-log-ingestion", summary.markdown(), "Serving events ingested into interactions")
    _artifact(
        "impression-log-ingestion", shown.markdown(), "Served impressions ingested, training rows derived"
    )
    return summary


@task(name="ensure-daily-pool")
def ensure_pool_task(settings: Settings) -> None:
    """News catalogues: harvest a first pool only when there has never been one.

    The nightly does not harvest on its own otherwise: at 02:00 it would pick a pool of the
    night's stories and the 06:00 morning harvest's pool would wait a day for the next bundle.
    The bundle carries the latest pool; ``morning-harvest`` publishes each new one at once.
    """
    with open_warehouse(settings.warehouse_path) as con:
        latest = con.execute("SELECT CAST(max(pool_date) AS VARCHAR) FROM daily_pool").fetchall()[0][0]
        pool = ensure_pool(con, settings.harvest, settings.embedding) if latest is None else None
    get_run_logger().info(
        "%s",
        pool.log_line()
        if pool
        else f"the bundle carries the pool of {latest} (morning-harvest publishes new ones)",
    )


TORCH_CANDIDATES = frozenset({"two-tower", "two-tower-knn", "neumf", "nrms"})
"""Candidates trained by torch epochs (``model.torch_max_interactions`` applies)."""


def over_size_limit(name: str, data: SplitData, torch_max_interactions: int | None = None) -> str | None:
    """Why torch candidate ``name`` is too large to train on ``data`` tonight, or None: the
    part of :func:`untrainable` known before the item features (and impressions) are read."""
    if name in TORCH_CANDIDATES and torch_max_interactions is not None:
        n = data.n_interactions
        if n > torch_max_interactions:
            return (
                f"{n:,} interactions > model.torch_max_interactions {torch_max_interactions:,} "
                "(raise it, or None, to train it within model.candidate_cpu_seconds)"
            )
    return None


def untrainable(name: str, data: SplitData, torch_max_interactions: int | None = None) -> str | None:
    """Why candidate ``name`` cannot train on ``data`` tonight, or None. NRMS is the news
    catalogue's candidate once readers have clicked in logged impressions: before that it
    would learn next-click from histories alone, which the other candidates do more cheaply.
    A torch candidate above ``torch_max_interactions`` would not finish one epoch within
    its CPU budget on a small machine."""
    too_large = over_size_limit(name, data, torch_max_interactions)
    if too_large is not None:
        return too_large
    if name == "nrms" and not any(bool(np.any(li.impression.clicked)) for li in data.impressions or []):
        return "no logged impressions with a click to learn from yet"
    return None


def pick_best(results: list[TrainResult]) -> TrainResult:
    """The candidate with the best validation NDCG@10 (equal: the first listed). The test part
    plays no role in the choice."""
    if not results:
        raise ValueError("no candidate was trained")
    return max(results, key=lambda r: (r.valid.get("ndcg@10", float("-inf")), -results.index(r)))


def candidates_markdown(
    tried: list[tuple[TrainResult, float]], best: TrainResult, skipped: dict[str, str] | None = None
) -> str:
    """The candidates' table: validation NDCG@10 (what chose), test NDCG/HR@10, time; then
    the candidates that could not train tonight, with why."""
    nan = float("nan")
    rows = "\n".join(
        f"| {'**' + r.model_name + '**' if r is best else r.model_name} | {r.valid.get('ndcg@10', nan):.4f} "
        f"| {r.test.get('ndcg@10', nan):.4f} | {r.test.get('hr@10', nan):.4f} "
        f"| {r.train_seconds:.1f} s | {cpu:.1f} s |"
        for r, cpu in tried
    )
    return (
        f"### Nightly candidates\n\nPublished candidate: `{best.model_name}` (best validation "
        "ndcg@10).\n\n| model | valid ndcg@10 | test ndcg@10 | test hr@10 | fit (wall) | CPU "
        "(fit + evaluation) |\n|---|---:|---:|---:|---:|---:|\n"
        + rows
        + "\n"
        + "".join(f"\nSkipped `{name}`: {why}.\n" for name, why in (skipped or {}).items())
    )


def _metrics_markdown(
    model: str,
    valid: dict[str, float],
    test: dict[str, float],
    pub: PublishResult,
    live_valid: dict[str, float],
    index: dict[str, Any] | None,
    live_source: str = "stored",
) -> str:
    """Tonight's metrics beside the live bundle's validation metrics (re-scored on tonight's
    split, or as stored: ``live_source``), and the index check."""
    keys = [k for k in test if "@" in k]
    nan = float("nan")
    rows = "\n".join(
        f"| {k} | {valid.get(k, nan):.4f} | {live_valid.get(k, nan):.4f} | {test[k]:.4f} |" for k in keys
    )
    index_line = (
        f"\n\nIndex: {index['kind']} over {index['n']:,} items, recall@{index.get('recall_k') or 100} "
        f"= {index['recall']:.4f}"
        if index
        else ""
    )
    return (
        f"### {model}\n\nPublished `{pub.version}`; live: `{pub.live}` ({pub.reason}){index_line}\n\n"
        f"| metric | valid | live bundle (valid, {live_source}) | test |\n|---|---:|---:|---:|\n{rows}\n"
    )


@flow(name="nightly-refresh", log_prints=True)
def nightly_refresh(
    catalogue: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: ModelOverrides | None = None,
) -> PublishResult:
    """Refresh the catalogue's model from its source and publish a bundle if anything changed.

    ``catalogue`` names it (None: the settings' own, e.g. ``RECFLOW_CATALOGUE``; each
    deployment passes its own); ``overrides`` are settings fields (as in the TOML file)
    applied on top of env/config and the catalogue's block;
    ``config`` gives the configured model's hyper-parameters over the settings' (the Prefect
    UI shows it as a form; only the entry of ``model.name`` may be given).
    """
    settings = catalogue_settings(catalogue, overrides)
    candidates = candidate_params(settings, config)  # fails before any work on a bad parameter
    if settings.source.kind == "feeds":
        get_run_logger().info(
            "source kind feeds: items come from scrape-feeds, interactions from the event log"
        )
    else:
        load_task(settings)
    ingest_events_task(settings)
    if settings.source.kind == "feeds":
        ensure_pool_task(settings)
    # beside k-core, split and training (over Dask when settings.cluster names one)
    embedded = embed_alongside(settings) if settings.embedding.enabled else None
    kcore_task(settings)
    split_task(settings)
    published = train_publish_task(
        settings, str(flow_run.get_id()) if flow_run.get_id() else None, candidates, embedded
    )
    if embedded is not None:
        embedded()  # an unchanged night returns before reading vectors: the embedding still counts
    return published
