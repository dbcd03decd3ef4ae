"""Side features of items and users beside IDs and text: what a books catalogue knows.

Item features (one row per item index, every column named):

* ``num:<name>``: each numeric metadata column (average rating, ratings count, publication
  year, page count ...), z-scored over the catalogue. Counts and other non-negative columns
  spanning more than three orders of magnitude are ``log1p``-ed first (``num:log:<name>``), so
  one bestseller does not squash every other book to the same value. Missing values are 0
  (the mean).
* ``title:*``: title statistics, z-scored: length in characters and in words, and 0/1 flags
  for a series marker (``(Harry Potter, #2)``), a subtitle (``: ``) and digits.
* ``author:<name>``: multi-hot over the ``top_authors`` authors with the most books in the
  catalogue; ``author:other`` is 1 for an item whose authors are all outside them.
* ``category:<name>``: the same over the ``top_categories`` commonest categories (genres,
  tags).

User aggregates are built from the history a user tower reads, so serving needs nothing but
the history: the running mean of the item features over it and its length (``log1p``-ed).
The two-tower computes them inside its user tower (``models/two_tower.py``);
:func:`user_aggregates` is the same computation in numpy for reports.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SERIES = re.compile(r"\([^()]*#\s*\d+(\.\d+)?\)\s*$")
LOG_SPAN = 1_000.0
"""A non-negative column whose max/min-positive ratio exceeds this is log1p-ed before z-scoring."""


@dataclass
class SideFeatures:
    """``values`` ``(n_items, n_features)`` float32, column ``j`` named ``names[j]``."""

    values: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise ValueError(
                f"SideFeatures: expected values of shape (n_items, {len(self.names)}), "
                f"got {self.values.shape}"
            )

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def columns(self, prefix: str) -> list[int]:
        """Indices of the columns whose name starts with ``prefix`` (``num:``, ``category:`` ...)."""
        return [j for j, n in enumerate(self.names) if n.startswith(prefix)]


def zscore(values: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over the known (non-NaN) values; unknown and constant columns → 0."""
    x = np.asarray(values, dtype=np.float64)
    known = ~np.isnan(x)
    out = np.zeros_like(x)
    if known.sum() >= 2:
        mean, std = x[known].mean(), x[known].std()
        if std > 0:
            out[known] = (x[known] - mean) / std
    return out.astype(np.float32)


def numeric_column(name: str, values: np.ndarray) -> tuple[str, np.ndarray]:
    """The z-scored column and its name (``log:`` when a heavy-tailed count was log1p-ed)."""
    x = np.asarray(values, dtype=np.float64)
    known = x[~np.isnan(x)]
    positive = known[known > 0]
    if len(positive) and known.min() >= 0 and positive.max() / positive.min() > LOG_SPAN:
        return f"num:log:{name}", zscore(np.log1p(x))
    return f"num:{name}", zscore(x)


def title_statistics(titles: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """Length in characters (log1p) and words, z-scored; series, subtitle and digit flags."""
    text = [t or "" for t in titles]
    chars = np.log1p(np.array([len(t) for t in text], dtype=np.float64))
    words = np.array([len(t.split()) for t in text], dtype=np.float64)
    series = np.array([1.0 if SERIES.search(t) else 0.0 for t in text])
    subtitle = np.array([1.0 if ": " in t else 0.0 for t in text])
    digits = np.array([1.0 if any(c.isdigit() for c in SERIES.sub("", t)) else 0.0 for t in text])
    names = ["title:log_chars", "title:words", "title:series", "title:subtitle", "title:digits"]
    block = np.stack([zscore(chars), zscore(words), series, subtitle, digits], axis=1)
    return names, block.astype(np.float32)


def top_k_multi_hot(prefix: str, lists: Sequence[Sequence[str]], k: int) -> tuple[list[str], np.ndarray]:
    """Multi-hot over the ``k`` values in the most lists (ties by name) plus ``<prefix>:other``
    for lists with values but none of them; no columns when no list has a value."""
    counts = Counter(v for values in lists for v in dict.fromkeys(values))
    if not counts:
        return [], np.zeros((len(lists), 0), np.float32)
    top = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
    col = {v: j for j, v in enumerate(top)}
    out = np.zeros((len(lists), len(top) + 1), np.float32)
    for i, values in enumerate(lists):
        hits = [col[v] for v in values if v in col]
        if hits:
            out[i, hits] = 1.0
        elif values:
            out[i, -1] = 1.0
    names = [f"{prefix}:{v}" for v in top] + [f"{prefix}:other"]
    if not out[:, -1].any():
        return names[:-1], out[:, :-1]
    return names, out


def build_side_features(
    titles: Sequence[str | None],
    categories: Sequence[Sequence[str]],
    authors: Sequence[Sequence[str]],
    numeric: Mapping[str, np.ndarray],
    *,
    top_authors: int,
    top_categories: int,
) -> SideFeatures:
    """All item side features, rows aligned with the inputs (see the module docstring)."""
    n = len(titles)
    if len(categories) != n or len(authors) != n:
        raise ValueError(
            f"build_side_features: titles ({n}), categories ({len(categories)}) and authors "
            f"({len(authors)}) must describe the same items"
        )
    names: list[str] = []
    blocks: list[np.ndarray] = []
    for name, values in numeric.items():
        if len(values) != n:
            raise ValueError(
                f"build_side_features: numeric column {name!r} has {len(values)} rows, expected {n}"
            )
        column_name, column = numeric_column(name, values)
        if np.any(column):
            names.append(column_name)
            blocks.append(column[:, None])
    title_names, title_block = title_statistics(titles)
    names += title_names
    blocks.append(title_block)
    for prefix, lists, k in (("author", authors, top_authors), ("category", categories, top_categories)):
        hot_names, hot = top_k_multi_hot(prefix, lists, k)
        names += hot_names
        blocks.append(hot)
    return SideFeatures(np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0)), names)


def user_aggregates(side: np.ndarray, histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Per user: the mean item feature over the last ``max_len`` history items and the
    history's length (``log1p(len) / log1p(max_len)``) — what the two-tower's user tower adds."""
    out = np.zeros((len(histories), side.shape[1] + 1), np.float32)
    for u, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-max_len:]
        if len(tail):
            out[u, :-1] = side[tail].mean(axis=0)
            out[u, -1] = np.log1p(len(tail)) / np.log1p(max_len)
    return out
