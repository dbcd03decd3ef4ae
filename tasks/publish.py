"""Build a serving bundle from the warehouse and a fitted model, and publish it atomically.

Bundle layout (everything serving needs, nothing it must compute):

* ``manifest.json`` — version, created, source run, model, metrics, protocol,
  data fingerprint, counts, checksums of every other file;
* ``catalog.duckdb`` — ``items(item_idx, item_id, title, categories, year, popularity)``
  with ``item_idx`` the model's column, ``user_histories(user_id, items INTEGER[])`` with
  item indices in time order;
* ``model/`` — the fitted model as written by its ``save``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from models.base import Recommender
from storage.artifacts import ArtifactStore
from tasks.training import SplitData


@dataclass(frozen=True)
class PublishResult:
    version: str | None
    """The version written, or None when nothing was published."""
    live: str | None
    """The version ``CURRENT`` names afterwards."""
    reason: str


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
        out.execute("CHECKPOINT")
    finally:
        out.close()


def publish_bundle(
    store: ArtifactStore,
    con: duckdb.DuckDBPyConnection,
    data: SplitData,
    model: Recommender,
    manifest: dict[str, Any],
    *,
    gate_metric: str = "ndcg@10",
    tolerance: float = 0.0,
) -> PublishResult:
    """Write and commit a bundle; move ``CURRENT`` only if it is not worse than the live one.

    The gate compares ``manifest["metrics"]["valid"][gate_metric]`` with the live bundle's;
    a bundle that loses by more than ``tolerance`` is kept for inspection but not made live.
    """
    live = store.current_version()
    make_current = True
    reason = "first bundle" if live is None else "not worse than the live bundle"
    if live is not None:
        live_manifest = store.manifest(live)
        old = live_manifest.get("metrics", {}).get("valid", {}).get(gate_metric)
        new = manifest.get("metrics", {}).get("valid", {}).get(gate_metric)
        if old is not None and new is not None and new < old - tolerance:
            make_current = False
            reason = (
                f"valid {gate_metric} {new:.4f} < live {old:.4f} - tolerance {tolerance}; kept {live} live"
            )
    with store.staging() as staged:
        write_catalog(staged / "catalog.duckdb", con, data)
        model.save(staged / "model")
        counts = {
            "users": data.n_users,
            "items": data.n_items,
            "interactions": int(sum(len(h) for h in data.histories(("train", "valid", "test")))),
        }
        version = store.commit(staged, {**manifest, "counts": counts}, make_current=make_current)
    return PublishResult(version, store.current_version(), reason)
