"""Read item side information from the warehouse, aligned with a split's item indices."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from models.features import ItemFeatures
from models.registry import MODELS
from models.side_features import SideFeatures, build_side_features
from storage.settings import BooksSettings, EmbeddingSettings
from tasks.embedding import embed_items, item_vectors

if TYPE_CHECKING:
    from tasks.training import SplitData


# Models that read item side information (their ``fit`` needs ``set_item_features`` first).
FEATURE_MODELS: frozenset[str] = frozenset(
    n for n, cls in MODELS.items() if hasattr(cls, "set_item_features")
)


def load_item_features(
    con: duckdb.DuckDBPyConnection,
    data: SplitData,
    embedding: EmbeddingSettings | None,
    embed_missing: bool = True,
    side: BooksSettings | None = None,
) -> ItemFeatures:
    """Categories, recency and (when ``embedding`` is given) text vectors per item index.

    Text vectors come from the ``item_vectors`` cache; with ``embed_missing`` the texts not
    yet encoded are encoded first (a cached catalogue costs nothing), else a missing vector
    is an error naming embed-items. Side features (``models/side_features.py``) are built
    when items have rows in ``item_attributes`` (books), with ``side``'s top-K sizes.
    """
    ids = [str(i) for i in data.item_ids]
    rows = con.execute(
        "SELECT item_id, categories, year, published_ts FROM items WHERE item_id IN "
        "(SELECT unnest(?::VARCHAR[]))",
        [ids],
    ).fetchall()
    by_id = {r[0]: r[1:] for r in rows}
    names = sorted({c for r in rows for c in (r[1] or [])})
    col = {c: j for j, c in enumerate(names)}
    categories = np.zeros((len(ids), len(names)), dtype=np.float32)
    when = np.full(len(ids), np.nan)
    for i, item in enumerate(ids):
        cats, year, published = by_id.get(item, (None, None, None))
        for c in cats or []:
            categories[i, col[c]] = 1.0
        if published is not None:
            when[i] = float(published)
        elif year is not None:
            when[i] = float(year)
    recency = np.full(len(ids), 0.5, dtype=np.float32)
    known = ~np.isnan(when)
    if known.any():
        lo, hi = np.nanmin(when), np.nanmax(when)
        recency[known] = (when[known] - lo) / (hi - lo) if hi > lo else 1.0
    text = None
    if embedding is not None:
        if embed_missing:
            embed_items(con, embedding, progress=False)
        text = item_vectors(con, embedding, ids)
    extra = load_side_features(con, ids, side or BooksSettings())
    if extra is None:
        return ItemFeatures(text, categories, recency, names)
    return ItemFeatures(text, categories, recency, names, extra.values, extra.names)


def load_side_features(
    con: duckdb.DuckDBPyConnection, ids: list[str], settings: BooksSettings
) -> SideFeatures | None:
    """Side features of ``ids`` (in that order) from ``items`` and ``item_attributes``; None
    when none of them has attributes (every source but books), so models run without."""
    rows = con.execute(
        """SELECT i.item_id, i.title, i.categories, CAST(a.attributes AS VARCHAR)
           FROM items i LEFT JOIN item_attributes a USING (item_id)
           WHERE i.item_id IN (SELECT unnest(?::VARCHAR[]))""",
        [ids],
    ).fetchall()
    by_id = {r[0]: r[1:] for r in rows}
    if not any(r[2] is not None for r in by_id.values()):
        return None
    attrs = [json.loads(by_id[i][2]) if i in by_id and by_id[i][2] else {} for i in ids]
    numeric_names = sorted({k for a in attrs for k in (a.get("numeric") or {})})
    numeric = {
        name: np.array(
            [np.nan if (v := (a.get("numeric") or {}).get(name)) is None else float(v) for a in attrs],
            dtype=np.float64,
        )
        for name in numeric_names
    }
    return build_side_features(
        [by_id[i][0] if i in by_id else None for i in ids],
        [list(by_id[i][1] or []) if i in by_id else [] for i in ids],
        [list(a.get("authors") or []) for a in attrs],
        numeric,
        top_authors=settings.top_authors,
        top_categories=settings.top_categories,
    )
