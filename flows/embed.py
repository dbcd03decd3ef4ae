"""The ``embed-items`` flow: encode every new or changed item text, once per model.

In-process by default (one task: the model already uses both cores). With a cluster
configured (``cluster.dask_address``, a running scheduler; or ``cluster.dask_workers`` /
``embedding.dask_workers`` > 0, a local cluster) the batches fan out over Dask through
Prefect's Dask task runner (:mod:`flows.cluster`): texts go to the workers, vectors come
back, and only the flow's process opens the warehouse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact

from flows.cluster import dask_runner
from storage.settings import EmbeddingSettings, Settings, catalogue_settings
from storage.warehouse import open_warehouse
from tasks.embedding import EmbedSummary, embed_items, encode_texts, plan_embedding, store_vectors


def report(summary: EmbedSummary) -> None:
    """Log the summary and show it as an artifact of the current run."""
    get_run_logger().info(
        "embedded %d items with %s: %d encoded, %d from cache",
        summary.items,
        summary.model_id,
        summary.encoded,
        summary.cached,
    )
    create_markdown_artifact(
        markdown=summary.markdown(), key="embedding-summary", description="Items embedded this run"
    )


@task(name="embed-items-in-process", retries=1, retry_delay_seconds=5)
def embed_in_process_task(settings: Settings) -> EmbedSummary:
    with open_warehouse(settings.warehouse_path) as con:
        summary = embed_items(con, settings.embedding)
    report(summary)
    return summary


@task(name="encode-batch", retries=2, retry_delay_seconds=2)
def encode_batch_task(texts: list[str], embedding: EmbeddingSettings) -> np.ndarray:
    """One fan-out unit: runs in a Dask worker process, which loads the model once."""
    return encode_texts(texts, embedding, progress=False)


def _fanout(settings: Settings) -> EmbedSummary:
    import time

    started = time.perf_counter()
    with open_warehouse(settings.warehouse_path) as con:
        plan = plan_embedding(con, settings.embedding)
    size = settings.embedding.fanout_batch
    batches = [plan.missing_texts[i : i + size] for i in range(0, len(plan.missing_texts), size)]
    futures = encode_batch_task.map(batches, embedding=unmapped(settings.embedding))
    vectors = [f.result() for f in futures]
    dim = vectors[0].shape[1] if vectors else 0
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    with open_warehouse(settings.warehouse_path) as con:
        store_vectors(con, plan.model_id, plan.missing_hashes, stacked)
    return plan.summary(time.perf_counter() - started)


@flow(name="embed-items-fanout")
def embed_fanout_flow(settings: Settings) -> EmbedSummary:
    """The fan-out itself, as a subflow: its task runner (Dask) is chosen at call time."""
    summary = _fanout(settings)
    report(summary)
    return summary


def embed_step(settings: Settings) -> EmbedSummary:
    """Embed under ``settings``: over Dask when a cluster is configured, else in-process.
    What the nightly's embedding step and the ``embed-items`` flow both call."""
    runner = dask_runner(settings, settings.embedding.dask_workers)
    if runner is None:
        return embed_in_process_task(settings)
    return embed_fanout_flow.with_options(task_runner=runner)(settings)


def embed_alongside(settings: Settings) -> Callable[[], EmbedSummary]:
    """Start embedding under ``settings`` so the caller's next steps run beside it; returns
    what waits for it (raising what it raised). Item texts do not depend on ratings, so the
    nightly's k-core, split and training need not wait: only what reads the vectors does.

    In-process: the task is submitted to the flow's thread pool (the encoder holds one core,
    the next steps' DuckDB and numpy work the other). Over Dask the fan-out is a subflow of
    its own, run here and now as :func:`embed_step` does."""
    if dask_runner(settings, settings.embedding.dask_workers) is not None:
        summary = embed_step(settings)
        return lambda: summary
    future = embed_in_process_task.submit(settings)
    return lambda: future.result()


@flow(name="embed-items")
def embed_items_flow(catalogue: str | None = None, overrides: dict[str, Any] | None = None) -> EmbedSummary:
    """Embed what is new or changed in ``catalogue`` (None: the settings' own); show the
    summary as an artifact."""
    return embed_step(catalogue_settings(catalogue, overrides))


def run_embed_items(overrides: dict[str, Any] | None = None, catalogue: str | None = None) -> EmbedSummary:
    """Run ``embed-items`` with the task runner the settings ask for."""
    return embed_items_flow(catalogue, overrides)
