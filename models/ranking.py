"""Top-k: the one ranking rule shared by offline evaluation, the batch export and the service.

The rule, wherever a list of recommendations is cut to ``k``:

1. Higher scores first.
2. An item scored NaN or −∞, or listed in ``exclude`` (what the reader has seen), is never
   returned; a row with fewer such candidates than ``k`` gets a shorter list.
3. Equal scores are ordered by a tie-break key, lower first. The service and the batch
   export pass the popularity rank (:func:`popularity_rank`), so the padding of a short
   neighbourhood list — many items score exactly 0 — is the most popular unseen items. With
   no key, the key is the item index.

The same scores and key give the same list in the export file and in ``GET /recommend``.
Offline metrics do not depend on this tie rule at all: ``models/metrics.py`` ranks each
target below every item that ties with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_ITEM = -1
"""Padding of the batched form's rows that have fewer than ``k`` candidates."""


def popularity_rank(popularity: np.ndarray) -> np.ndarray:
    """Each item's position when items are sorted by popularity, most popular first (equal
    popularity: lower index first). The tie-break key of the service and the export."""
    n = len(popularity)
    order = np.lexsort((np.arange(n), -np.asarray(popularity, dtype=np.float64)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def top_k(
    scores: np.ndarray,
    k: int,
    exclude: np.ndarray | Sequence[np.ndarray] | None = None,
    tiebreak: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the ``k`` best items by the module's rule, best first.

    ``scores`` is one row (``(n_items,)``) or a batch (``(n_rows, n_items)``) and is
    overwritten in place: NaN and excluded entries become −∞ (pass a copy to keep them; the
    service scores into a fresh array per request, so it pays for no copy). ``exclude`` is an
    index array for one row, or one index array per row of a batch. ``tiebreak`` holds one
    key per item; the keys must be distinct (a rank, such as :func:`popularity_rank`).

    One row costs O(n_items) plus O(k log k): a partition finds the k-th score, and only the
    items tied with it are compared by key. A batch returns ``(n_rows, min(k, n_items))``
    int64, rows with fewer candidates padded with :data:`NO_ITEM`.
    """
    if scores.ndim == 1:
        if exclude is not None and len(exclude):
            scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
        return _top_k_row(scores, k, tiebreak)
    if scores.ndim != 2:
        raise ValueError(f"top_k: scores must be 1-D or 2-D, got shape {scores.shape}")
    n_rows, n_items = scores.shape
    if exclude is not None and len(exclude) != n_rows:
        raise ValueError(f"top_k: {len(exclude)} exclusion lists for {n_rows} rows")
    out = np.full((n_rows, max(min(k, n_items), 0)), NO_ITEM, dtype=np.int64)
    if exclude is not None:
        for row, items in enumerate(exclude):
            if len(items):
                scores[row, np.asarray(items, dtype=np.int64)] = -np.inf
    rows = range(n_rows) if tiebreak is not None else _top_k_by_index(scores, out)
    for row in rows:
        top = _top_k_row(scores[row], k, tiebreak)
        out[row, : len(top)] = top
    return out


def _top_k_by_index(scores: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The batch rule with the item index as key, for most rows at once; writes those rows of
    ``out`` and returns the others for :func:`_top_k_row`.

    One partition of the whole batch finds each row's top k. Where the k-th score is shared
    with items left outside (the partition picked among the tied items arbitrarily; a fifth
    of ItemKNN's neighbour rows on MovieLens), the tied items are re-chosen by index. Rows
    with fewer than k candidates go one by one. A loop over every row cost 5-8 times this.
    """
    k = out.shape[1]
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    np.copyto(scores, -np.inf, where=np.isnan(scores))
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # negated: see _top_k_row
    threshold = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    full = threshold[:, 0] > -np.inf
    shared = full & (np.count_nonzero(scores >= threshold, axis=1) > k)
    if shared.any():
        # of the items tied at the k-th score, keep the first ``need`` by index
        rows = scores[shared]
        at = threshold[shared]
        tied = rows == at
        need = k - np.count_nonzero(rows > at, axis=1, keepdims=True)
        chosen = (rows > at) | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need))
        part[shared] = np.nonzero(chosen)[1].reshape(-1, k)
    # ascending index, then a stable sort by score: equal scores stay in index order (a 2-D
    # lexsort took three times as long)
    part = np.sort(part[full], axis=1)
    values = scores[np.flatnonzero(full)[:, None], part]
    out[full] = np.take_along_axis(part, np.argsort(-values, axis=1, kind="stable"), axis=1)
    return np.flatnonzero(~full)


def _top_k_row(scores: np.ndarray, k: int, tiebreak: np.ndarray | None) -> np.ndarray:
    """:func:`top_k` of one row whose exclusions are already −∞."""
    nan = np.isnan(scores)
    if nan.any():
        scores[nan] = -np.inf
    n_candidates = int(np.count_nonzero(scores > -np.inf))
    k = min(k, n_candidates)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    # The k-th highest score. Partitioning the negated scores at k - 1 stays fast when most
    # scores are equal (0 for a neighbourhood model), where partitioning the scores at n - k
    # took 15-40 ms on 500,000 of them; and in place on our own negated copy, because
    # np.partition (a copy, then the same partition) took 4 ms where this takes 1.
    negated = -scores
    negated.partition(k - 1)
    threshold = -negated[k - 1]
    reach = np.flatnonzero(scores >= threshold)  # one pass over the row; ascending index
    at = scores[reach] == threshold
    above, ties = reach[~at], reach[at]
    need = k - len(above)
    if len(ties) > need:  # the k-th place is shared: keep the ties with the lowest keys
        ties = ties[np.argpartition(tiebreak[ties], need - 1)[:need]] if tiebreak is not None else ties[:need]
    chosen = np.concatenate([above, ties])
    keys = tiebreak[chosen] if tiebreak is not None else chosen
    return chosen[np.lexsort((keys, -scores[chosen]))]
