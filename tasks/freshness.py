"""Publish what the live bundle lacks as a delta (:mod:`storage.deltas`): fresh stories and the pool.

Run after every scrape (new stories become servable within a minute, with no nightly) and
after the morning harvest (its pool goes live at once, instead of waiting for the next
nightly bundle). Both publish the same thing, cumulatively: every warehouse story of the
last ``window_hours`` that the live bundle does not hold (metadata + text vectors from the
embedding cache, encoding only what is not cached yet) and the warehouse's latest pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from storage.artifacts import ArtifactStore
from storage.deltas import delta_dir, latest_seq, read_delta, write_delta
from storage.settings import EmbeddingSettings
from tasks.embedding import embed_items, item_vectors
from tasks.publish import _outlets

CATALOG = "catalog.duckdb"


@dataclass(frozen=True)
class DeltaSummary:
    """What one publish did (``seq`` None: nothing was published, ``skipped`` says why)."""

    base_version: str | None
    seq: int | None
    items: int
    pool_date: str | None
    seconds: float
    skipped: str | None = None

    def log_line(self) -> str:
        if self.seq is None:
            return f"no delta published: {self.skipped}"
        return (
            f"delta {self.base_version}+{self.seq}: {self.items} fresh stories, "
            f"pool {self.pool_date or 'from the bundle'} ({self.seconds:.2f}s)"
        )


def _base_item_ids(store: ArtifactStore, version: str) -> set[str]:
    with duckdb.connect(str(store.root / version / CATALOG), read_only=True) as cat:
        return {str(r[0]) for r in cat.execute("SELECT item_id FROM items").fetchall()}


def _pool(
    con: duckdb.DuckDBPyConnection, store: ArtifactStore, base: str, harvested_at: datetime | None
) -> dict[str, Any] | None:
    """The warehouse's latest pool, stamped with when it was harvested: ``harvested_at`` for
    the harvest's own publish, else the stamp the previous delta gave the same pool (else
    None: unknown, e.g. the first scrape after a nightly, which carries an older pool)."""
    rows = con.execute(
        "SELECT CAST(pool_date AS VARCHAR), item_id, topic, reason FROM daily_pool"
        " WHERE pool_date = (SELECT max(pool_date) FROM daily_pool) ORDER BY rank, item_id"
    ).fetchall()
    if not rows:
        return None
    pool_date = rows[0][0]
    stamp: float | None = None
    if harvested_at is not None:
        stamp = harvested_at.timestamp()
    else:
        seq = latest_seq(store, base)
        if seq is not None and (delta_dir(store, base) / f"{seq:06d}").is_dir():
            previous = read_delta(store, base, seq).pool
            if previous is not None and previous.get("pool_date") == pool_date:
                stamp = previous.get("harvested_s")
    return {
        "pool_date": pool_date,
        "harvested_s": stamp,
        "rows": [{"item_id": r[1], "topic": r[2], "reason": r[3]} for r in rows],
    }


def publish_delta(
    con: duckdb.DuckDBPyConnection,
    store: ArtifactStore,
    embedding: EmbeddingSettings,
    window_hours: int,
    *,
    harvested_at: datetime | None = None,
    progress: bool = False,
) -> DeltaSummary:
    """Publish the live bundle's next delta: fresh stories and the latest pool.

    Skipped (with the reason) when there is no live bundle or it has no text vectors; an
    error when the live bundle's text model differs from ``embedding.model`` (its vectors
    and the fresh ones would not be comparable).
    """
    started = time.perf_counter()
    base = store.current_version()
    if base is None:
        return DeltaSummary(None, None, 0, None, 0.0, "no live bundle yet: run the nightly refresh first")
    text_model = (store.manifest(base).get("embedding") or {}).get("model")
    if text_model is None or not (store.root / base / "item_vectors.npy").is_file():
        return DeltaSummary(base, None, 0, None, 0.0, f"bundle {base} has no text vectors to extend")
    if text_model != embedding.model:
        raise ValueError(
            f"bundle {base} was embedded with {text_model!r} but embedding.model is "
            f"{embedding.model!r}: fresh vectors would not be comparable; publish a bundle first"
        )
    known = _base_item_ids(store, base)
    pool = _pool(con, store, base, harvested_at)
    pool_ids = [r["item_id"] for r in pool["rows"]] if pool else []
    since = int(time.time()) - window_hours * 3600
    con.register("pool_ids", pd.DataFrame({"item_id": pool_ids or [""]}))
    frame = con.execute(
        f"""
        SELECT i.item_id, i.title, i.categories, i.description AS summary, i.url AS link, o.outlet,
               CAST(i.published_ts AS DOUBLE) AS published_s
        FROM items i LEFT JOIN ({_outlets(con)}) o USING (item_id)
        WHERE i.published_ts IS NULL OR i.published_ts >= ? OR i.item_id IN (SELECT item_id FROM pool_ids)
        ORDER BY i.published_ts NULLS FIRST, i.item_id
        """,
        [since],
    ).df()
    con.unregister("pool_ids")
    frame = frame[~frame["item_id"].astype(str).isin(known)]
    items: list[dict[str, Any]] = []
    for row in frame.itertuples(index=False):
        published = None if row.published_s is None or np.isnan(row.published_s) else float(row.published_s)
        items.append(
            {
                "item_id": str(row.item_id),
                "title": row.title,
                "categories": list(row.categories) if row.categories is not None else [],
                "summary": row.summary,
                "link": row.link,
                "outlet": row.outlet if isinstance(row.outlet, str) else None,
                "published_s": published,
            }
        )
    if items:
        embed_items(con, embedding, progress=progress)
        vectors = item_vectors(con, embedding, [it["item_id"] for it in items])
    else:
        vectors = np.zeros((0, 0), dtype=np.float32)
    if pool is not None:  # the service can place only pool rows it can serve
        servable = known | {it["item_id"] for it in items}
        pool["rows"] = [r for r in pool["rows"] if r["item_id"] in servable]
    seq = write_delta(store, base, items, vectors, pool, extra={"text_model": text_model})
    return DeltaSummary(
        base,
        seq,
        len(items),
        pool["pool_date"] if pool else None,
        time.perf_counter() - started,
        None,
    )
