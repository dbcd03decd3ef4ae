"""Expectations on item vectors before they are indexed or published."""

from __future__ import annotations

import numpy as np

from expectations.suites import DataQualityError


def check_item_vectors(vectors: np.ndarray, n_items: int, dim: int, *, tolerance: float = 1e-3) -> None:
    """Right dimension, finite, unit norm within ``tolerance``, exactly one vector per live item.

    Raises :class:`DataQualityError` naming the first broken rule and how many rows break it.
    """
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise DataQualityError(f"item vectors: expected shape (n, {dim}), got {vectors.shape}")
    if vectors.shape[0] != n_items:
        raise DataQualityError(
            f"item vectors: expected one vector per live item ({n_items}), got {vectors.shape[0]}"
        )
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise DataQualityError(f"item vectors: {int((~finite).sum())} of {n_items} rows hold NaN or infinity")
    norms = np.linalg.norm(vectors, axis=1)
    off = np.abs(norms - 1.0) > tolerance
    if off.any():
        raise DataQualityError(
            f"item vectors: {int(off.sum())} of {n_items} rows are not unit length "
            f"(|norm - 1| > {tolerance}; worst {float(norms[off][0]):.4f})"
        )
