"""Pick the adapter named in settings."""

from __future__ import annotations

from storage.settings import SourceSettings
from tasks.sources.amazon import read_amazon
from tasks.sources.books import read_books
from tasks.sources.common import SourceData, SourceFormatError
from tasks.sources.mind import read_mind
from tasks.sources.movielens import read_movielens
from tasks.sources.tabular import read_tabular


def read_source(source: SourceSettings) -> SourceData:
    """Read the configured source into the one schema."""
    if source.kind == "feeds":
        raise SourceFormatError(
            "source kind 'feeds' has no file to read: its items come from `recflow run scrape` "
            "and its interactions from the serving event log"
        )
    if source.kind == "movielens":
        if not source.path.exists():
            raise SourceFormatError(
                f"MovieLens data not found at {source.path}; run `recflow data demo` to fetch "
                "MovieLens-100K, or set RECFLOW_SOURCE__PATH"
            )
        return read_movielens(source.path)
    if source.kind == "mind":
        return read_mind(source.path)
    if source.kind == "amazon":
        return read_amazon(source.path, source.items_path, source.amazon)
    if source.kind == "books":
        return read_books(source.path, source.items_path)
    return read_tabular(source.path, source.items_path)
