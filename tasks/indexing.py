"""Building the item index, as the pipeline sees it.

The implementation lives in :mod:`models.ann` because serving must load and search the
index without importing ``tasks/``; its settings live with all others in
:mod:`storage.settings`. Flows and benchmarks import from here.
"""

from models.ann import IndexQualityError, ItemIndex, build_index, exact_search, measure_recall, recall_at_k
from storage.settings import IndexSettings

__all__ = [
    "IndexQualityError",
    "IndexSettings",
    "ItemIndex",
    "build_index",
    "exact_search",
    "measure_recall",
    "recall_at_k",
]
