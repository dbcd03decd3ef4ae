"""Source adapters: each turns one kind of input into the one recflow schema."""

from tasks.sources.common import SourceData, SourceFormatError
from tasks.sources.loader import read_source

__all__ = ["SourceData", "SourceFormatError", "read_source"]
