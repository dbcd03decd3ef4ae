"""Read item side information from the warehouse, aligned with a split's item indices."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import numpy as np

from models.features import ItemFeatures
from models.registry import MODELS
from storage.settings import EmbeddingSettings
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
) -> ItemFeatures:
    """Categories, recency and (when ``embedding`` is given) text vectors per item index.

    Text vectors come from the ``item_vectors`` cache; with ``embed_missing`` the texts not
    yet encoded are encoded first (a cached catalogue costs nothing), else a missing vector
    is an error naming embed-items.
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
    return ItemFeatures(text, categories, recency, names)
