"""Side information about items that hybrid models use beside interaction IDs.

Kept as plain arrays aligned with the dense item indices of a split, so models never open
the warehouse: the pipeline (``tasks/features.py``) fills this once and every model that
wants it receives it through ``set_item_features`` before ``fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ItemFeatures:
    """Per-item features, row ``i`` describing item index ``i``.

    ``text``: L2-normalized text vectors ``(n_items, d)`` (all-MiniLM-L6-v2) or None when
    embeddings are off. ``categories``: multi-hot ``(n_items, n_categories)``. ``recency``:
    in [0, 1], 1 for the newest item (from year or publication time), 0.5 when unknown.
    ``side``: optional ``(n_items, n_side)`` side features (``models/side_features.py``:
    numeric metadata, title statistics, top authors and categories), None when the catalogue
    has no item attributes; ``side_names`` names its columns.
    """

    text: np.ndarray | None
    categories: np.ndarray
    recency: np.ndarray
    category_names: list[str] = field(default_factory=list)
    side: np.ndarray | None = None
    side_names: list[str] = field(default_factory=list)
    texts: list[str] | None = None
    """Title and description per item (what a model that reads words reads), or None."""

    def __post_init__(self) -> None:
        n = self.categories.shape[0]
        if self.recency.shape != (n,):
            raise ValueError(f"ItemFeatures.recency: expected shape ({n},), got {self.recency.shape}")
        if self.text is not None and self.text.shape[0] != n:
            raise ValueError(f"ItemFeatures.text: expected {n} rows, got {self.text.shape[0]}")
        self.categories = np.asarray(self.categories, dtype=np.float32)
        self.recency = np.asarray(self.recency, dtype=np.float32)
        if self.text is not None:
            self.text = np.asarray(self.text, dtype=np.float32)
        if self.side is not None:
            self.side = np.asarray(self.side, dtype=np.float32)
            if self.side.shape != (n, len(self.side_names)):
                raise ValueError(
                    f"ItemFeatures.side: expected shape ({n}, {len(self.side_names)}), got {self.side.shape}"
                )
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"ItemFeatures.texts: expected {n} texts, got {len(self.texts)}")

    @property
    def n_items(self) -> int:
        return int(self.categories.shape[0])

    @property
    def text_dim(self) -> int:
        return 0 if self.text is None else int(self.text.shape[1])

    @classmethod
    def empty(cls, n_items: int) -> ItemFeatures:
        """No side information at all (ID-only models and tests)."""
        return cls(None, np.zeros((n_items, 0), np.float32), np.full(n_items, 0.5, np.float32))

    def to_arrays(self) -> dict[str, Any]:
        out: dict[str, Any] = {"categories": self.categories, "recency": self.recency}
        if self.text is not None:
            out["text"] = self.text
        if self.side is not None:
            out["side"] = self.side
        return out


@runtime_checkable
class UsesItemFeatures(Protocol):
    """A model that wants :class:`ItemFeatures`; the trainer hands them over before ``fit``."""

    def set_item_features(self, features: ItemFeatures) -> None: ...
