"""Read item side information from the warehouse, aligned with a split's item indices."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    data.impressions = split_impressions(con, data)
    extra = load_side_features(con, ids, side or BooksSettings())
    return ItemFeatures(
        text,
        categories,
        recency,
        names,
        side=None if extra is None else extra.values,
        side_names=[] if extra is None else extra.names,
        texts=item_texts(con, ids),
    )


def item_texts(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[str]:
    """ "Title. Description" per item id (the title alone without a description)."""
    rows = con.execute(
        "SELECT item_id, title, description FROM items WHERE item_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
    ).fetchall()
    by_id = {r[0]: (r[1] or "", r[2] or "") for r in rows}
    return [f"{t}. {d}" if d else t for t, d in (by_id.get(i, ("", "")) for i in ids)]


@dataclass(frozen=True)
class LoggedImpression:
    """One logged impression in a split's item indices: who, when, and what they did."""

    user_id: str
    ts: float
    impression: Any
    """:class:`models.nrms.Impression` (history, shown, clicked)."""
    dwell_s: np.ndarray
    """Seconds read per shown story (0: not read)."""


def split_impressions(con: duckdb.DuckDBPyConnection, data: SplitData) -> list[LoggedImpression]:
    """The warehouse's impression log (every source: served, personas, MIND) in ``data``'s
    item indices, oldest first; stories outside the split are dropped from what was shown
    and from the history, and an impression left with nothing shown is skipped.

    Loaded with the item features because the model that reads words (NRMS) is also the one
    that learns from what was shown and not clicked; an empty log gives an empty list."""
    from models.nrms import Impression
    from tasks.impressions import read_impressions

    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'impressions'"
    ).fetchall()[0][0]
    if not has_table:
        return []
    log = read_impressions(con)
    position = {str(i): n for n, i in enumerate(data.item_ids)}
    out: list[LoggedImpression] = []
    for user, ts, history, shown, clicked, dwell in zip(
        log["user_id"], log["ts"], log["history"], log["shown"], log["clicked"], log["dwell_s"], strict=True
    ):
        reads = list(dwell) if dwell is not None and len(dwell) == len(shown) else [0.0] * len(shown)
        keep = [
            (position[str(s)], bool(c), float(d or 0.0))
            for s, c, d in zip(shown, clicked, reads, strict=True)
            if str(s) in position
        ]
        if not keep:
            continue
        hist = np.asarray([position[str(h)] for h in history if str(h) in position], dtype=np.int64)
        impression = Impression(
            hist,
            np.asarray([k[0] for k in keep], dtype=np.int64),
            np.asarray([k[1] for k in keep], dtype=bool),
        )
        out.append(LoggedImpression(str(user), float(ts), impression, np.asarray([k[2] for k in keep])))
    return out


def impressions_for_parts(data: SplitData, parts: tuple[str, ...]) -> list[LoggedImpression]:
    """The impressions a fit on ``parts`` may learn from: one that clicked an item a user holds
    out (their valid or test item when ``parts`` leaves those out) is dropped, so the
    evaluated fit never trains on its own targets."""
    if data.impressions is None:
        return []
    held_parts = [p for p in ("train", "valid", "test") if p not in parts]
    row_of = {str(u): n for n, u in enumerate(data.user_ids)}
    out = []
    for logged in data.impressions:
        imp = logged.impression
        row = row_of.get(logged.user_id)
        if row is not None and held_parts:
            held = np.concatenate([getattr(data, p)[row] for p in held_parts])
            if np.isin(imp.shown[imp.clicked], held).any():
                continue
        out.append(logged)
    return out


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
