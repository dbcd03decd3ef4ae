"""The ``export-recommendations`` flow: every user's top-K from a published bundle, fanned out.

:func:`tasks.export.export_recommendations` writes the file in one process. Past one
machine's patience (millions of users, a model that scores slowly), this flow cuts the users
into contiguous shards, scores each shard as one Prefect task (on Dask when
``settings.cluster`` names a cluster, see :mod:`flows.cluster`; one after another
otherwise), each writing a Parquet part beside the target, then concatenates the parts in
shard order into the same single file, row for row what the one-process export writes
(``tests/test_cluster.py`` checks it). Workers read the bundle and write their part under
``home``, which must therefore be one shared path for the flow and its workers.
"""

from __future__ import annotations

import os
import shutil
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task

from flows.cluster import dask_runner, worker_count
from models.ranking import popularity_rank, top_k
from models.registry import load_model
from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings
from tasks.export import SCHEMA, ExportSummary, read_catalog


@task(name="export-shard", retries=1, retry_delay_seconds=5)
def export_shard_task(
    bundle_dir: Path, part: Path, lo: int, hi: int, k: int, batch_size: int
) -> tuple[int, int]:
    """Users ``[lo, hi)`` of the bundle's catalogue → ``part``; returns (rows, short users).

    The same scoring as the one-process export: the bundle's model scores a batch, each
    list is ``top_k`` with the history excluded and popularity as the tie-break."""
    item_ids, popularity, user_ids, histories = read_catalog(bundle_dir)
    model = load_model(bundle_dir / "model")
    tiebreak = popularity_rank(popularity)
    users = np.asarray(user_ids, dtype=object)
    rows = short = 0
    part.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(part, SCHEMA) as writer:
        for start in range(lo, hi, batch_size):
            batch = histories[start : min(hi, start + batch_size)]
            scores = np.asarray(model.score(batch), dtype=np.float32)
            if scores.shape != (len(batch), len(item_ids)):
                raise ValueError(
                    f"model {getattr(model, 'name', '?')} returned scores of shape {scores.shape}, "
                    f"expected {(len(batch), len(item_ids))}"
                )
            tops = [top_k(scores[r], k, exclude=h, tiebreak=tiebreak) for r, h in enumerate(batch)]
            short += sum(len(t) < k for t in tops)
            lengths = [len(t) for t in tops]
            table = pa.table(
                {
                    "user_id": pa.array(np.repeat(users[start : start + len(batch)], lengths), pa.string()),
                    "rank": pa.array(np.concatenate([np.arange(1, n + 1) for n in lengths]), pa.int32()),
                    "item_id": pa.array(item_ids[np.concatenate(tops)], pa.string()),
                    "score": pa.array(
                        np.concatenate([scores[r, t] for r, t in enumerate(tops)]), pa.float32()
                    ),
                },
                schema=SCHEMA,
            )
            writer.write_table(table)
            rows += table.num_rows
    return rows, short


def shard_bounds(n_users: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous, nearly equal user ranges covering ``0..n_users`` (none empty)."""
    edges = np.linspace(0, n_users, max(1, min(shards, n_users)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in pairwise(edges) if b > a]


def _export(settings: Settings, out: Path, k: int, version: str | None, batch_size: int) -> ExportSummary:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    store = ArtifactStore(settings.bundles_dir)
    version = version or store.current_version()
    if version is None:
        raise FileNotFoundError(f"no live bundle under {store.root}; run `recflow run nightly` first")
    store.verify(version)
    started = time.perf_counter()
    bundle_dir = store.root / version
    _, _, user_ids, _ = read_catalog(bundle_dir)
    wanted = settings.cluster.export_shards or worker_count(settings)
    bounds = shard_bounds(len(user_ids), wanted)
    parts_dir = out.with_name(f".{out.name}.parts")
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts = [parts_dir / f"part-{j:05d}.parquet" for j in range(len(bounds))]
    futures = [
        export_shard_task.submit(bundle_dir, part, lo, hi, k, batch_size)
        for part, (lo, hi) in zip(parts, bounds, strict=True)
    ]
    results = [f.result() for f in futures]
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            for part in parts:  # shard order is user order; one row group at a time
                reader = pq.ParquetFile(part)
                for group in range(reader.num_row_groups):
                    writer.write_table(reader.read_row_group(group))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
    model = (store.manifest(version).get("model") or {}).get("name", "?")
    summary = ExportSummary(
        out,
        version,
        str(model),
        len(user_ids),
        k,
        sum(r for r, _ in results),
        round(time.perf_counter() - started, 3),
        sum(s for _, s in results),
    )
    get_run_logger().info(
        "exported %d rows for %d users in %d shard(s) from bundle %s in %.1fs → %s",
        summary.rows, summary.users, len(bounds), version, summary.seconds, out,
    )  # fmt: skip
    return summary


@flow(name="export-recommendations-shards")
def export_shards_flow(
    settings: Settings, out: Path, k: int, version: str | None, batch_size: int
) -> ExportSummary:
    """The shards and the merge, as a subflow whose task runner is chosen at call time."""
    return _export(settings, out, k, version, batch_size)


@flow(name="export-recommendations")
def export_recommendations_flow(
    out: Path,
    k: int = 100,
    version: str | None = None,
    batch_size: int = 1024,
    catalogue: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExportSummary:
    """Every user's top-``k`` unseen items of bundle ``version`` (default: the live one) as one
    Parquet file at ``out``, scored in user shards over the configured cluster."""
    settings = catalogue_settings(catalogue, overrides)
    runner = dask_runner(settings)
    shards = export_shards_flow if runner is None else export_shards_flow.with_options(task_runner=runner)
    return shards(settings, Path(out), k, version, batch_size)
