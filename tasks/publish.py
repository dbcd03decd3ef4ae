"""Build a serving bundle from the warehouse and a fitted model, and publish it atomically.

Bundle layout (everything serving needs, nothing it must compute):

* ``manifest.json`` — version, created, source run, model, metrics, protocol,
  data fingerprint, counts, checksums of every other file;
* ``catalog.duckdb`` — ``items(item_idx, item_id, title, categories, year, popularity)``
  with ``item_idx`` the model's column, ``user_histories(user_id, items INTEGER[])`` with
  item indices in time order, and the latest ``daily_pool`` (contract C2) when the
  warehouse has one;
* ``model/`` — the fitted model as written by its ``save``;
* ``item_vectors.npy`` — text vectors, row ``i`` for ``item_idx`` ``i`` (when embedded);
* ``index/`` — the FAISS item index over those vectors, item ids stored beside it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from models.ann import ItemIndex
from models.base import Recommender
from storage.artifacts import ArtifactStore
from tasks.training import SplitData

BUNDLE_FORMAT = 2
"""Bumped whenever the bundle layout changes, so unchanged data still gets a new-format bundle."""


@dataclass(frozen=True)
class PublishResult:
    version: str | None
    """The version written, or None when nothing was published."""
    live: str | None
    """The version ``CURRENT`` names afterwards."""
    reason: str


def gate_refusal(
    valid: dict[str, Any],
    live: str | None,
    live_valid: dict[str, Any],
    tolerance: float = 0.0,
    metric: str = "ndcg@10",
) -> str | None:
    """Why a candidate must not go live, or None: the one gate rule of every publish path
    (nightly-refresh, train-models, merge-checkpoints).

    A candidate whose validation ``metric`` is below the live bundle's by more than
    ``tolerance`` is refused; with no live bundle, or a metric missing on either side, it passes.
    """
    old, new = live_valid.get(metric), valid.get(metric)
    if live is None or old is None or new is None or new >= old - tolerance:
        return None
    return f"valid {metric} {new:.4f} < live {old:.4f} - tolerance {tolerance}; kept {live} live"


def build_manifest(
    *,
    catalogue: str,
    source_run: str | None,
    result: Any,
    proto: dict[str, Any],
    fingerprint: str,
    embedding: Any = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a bundle serving ``result`` (a :class:`tasks.training.TrainResult`):
    the one builder every publish path uses. ``embedding`` (an ``EmbeddingSettings``, when
    embedding is enabled) records how the item vectors were made; ``extra`` adds a path's own
    keys (train-models: config, candidates, warm start, report). ``publish_bundle`` adds the
    index, counts and format; the store adds version, creation time and checksums."""
    manifest: dict[str, Any] = {
        "catalogue": catalogue,
        "source_run": source_run,
        "model_run": result.run_id,
        "model": {"name": result.model_name, "params": result.params},
        "metrics": {"valid": result.valid, "test": result.test},
        "protocol": proto,
        "data_fingerprint": fingerprint,
        **(extra or {}),
    }
    if embedding is not None:
        manifest["embedding"] = {"model": embedding.model, "template": embedding.template}
    return manifest


def write_catalog(path: Path, con: duckdb.DuckDBPyConnection, data: SplitData) -> None:
    """``catalog.duckdb`` for serving: items with popularity, and every user's history."""
    everything = data.histories(("train", "valid", "test"))
    popularity = np.bincount(
        np.concatenate(everything) if everything else np.zeros(0, np.int64), minlength=data.n_items
    )
    index = pd.DataFrame(
        {
            "item_idx": np.arange(data.n_items, dtype=np.int32),
            "item_id": data.item_ids.astype(str),
            "popularity": popularity.astype(np.int64),
        }
    )
    histories = pd.DataFrame(
        {"user_id": data.user_ids.astype(str), "items": [h.astype(np.int32).tolist() for h in everything]}
    )
    out = duckdb.connect(str(path))
    try:
        con.register("bundle_index", index)
        items = con.execute(
            """
            SELECT b.item_idx, b.item_id, i.title, i.categories, i.year, b.popularity
            FROM bundle_index b LEFT JOIN items i USING (item_id) ORDER BY b.item_idx
            """
        ).df()
        con.unregister("bundle_index")
        out.register("items_df", items)
        out.execute("CREATE TABLE items AS SELECT * FROM items_df")
        out.register("hist_df", histories)
        out.execute(
            "CREATE TABLE user_histories AS SELECT user_id, CAST(items AS INTEGER[]) AS items FROM hist_df"
        )
        _copy_daily_pool(con, out)
        out.execute("CHECKPOINT")
    finally:
        out.close()


def _copy_daily_pool(con: duckdb.DuckDBPyConnection, out: duckdb.DuckDBPyConnection) -> None:
    """Contract C2: the latest ``daily_pool`` of the warehouse, same columns, when there is one."""
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'daily_pool'"
    ).fetchall()[0][0]
    if not has_table:
        return
    pool = con.execute(
        "SELECT * FROM daily_pool WHERE pool_date = (SELECT max(pool_date) FROM daily_pool) ORDER BY rank"
    ).df()
    if pool.empty:
        return
    out.register("pool_df", pool)
    out.execute(
        "CREATE TABLE daily_pool AS SELECT CAST(pool_date AS DATE) AS pool_date, "
        "CAST(rank AS INTEGER) AS rank, CAST(item_id AS VARCHAR) AS item_id, "
        "CAST(topic AS VARCHAR) AS topic, "
        "CAST(cluster AS INTEGER) AS cluster, CAST(source AS VARCHAR) AS source, "
        "CAST(reason AS VARCHAR) AS reason, CAST(score AS DOUBLE) AS score FROM pool_df ORDER BY rank"
    )
    out.unregister("pool_df")


def publish_bundle(
    store: ArtifactStore,
    con: duckdb.DuckDBPyConnection,
    data: SplitData,
    model: Recommender,
    manifest: dict[str, Any],
    *,
    gate_metric: str = "ndcg@10",
    tolerance: float = 0.0,
    vectors: np.ndarray | None = None,
    index: ItemIndex | None = None,
    attachments: dict[str, Path] | None = None,
) -> PublishResult:
    """Write and commit a bundle; move ``CURRENT`` only if it is not worse than the live one.

    ``attachments`` maps a name inside the bundle (``report``, ``train_model``) to a file or
    directory copied in as it is, so it is checksummed and published with everything else.

    The gate (:func:`gate_refusal`) compares ``manifest["metrics"]["valid"][gate_metric]``
    with the live bundle's; a bundle that loses by more than ``tolerance`` is kept for
    inspection but not made live.
    """
    live = store.current_version()
    live_valid = store.manifest(live).get("metrics", {}).get("valid", {}) if live else {}
    refusal = gate_refusal(
        manifest.get("metrics", {}).get("valid", {}), live, live_valid, tolerance, gate_metric
    )
    make_current = refusal is None
    reason = refusal or ("first bundle" if live is None else "not worse than the live bundle")
    with store.staging() as staged:
        write_catalog(staged / "catalog.duckdb", con, data)
        model.save(staged / "model")
        if vectors is not None:
            np.save(staged / "item_vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        if index is not None:
            if list(index.item_ids) != [str(i) for i in data.item_ids]:
                raise ValueError("index rows must follow the bundle's item order (item_idx)")
            index.save(staged / "index")
            manifest = {**manifest, "index": index.metadata()}
        for name, source in (attachments or {}).items():
            if source.is_dir():
                shutil.copytree(source, staged / name)
            else:
                shutil.copy2(source, staged / name)
        counts = {
            "users": data.n_users,
            "items": data.n_items,
            "interactions": int(sum(len(h) for h in data.histories(("train", "valid", "test")))),
        }
        version = store.commit(
            staged, {**manifest, "counts": counts, "bundle_format": BUNDLE_FORMAT}, make_current=make_current
        )
    return PublishResult(version, store.current_version(), reason)


def publish_reindexed(
    store: ArtifactStore, index_builder: Callable[[np.ndarray, list[str]], ItemIndex], source_run: str | None
) -> PublishResult:
    """A new bundle that is the live one with a freshly built index (the ``build-index`` flow).

    The builder raises when the index misses its recall floor; nothing is written then and
    ``CURRENT`` stays where it was.
    """
    live = store.current_version()
    if live is None:
        raise FileNotFoundError(f"no live bundle under {store.root}; run the nightly refresh first")
    base = store.root / live
    vectors_path = base / "item_vectors.npy"
    if not vectors_path.exists():
        raise FileNotFoundError(
            f"bundle {live} has no item_vectors.npy; run the nightly refresh with embedding"
        )
    vectors = np.load(vectors_path)
    with duckdb.connect(str(base / "catalog.duckdb"), read_only=True) as cat:
        item_ids = [r[0] for r in cat.execute("SELECT item_id FROM items ORDER BY item_idx").fetchall()]
    index = index_builder(vectors, item_ids)
    manifest = {k: v for k, v in store.manifest(live).items() if k not in ("version", "created", "checksums")}
    manifest.update({"index": index.metadata(), "source_run": source_run, "reindexed_from": live})
    with store.staging() as staged:
        for path in base.rglob("*"):
            rel = path.relative_to(base)
            if path.is_file() and rel.parts[0] != "index" and path.name != "manifest.json":
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staged / rel)
        index.save(staged / "index")
        version = store.commit(staged, manifest)
    return PublishResult(version, store.current_version(), f"re-indexed {live}")
