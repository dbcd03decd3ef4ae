"""The one contract every recflow model keeps.

The trainer, the evaluator and the serving cascade only call these methods, never look
inside a model. Users and items are dense indices ``0..n-1``; a user is represented by the
time-ordered array of item indices they interacted with, so sequence models and
neighbourhood models share one signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp


@runtime_checkable
class Recommender(Protocol):
    """fit on a training matrix, score histories against all items, save and load."""

    name: ClassVar[str]

    def fit(self, train: sp.csr_matrix, histories: list[np.ndarray]) -> None:
        """Learn from ``train`` (users × items, 1 where the user interacted), whose rows are
        also given as time-ordered ``histories`` for models that care about order."""
        ...

    def score(self, histories: list[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        """Scores of shape ``(len(histories), n_items)``, or ``(len(histories), len(items))``
        for the given item indices only (a ranker's candidates); higher is better."""
        ...

    def params(self) -> dict[str, Any]:
        """The hyper-parameters that reproduce this model, recorded in ``model_runs``."""
        ...

    def save(self, directory: Path) -> None:
        """Write everything needed by :meth:`load` into ``directory``."""
        ...

    @classmethod
    def load(cls, directory: Path) -> Recommender:
        """Read a model written by :meth:`save`."""
        ...


def histories_to_csr(histories: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary users × items matrix from item-index histories (duplicates collapse to 1)."""
    indptr = np.zeros(len(histories) + 1, dtype=np.int64)
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    np.cumsum(lengths, out=indptr[1:])
    indices = (
        np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        if len(histories) and indptr[-1] > 0
        else np.zeros(0, dtype=np.int64)
    )
    return flat_to_csr(indptr, indices, n_items)


def flat_to_csr(offsets: np.ndarray, items: np.ndarray, n_items: int) -> sp.csr_matrix:
    """:func:`histories_to_csr` of histories given flat: user ``u``'s items are
    ``items[offsets[u]:offsets[u + 1]]``."""
    matrix = sp.csr_matrix(
        (np.ones(len(items), dtype=np.float32), items, offsets), shape=(len(offsets) - 1, n_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def select_items(scores: np.ndarray, items: np.ndarray | None) -> np.ndarray:
    """The columns of ``items`` (all when None): how models that always score the whole
    catalogue answer a request for a few candidates."""
    if items is None:
        return scores
    return np.ascontiguousarray(scores[:, np.asarray(items, dtype=np.int64)])
