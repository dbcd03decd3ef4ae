"""Generic CSV / Parquet exports: the adapter for "whatever my shop's database dumps".

Interactions need ``user_id``, ``item_id`` and a time column (``timestamp`` or ``ts``, Unix
seconds or an ISO date); optional ``value``/``rating``, ``event_type``, ``dwell_s``,
``session_id``. Items (optional file) need ``item_id``; ``title``, ``categories``
(``A|B``), ``year``, ``description``, ``url`` are used when present. Without an item file,
items are the distinct ids seen in the interactions.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.sources.common import (
    SourceData,
    SourceFormatError,
    finish_interactions,
    finish_items,
    out_of_range_rejects,
    read_delimited,
    require_columns,
    to_float,
    to_int,
)


def _read_table(path: Path, table: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if path.suffix.lower() == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"{table} file {path} does not exist")
        df = pd.read_parquet(path).astype("string")
        df["row_number"] = range(1, len(df) + 1)
        df["seq"] = range(len(df))
        return df, pd.DataFrame(columns=["table", "source_file", "row_number", "rule", "payload"])
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return read_delimited(path, table=table, sep="\t" if path.suffix == ".tsv" else ",", header=True)
    raise SourceFormatError(f"{path}: expected a .csv, .tsv or .parquet file, got {path.suffix!r}")


def _timestamps(values: pd.Series) -> pd.Series:
    numeric = to_int(values)
    if numeric.notna().sum() >= values.notna().sum():
        return numeric
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    seconds = (parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return numeric.fillna(seconds.astype("Int64"))


def read_tabular(path: Path, items_path: Path | None = None) -> SourceData:
    raw, rej = _read_table(path, "interactions")
    require_columns(raw, ["user_id", "item_id"], path)
    ts_col = next((c for c in ("timestamp", "ts", "time") if c in raw.columns), None)
    if ts_col is None:
        raise SourceFormatError(f"{path}: no time column; expected one of timestamp, ts, time")
    raw, bad_ts = out_of_range_rejects(raw, ts_col, table="interactions", path=path)
    value_col = next((c for c in ("value", "rating") if c in raw.columns), None)
    df = pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "value": to_float(raw[value_col]) if value_col else 1.0,
            "ts": _timestamps(raw[ts_col]),
            "seq": raw["seq"],
            "row_number": raw["row_number"],
        }
    )
    for optional in ("event_type", "dwell_s", "session_id"):
        if optional in raw.columns:
            df[optional] = raw[optional]
    interactions = finish_interactions(df, event_type="rating" if value_col == "rating" else "click")
    interactions["event_type"] = interactions["event_type"].fillna("click")
    rejects = [rej, bad_ts]
    files = {"interactions": path}
    if items_path is not None:
        raw_items, rej_items = _read_table(items_path, "items")
        require_columns(raw_items, ["item_id"], items_path)
        cats = raw_items["categories"] if "categories" in raw_items.columns else None
        items = finish_items(
            pd.DataFrame(
                {
                    "item_id": raw_items["item_id"],
                    "title": raw_items.get("title"),
                    "categories": [str(c).split("|") if isinstance(c, str) and c else [] for c in cats]
                    if cats is not None
                    else [[] for _ in range(len(raw_items))],
                    "year": to_int(raw_items["year"]) if "year" in raw_items.columns else None,
                    "description": raw_items.get("description"),
                    "url": raw_items.get("url"),
                    "row_number": raw_items["row_number"],
                }
            )
        )
        rejects.append(rej_items)
        files["items"] = items_path
    else:
        ids = interactions["item_id"].dropna().drop_duplicates().reset_index(drop=True)
        items = finish_items(
            pd.DataFrame(
                {
                    "item_id": ids,
                    "title": ids,
                    "categories": [[] for _ in range(len(ids))],
                    "row_number": range(1, len(ids) + 1),
                }
            )
        )
    return SourceData(path.stem, items, interactions, None, files, pd.concat(rejects, ignore_index=True))
