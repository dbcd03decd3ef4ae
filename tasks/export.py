"""Batch export: every user's top-K from a published bundle, as one Parquet file.

The question peer libraries are asked most ("how do I get recommendations for all users?").
The answer here scores users in batches with whatever :class:`~models.base.Recommender` the
bundle holds, masks every item already in the user's history (the bundle's serving model is
fitted on all of it), and writes ``(user_id, rank, item_id, score)`` with the dataset's own
ids. Each list is cut by ``models/ranking.py``'s ``top_k`` with the popularity rank as the
tie-break, the call the HTTP service makes: equal scores go more popular first, so a row of
the file and ``GET /recommend/{user}`` agree.

The file is written to a temporary name beside the target and renamed when complete, so a
reader never sees half an export.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from models.ranking import popularity_rank, top_k
from models.registry import load_model
from storage.artifacts import ArtifactStore

SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    version: str
    model: str
    users: int
    k: int
    rows: int
    seconds: float
    short_users: int
    """Users with fewer than ``k`` unseen items (they get every unseen item)."""


def read_catalog(bundle_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[np.ndarray]]:
    """(item ids by index, popularity by index, user ids, histories) from ``catalog.duckdb``."""
    path = bundle_dir / "catalog.duckdb"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {bundle_dir} is not a complete bundle")
    with duckdb.connect(str(path), read_only=True) as cat:
        items = cat.sql("SELECT item_id, popularity FROM items ORDER BY item_idx").to_arrow_table()
        users = cat.sql("SELECT user_id, items FROM user_histories ORDER BY rowid").to_arrow_table()
    item_ids = np.asarray(items.column("item_id").to_numpy(zero_copy_only=False), dtype=object)
    popularity = np.asarray(items.column("popularity").to_numpy(zero_copy_only=False), dtype=np.float64)
    # the list column as one flat array and its offsets: no Python list per user
    lists = users.column("items").combine_chunks()
    flat = np.asarray(lists.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.asarray(lists.offsets.to_numpy(), dtype=np.int64)
    offsets -= offsets[0]
    histories = np.split(flat, offsets[1:-1]) if len(lists) else []
    return item_ids, popularity, [str(u) for u in users.column("user_id").to_pylist()], histories


def export_recommendations(
    store: ArtifactStore,
    out: Path,
    k: int = 100,
    version: str | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> ExportSummary:
    """Write every user's top-``k`` unseen items from bundle ``version`` (default: the live
    one) to ``out`` as Parquet; see the module docstring."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    version = version or store.current_version()
    if version is None:
        raise FileNotFoundError(f"no live bundle under {store.root}; run `recflow run nightly` first")
    store.verify(version)
    base = store.root / version
    started = time.perf_counter()
    item_ids, popularity, user_ids, histories = read_catalog(base)
    model = load_model(base / "model")
    tiebreak = popularity_rank(popularity)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    rows = short = 0
    try:
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            starts = range(0, len(user_ids), batch_size)
            for start in tqdm(starts, desc=f"export top-{k}", unit="batch", disable=not progress):
                batch = histories[start : start + batch_size]
                scores = np.asarray(model.score(batch), dtype=np.float32)
                if scores.shape != (len(batch), len(item_ids)):
                    raise ValueError(
                        f"model {getattr(model, 'name', '?')} returned scores of shape {scores.shape}, "
                        f"expected {(len(batch), len(item_ids))}"
                    )
                cols: dict[str, list[np.ndarray]] = {"user": [], "rank": [], "item": [], "score": []}
                for row, history in enumerate(batch):
                    top = top_k(scores[row], k, exclude=history, tiebreak=tiebreak)
                    short += len(top) < k
                    cols["user"].append(np.full(len(top), start + row, dtype=np.int64))
                    cols["rank"].append(np.arange(1, len(top) + 1, dtype=np.int32))
                    cols["item"].append(top)
                    cols["score"].append(scores[row, top])
                user_idx = np.concatenate(cols["user"])
                table = pa.table(
                    {
                        "user_id": pa.array(np.asarray(user_ids, dtype=object)[user_idx], pa.string()),
                        "rank": pa.array(np.concatenate(cols["rank"]), pa.int32()),
                        "item_id": pa.array(item_ids[np.concatenate(cols["item"])], pa.string()),
                        "score": pa.array(np.concatenate(cols["score"]), pa.float32()),
                    },
                    schema=SCHEMA,
                )
                writer.write_table(table)
                rows += table.num_rows
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportSummary(
        out,
        version,
        str(getattr(model, "name", "?")),
        len(user_ids),
        k,
        rows,
        round(time.perf_counter() - started, 3),
        short,
    )
