"""What every adapter returns, and the tolerant delimited-file reader they share.

Files are read as text (every column VARCHAR) so a malformed value never aborts a load:
rows whose shape is wrong (too few or too many fields) come back as ``rejects`` with their
line number and DuckDB's error, and go to quarantine; values that do not parse become NULL
and are caught by the expectations, which quarantine them with the rule that failed.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

ITEM_COLUMNS = ["item_id", "title", "categories", "year", "description", "url", "row_number"]
INTERACTION_COLUMNS = [
    "user_id",
    "item_id",
    "event_type",
    "value",
    "dwell_s",
    "ts",
    "seq",
    "session_id",
    "row_number",
]
# DuckDB's default max_line_size: a longer line is rejected (quarantined) with its number.
MAX_LINE_BYTES = 2_000_000
YEAR_IN_TITLE = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


class SourceFormatError(ValueError):
    """An input file does not have the layout its adapter expects (names file and columns)."""


@dataclass
class SourceData:
    """A source mapped to the one schema, plus what could not be parsed at all."""

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    users: pd.DataFrame | None
    files: dict[str, Path]
    """Role ("items", "interactions", "users") → the file it came from."""
    rejects: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            columns=["table", "source_file", "row_number", "rule", "payload"]
        )
    )
    """Rows that failed to parse: table, source_file, row_number, rule, payload."""
    item_attributes: pd.DataFrame | None = None
    """Optional ``item_id`` → ``attributes`` (a dict: ``authors`` list, ``numeric`` name → value)
    for side features (books); written to the warehouse table ``item_attributes``."""


def read_delimited(
    path: Path,
    *,
    table: str,
    sep: str,
    header: bool,
    names: list[str] | None = None,
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a delimited text file as strings; returns (rows, rejects).

    ``rows`` has the file's columns plus ``row_number`` (1-based line in the file) and
    ``seq`` (0-based order among accepted rows, the tie-breaker for equal timestamps).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{table} file {path} does not exist")
    if names is None and header:
        # DuckDB's sniffer fails the whole file on an over-long line anywhere in its sample,
        # calling it line 1; sniffing the header alone and scanning with fixed columns
        # quarantines that line under its true number like any other malformed row.
        names = _header_names(path, table=table, sep=sep, encoding=encoding)
    con = duckdb.connect()
    try:
        options = {
            "delim": sep,
            "header": header,
            "all_varchar": True,
            "store_rejects": True,
            "quote": '"' if sep == "," else "",
            "escape": '"' if sep == "," else "",
            "auto_detect": names is None,
            "encoding": encoding,
            "parallel": False,
        }
        if names is not None:
            options["columns"] = {n: "VARCHAR" for n in names}
        opts = ", ".join(f"{k} := ${k}" for k in options)
        rows = con.execute(f"SELECT * FROM read_csv($path, {opts})", {"path": str(path), **options}).df()
        rejects = (
            con.execute("SELECT line, error_type, csv_line FROM reject_errors ORDER BY line")
            .df()
            .drop_duplicates("line")
        )  # one error row per missing column: keep one per line
    except duckdb.Error as exc:
        raise SourceFormatError(f"cannot read {table} file {path}: {exc}") from exc
    finally:
        con.close()
    rejected_lines = (
        np.unique(rejects["line"].to_numpy(dtype=np.int64)) if len(rejects) else np.zeros(0, np.int64)
    )
    first = 2 if header else 1
    all_lines = np.arange(first, first + len(rows) + len(rejected_lines), dtype=np.int64)
    rows["row_number"] = np.setdiff1d(all_lines, rejected_lines, assume_unique=True)[: len(rows)]
    rows["seq"] = np.arange(len(rows), dtype=np.int64)
    rej = pd.DataFrame(
        {
            "table": table,
            "source_file": str(path),
            "row_number": rejects["line"].astype("int64") if len(rejects) else pd.Series(dtype="int64"),
            "rule": ("parse:" + rejects["error_type"].astype(str)) if len(rejects) else pd.Series(dtype=str),
            "payload": rejects["csv_line"].astype(str) if len(rejects) else pd.Series(dtype=str),
        }
    )
    return rows, rej


def _header_names(path: Path, *, table: str, sep: str, encoding: str) -> list[str] | None:
    """The column names DuckDB's sniffer gives the file's first line (trimmed, duplicates
    suffixed, blanks named ``column<i>``), read from that line alone; ``None`` for an empty
    file (the full sniff then says what is wrong)."""
    with path.open("rb") as fh:
        first = fh.readline(MAX_LINE_BYTES + 3)
    if not first:
        return None
    if len(first.rstrip(b"\r\n")) > MAX_LINE_BYTES:
        raise SourceFormatError(f"{table} file {path}: line 1, the header, is over {MAX_LINE_BYTES} bytes")
    with tempfile.TemporaryDirectory(prefix="recflow-header-") as tmp:
        header_file = Path(tmp) / "header.csv"
        header_file.write_bytes(first)
        con = duckdb.connect()
        try:
            options = {
                "delim": sep,
                "header": True,
                "all_varchar": True,
                "quote": '"' if sep == "," else "",
                "escape": '"' if sep == "," else "",
                "encoding": encoding,
            }
            opts = ", ".join(f"{k} := ${k}" for k in options)
            result = con.execute(
                f"SELECT * FROM read_csv($path, {opts}) LIMIT 0", {"path": str(header_file), **options}
            )
            return [d[0] for d in result.description]
        except duckdb.Error as exc:
            raise SourceFormatError(f"cannot read the header of {table} file {path}: {exc}") from exc
        finally:
            con.close()


def require_columns(df: pd.DataFrame, required: list[str], path: Path) -> None:
    """Fail with the file name and the expected columns when any is missing."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SourceFormatError(
            f"{path}: missing column(s) {missing}; expected at least {required}, found {list(df.columns)}"
        )


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Toy Story (1995)"`` → (``"Toy Story"``, 1995); titles without a year keep year NA."""
    parts = titles.fillna("").str.extract(YEAR_IN_TITLE)
    title = parts["title"].where(parts["title"].notna(), titles)
    year = pd.to_numeric(parts["year"], errors="coerce").astype("Int64")
    return title.str.strip().where(title.str.strip() != "", None), year


_INT64_LIMIT = float(2**63)


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce")


def _fits_int64(numbers: pd.Series) -> pd.Series:
    """Which numbers an int64 holds once rounded (NaN, ±inf and 1e30 do not)."""
    return numbers.astype("float64").abs() < _INT64_LIMIT


def to_int(values: pd.Series) -> pd.Series:
    """Integer column from text; values that are no number, or a number no int64 can hold
    (``inf``, ``1e30``), become NA instead of failing the whole column."""
    numbers = _numbers(values)
    if numbers.dtype.kind == "i":  # every value an integer int64 holds: exact, no float detour
        return numbers.astype("Int64")
    return numbers.where(_fits_int64(numbers)).astype("float64").round().astype("Int64")


def out_of_range_rejects(
    raw: pd.DataFrame, column: str, *, table: str, path: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off rows whose ``column`` is a number but none an int64 can hold (``inf``,
    ``1e30``, ``-1e300``): returns (kept rows, rejects naming the column and the value).

    Without this, such a value would fail the load with a bare TypeError/OverflowError or
    (as NA) be quarantined under a rule that hides what the file said."""
    numbers = _numbers(raw[column])
    bad = numbers.notna().to_numpy() & ~_fits_int64(numbers).to_numpy()
    if not bad.any():
        return raw, _empty_rejects()
    fields = [c for c in raw.columns if c not in ("row_number", "seq")]
    rejected = raw[bad]
    rejects = pd.DataFrame(
        {
            "table": table,
            "source_file": str(path),
            "row_number": rejected["row_number"].astype("int64").to_numpy(),
            "rule": f"parse:out-of-range({column})",
            "payload": [
                {column: str(row[column]), "row": {f: _text_or_none(row[f]) for f in fields}}
                for row in rejected.to_dict("records")
            ],
        }
    )
    return raw[~bad].reset_index(drop=True), rejects


def _text_or_none(value: object) -> str | None:
    missing = value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))
    return None if missing else str(value)


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame(columns=["table", "source_file", "row_number", "rule", "payload"])


def to_float(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def finish_items(df: pd.DataFrame) -> pd.DataFrame:
    """Order and fill the item columns of the one schema."""
    for col in ITEM_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["item_id"] = df["item_id"].astype("string").str.strip()
    df["year"] = df["year"].astype("Int64")
    return df[ITEM_COLUMNS].reset_index(drop=True)


def finish_interactions(df: pd.DataFrame, event_type: str = "rating") -> pd.DataFrame:
    """Order and fill the interaction columns of the one schema."""
    if "event_type" not in df.columns:
        df["event_type"] = event_type
    for col in INTERACTION_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["user_id"] = df["user_id"].astype("string").str.strip()
    df["item_id"] = df["item_id"].astype("string").str.strip()
    df["value"] = df["value"].astype("float64")
    df["dwell_s"] = pd.to_numeric(df["dwell_s"], errors="coerce").astype("float64")
    df["ts"] = df["ts"].astype("Int64")
    return df[INTERACTION_COLUMNS].reset_index(drop=True)
