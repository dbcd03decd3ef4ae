"""The ``nightly-refresh`` flow: load → validate → k-core → split → train → evaluate → publish.

Orchestration only: each step is a plain function in ``tasks/``, wrapped here as a Prefect
task with retries where I/O can fail; summaries are Prefect artifacts so the UI shows them.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from expectations import DataQualityError
from expectations.vectors import check_item_vectors
from flows.embed import embed_in_process_task
from models.text_encoder import embedding_dim
from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.embedding import item_vectors
from tasks.features import load_item_features
from tasks.indexing import build_index
from tasks.load import LoadSummary, load_source
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, KCoreSummary, kcore_filter, make_splits
from tasks.publish import BUNDLE_FORMAT, PublishResult, publish_bundle
from tasks.sources import SourceFormatError
from tasks.training import (
    data_fingerprint,
    fit_for_serving,
    load_split_data,
    protocol,
    record_run,
    train_and_evaluate,
)


def _artifact(key: str, markdown: str, description: str) -> None:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    create_markdown_artifact(markdown=markdown, key=key, description=description)


def model_params(settings: Settings) -> dict[str, Any]:
    """The configured model's constructor parameters, from settings."""
    m = settings.model
    if m.name == "itemknn":
        return {"neighbors": m.knn_neighbors, "shrink": m.knn_shrink}
    if m.name == "itemknn-recency":
        return {"neighbors": m.knn_neighbors, "shrink": m.knn_shrink, "decay": m.recency_decay}
    if m.name == "two-tower":
        return {**settings.two_tower.model_dump(), "seed": m.seed}
    if m.name == "neumf":
        return {**settings.neumf.model_dump(), "seed": m.seed}
    return {}


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups, not bad data or bad config: those fail the same way every time."""
    try:
        state.result()
    except (DataQualityError, SourceFormatError, FileNotFoundError, ValueError):
        return False
    except Exception:
        return True
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
        result = kcore_filter(con, settings.kcore.user_k, settings.kcore.item_k)
    get_run_logger().info(
        "k-core (users ≥ %d, items ≥ %d): %d → %d interactions in %d passes",
        settings.kcore.user_k,
        settings.kcore.item_k,
        result.rows_before,
        result.rows_after,
        result.iterations,
    )
    _artifact(
        "kcore-summary",
        "### k-core\n\n| user k | item k | before | after | removed | users | items | passes |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
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


@task(name="train-evaluate-publish", timeout_seconds=3600)
def train_publish_task(settings: Settings, run_id: str | None) -> PublishResult:
    """Train, evaluate and publish in one task: the fitted model never leaves the process."""
    logger = get_run_logger()
    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
    params = model_params(settings)
    with open_warehouse(settings.warehouse_path) as con:
        fingerprint = data_fingerprint(
            con,
            KCORE_TABLE,
            {
                "model": settings.model.name,
                "params": params,
                "kcore": settings.kcore.model_dump(),
                "ks": settings.eval.ks,
                "embedding": settings.embedding.model_dump() if settings.embedding.enabled else None,
                "index": settings.index.model_dump(),
                "bundle_format": BUNDLE_FORMAT,
            },
        )
        live = store.current_version()
        if live is not None and store.manifest(live).get("data_fingerprint") == fingerprint:
            logger.info("data and settings unchanged since bundle %s: nothing to train or publish", live)
            return PublishResult(None, live, "unchanged data: live bundle is up to date")
        data = load_split_data(
            con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=settings.kcore.item_k > 0
        )
        proto = protocol(data, list(settings.eval.ks), settings.kcore.model_dump())
        if settings.model.name in ("two-tower", "neumf"):  # hybrid models read item features
            data.item_features = load_item_features(
                con, data, settings.embedding if settings.embedding.enabled else None
            )
        result = train_and_evaluate(data, settings.model.name, params, list(settings.eval.ks))
        record_run(con, result, proto, fingerprint, run_id)
        logger.info(
            "%s valid ndcg@10=%.4f test ndcg@10=%.4f hr@10=%.4f (fit %.1fs)",
            result.model_name,
            result.valid.get("ndcg@10", float("nan")),
            result.test.get("ndcg@10", float("nan")),
            result.test.get("hr@10", float("nan")),
            result.train_seconds,
        )
        serving_model = fit_for_serving(data, settings.model.name, params)
        vectors = index = None
        if settings.embedding.enabled:
            ids = [str(i) for i in data.item_ids]
            vectors = item_vectors(con, settings.embedding, ids)
            check_item_vectors(vectors, data.n_items, embedding_dim(settings.embedding.model))
            index = build_index(vectors, ids, settings.index)  # raises below the recall floor
            logger.info(
                "index %s over %d items, recall@%d=%.4f",
                index.kind,
                index.n,
                settings.index.recall_k,
                index.recall or 0.0,
            )
        manifest = {
            "catalogue": settings.catalogue,
            "source_run": run_id,
            "model_run": result.run_id,
            "model": {"name": result.model_name, "params": result.params},
            "metrics": {"valid": result.valid, "test": result.test},
            "protocol": proto,
            "data_fingerprint": fingerprint,
        }
        if settings.embedding.enabled:
            manifest["embedding"] = {
                "model": settings.embedding.model,
                "template": settings.embedding.template,
            }
        live_valid = store.manifest(live).get("metrics", {}).get("valid", {}) if live else {}
        published = publish_bundle(store, con, data, serving_model, manifest, vectors=vectors, index=index)
    _artifact(
        "model-metrics",
        _metrics_markdown(
            result.model_name,
            result.valid,
            result.test,
            published,
            live_valid,
            index.metadata() if index is not None else None,
        ),
        "Validation and test metrics of tonight's model",
    )
    logger.info(
        "bundle %s written; live bundle is %s (%s)", published.version, published.live, published.reason
    )
    return published


def _metrics_markdown(
    model: str,
    valid: dict[str, float],
    test: dict[str, float],
    pub: PublishResult,
    live_valid: dict[str, float],
    index: dict[str, Any] | None,
) -> str:
    """Tonight's metrics beside the live bundle's validation metrics, and the index check."""
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
        f"| metric | valid | live bundle (valid) | test |\n|---|---:|---:|---:|\n{rows}\n"
    )


@flow(name="nightly-refresh", log_prints=True)
def nightly_refresh(overrides: dict[str, Any] | None = None) -> PublishResult:
    """Refresh the catalogue's model from its source and publish a bundle if anything changed.

    ``overrides`` are settings fields (as in the TOML file) applied on top of env/config.
    """
    settings = Settings(**(overrides or {}))
    load_task(settings)
    if settings.embedding.enabled:
        embed_in_process_task(settings)
    kcore_task(settings)
    split_task(settings)
    return train_publish_task(settings, str(flow_run.get_id()) if flow_run.get_id() else None)
