"""Item text → sentence-transformer vectors, computed once per (model, text).

The text of an item is rendered from a configurable template; its SHA-256 together with the
model id is the cache key in ``item_vectors``, so a second run encodes nothing, an item
whose text changed is re-encoded, and a new model re-encodes everything. Vectors are
L2-normalized float32, so inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from models.text_encoder import encode, model_id
from storage.settings import EmbeddingSettings


def render_texts(items: pd.DataFrame, template: str) -> list[str]:
    """Fill the template per item; missing fields become empty and their separators collapse."""
    texts = []
    for row in items.itertuples(index=False):
        fields = {
            "title": _text(row.title),
            "categories": ", ".join(row.categories) if row.categories is not None else "",
            "year": "" if pd.isna(row.year) else str(int(row.year)),
            "description": _text(row.description),
            "url": _text(row.url),
            "source": _text(row.source),
        }
        text = template.format(**fields)
        parts = [p.strip() for p in text.split(". ")]
        texts.append(". ".join(p for p in parts if p.strip(" .")).strip())
    return texts


def _text(value: object) -> str:
    """Text of a nullable field: None, NaN and pandas NA all become ""."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EmbedPlan:
    """What an embedding run must do: all live items, and the texts not cached yet."""

    model_id: str
    item_ids: list[str]
    hashes: list[str]
    missing_hashes: list[str]
    missing_texts: list[str]

    def summary(self, seconds: float) -> EmbedSummary:
        """What carrying out this plan did: distinct texts encoded, items served from cache."""
        fresh = set(self.missing_hashes)
        cached = sum(1 for h in self.hashes if h not in fresh)
        return EmbedSummary(self.model_id, len(self.item_ids), len(self.missing_hashes), cached, seconds)


@dataclass(frozen=True)
class EmbedSummary:
    model_id: str
    items: int
    encoded: int
    """Distinct texts encoded in this run (identical texts are encoded once)."""
    cached: int
    """Items whose vector was already in the cache."""
    seconds: float

    def markdown(self) -> str:
        rate = self.encoded / self.seconds if self.seconds > 0 and self.encoded else 0.0
        return (
            f"### Item embeddings (`{self.model_id}`)\n\n"
            "| items | encoded | from cache | seconds | items/s |\n"
            f"|---:|---:|---:|---:|---:|\n| {self.items:,} | {self.encoded:,} | {self.cached:,} "
            f"| {self.seconds:.1f} | {rate:,.0f} |\n"
        )


def plan_embedding(con: duckdb.DuckDBPyConnection, settings: EmbeddingSettings) -> EmbedPlan:
    """Render every item's text and find the (model, text) pairs not yet in the cache."""
    items = con.execute(
        "SELECT item_id, title, categories, year, description, url, source FROM items ORDER BY item_id"
    ).df()
    mid = model_id(settings.model, settings.precision)
    texts = render_texts(items, settings.template)
    hashes = [text_hash(t) for t in texts]
    cached = {
        r[0] for r in con.execute("SELECT text_hash FROM item_vectors WHERE model_id = ?", [mid]).fetchall()
    }
    missing: dict[str, str] = {}
    for h, t in zip(hashes, texts, strict=True):
        if h not in cached and h not in missing:
            missing[h] = t
    return EmbedPlan(
        mid, items["item_id"].astype(str).tolist(), hashes, list(missing), list(missing.values())
    )


def store_vectors(
    con: duckdb.DuckDBPyConnection, mid: str, hashes: Sequence[str], vectors: np.ndarray
) -> int:
    """Insert vectors into the cache (existing keys skipped); returns rows inserted."""
    if not len(hashes):
        return 0
    import pyarrow as pa

    # A fixed-size list column straight from the float32 buffer: no per-row Python objects.
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    frame = pa.table(
        {
            "model_id": pa.array([mid] * len(hashes)),
            "text_hash": pa.array(list(hashes)),
            "dim": pa.array([vectors.shape[1]] * len(hashes), pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )
    con.register("new_vectors", frame)
    con.execute(
        "INSERT INTO item_vectors (model_id, text_hash, dim, vector) "
        "SELECT model_id, text_hash, dim, CAST(vector AS FLOAT[]) FROM new_vectors ON CONFLICT DO NOTHING"
    )
    con.unregister("new_vectors")
    return len(hashes)


def encode_texts(texts: Sequence[str], settings: EmbeddingSettings, progress: bool = False) -> np.ndarray:
    """Encode with every setting that shapes the vectors or the speed (model, device, batch,
    precision, threads): what the in-process step and each Dask fan-out batch both call."""
    return encode(
        texts,
        settings.model,
        settings.device,
        settings.batch_size,
        progress,
        precision=settings.precision,
        threads=settings.threads,
    )


def embed_items(
    con: duckdb.DuckDBPyConnection, settings: EmbeddingSettings, progress: bool = True
) -> EmbedSummary:
    """Encode what is new or changed for the configured model, in-process."""
    started = time.perf_counter()
    plan = plan_embedding(con, settings)
    vectors = encode_texts(plan.missing_texts, settings, progress)
    store_vectors(con, plan.model_id, plan.missing_hashes, vectors)
    return plan.summary(time.perf_counter() - started)


def item_vectors(
    con: duckdb.DuckDBPyConnection, settings: EmbeddingSettings, item_ids: Sequence[str]
) -> np.ndarray:
    """Vectors for ``item_ids`` in that order, from the cache (every id must be embedded)."""
    plan = plan_embedding(con, settings)
    if plan.missing_hashes:
        raise RuntimeError(
            f"{len(plan.missing_hashes)} item texts are not embedded yet; run embed-items first"
        )
    by_item = dict(zip(plan.item_ids, plan.hashes, strict=True))
    missing = [i for i in item_ids if i not in by_item]
    if missing:
        raise KeyError(f"items not in the warehouse: {missing[:5]}")
    wanted = pd.DataFrame({"pos": np.arange(len(item_ids)), "text_hash": [by_item[i] for i in item_ids]})
    con.register("wanted_vectors", wanted)
    table = con.sql(
        "SELECT v.dim, v.vector FROM wanted_vectors w JOIN item_vectors v "
        "ON v.text_hash = w.text_hash AND v.model_id = ? ORDER BY w.pos",
        params=[plan.model_id],
    ).to_arrow_table()
    con.unregister("wanted_vectors")
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = int(table.column("dim")[0].as_py())
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(table.num_rows, dim)
