"""Impression logs in the warehouse: validated, quarantined, loaded idempotently, read back.

An impression (what one user was shown at one time, and what they clicked) is what news
models train and are judged on. Its rows reference items and users, so they pass the same
Great Expectations rules as interactions: every shown and history entry is checked as one
(user, item, time) row by :func:`expectations.validate_interactions`, and an impression with
any failing entry is quarantined whole, under its source line, with the rule it broke.
"""

from __future__ import annotations

import dataclasses
import json
import time

import duckdb
import numpy as np
import pandas as pd

from expectations import (
    DataQualityError,
    ValidationOutcome,
    enforce_failure_share,
    quarantine,
    validate_interactions,
)
from storage.warehouse import scalar

IMPRESSION_TABLE_COLUMNS = ["impression_id", "user_id", "ts", "history", "shown", "clicked", "dwell_s"]


def validate_impressions(
    impressions: pd.DataFrame,
    *,
    source_file: str,
    known_items: list[str],
    known_users: list[str] | None,
    min_ts: int = 0,
    max_ts: int | None = None,
) -> ValidationOutcome:
    """Split impressions into clean and rejected ones (one rejected row per line and rule).

    Each impression needs ``row_number`` (its line in the source file). Shown and history
    lists are exploded into (user, item, ts) rows and checked with the interaction rules:
    ids present, time in range, item and user known.
    """
    missing = [c for c in [*IMPRESSION_TABLE_COLUMNS[:6], "row_number"] if c not in impressions.columns]
    if missing:
        raise ValueError(f"{source_file}: impressions lack column(s) {missing}")
    frame = impressions.reset_index(drop=True)
    exploded = pd.DataFrame(
        {
            "user_id": np.repeat(frame["user_id"].astype("string").to_numpy(), _lengths(frame)),
            "item_id": [
                str(i) for h, s in zip(frame["history"], frame["shown"], strict=True) for i in [*h, *s]
            ],
            "ts": np.repeat(frame["ts"].to_numpy(), _lengths(frame)),
            "value": 1.0,
            "row_number": np.repeat(frame["row_number"].to_numpy(), _lengths(frame)),
        }
    )
    exploded["ts"] = exploded["ts"].astype("Int64")
    outcome = validate_interactions(
        exploded,
        source_file=source_file,
        known_items=known_items,
        known_users=known_users,
        value_min=0.0,
        value_max=1.0,
        min_ts=min_ts,
        max_ts=max_ts if max_ts is not None else int(time.time()) + 300,
    )
    bad_rows = set(outcome.rejected["row_number"].tolist())
    rejected = outcome.rejected.drop_duplicates(["row_number", "rule"]).reset_index(drop=True)
    lines = {
        int(r): json.dumps({"impression": _json_row(row)}, default=str)
        for r, row in zip(frame["row_number"], frame.to_dict("records"), strict=True)
    }
    rejected["payload"] = [lines[int(r)] for r in rejected["row_number"]]
    return dataclasses.replace(
        outcome,
        table="impressions",
        clean=frame[~frame["row_number"].isin(bad_rows)].reset_index(drop=True),
        rejected=rejected,
        total_rows=len(frame),
    )


def _lengths(frame: pd.DataFrame) -> np.ndarray:
    return np.array(
        [len(h) + len(s) for h, s in zip(frame["history"], frame["shown"], strict=True)], dtype=np.int64
    )


def _json_row(row: dict) -> dict:
    return {
        k: (list(v) if isinstance(v, list | np.ndarray) else v) for k, v in row.items() if k != "row_number"
    }


def insert_impressions(
    con: duckdb.DuckDBPyConnection, impressions: pd.DataFrame, source: str, source_file: str
) -> int:
    """Insert impressions whose id is new; returns rows added (re-loading adds nothing)."""
    frame = impressions[IMPRESSION_TABLE_COLUMNS].copy()
    frame["dwell_s"] = [None if d is None else [float(x) for x in d] for d in frame["dwell_s"]]
    frame["source"] = source
    frame["source_file"] = source_file
    before = scalar(con, "SELECT count(*) FROM impressions")
    con.register("new_impressions", frame)
    try:
        con.execute(
            """
            INSERT INTO impressions
                (impression_id, user_id, ts, history, shown, clicked, dwell_s, source, source_file)
            SELECT impression_id, user_id, ts, CAST(history AS VARCHAR[]), CAST(shown AS VARCHAR[]),
                   CAST(clicked AS BOOLEAN[]), CAST(dwell_s AS DOUBLE[]), source, source_file
            FROM new_impressions
            ON CONFLICT DO NOTHING
            """
        )
    finally:
        con.unregister("new_impressions")
    return int(scalar(con, "SELECT count(*) FROM impressions") - before)


def load_impressions(
    con: duckdb.DuckDBPyConnection,
    impressions: pd.DataFrame,
    *,
    source: str,
    source_file: str,
    max_failure_share: float,
    known_users: list[str] | None = None,
    parse_rejects: int = 0,
) -> tuple[int, int, dict[str, int]]:
    """Validate against the warehouse's items (and users), quarantine, insert.

    Returns (rows added, rows newly quarantined, failing rows per rule). Raises
    :class:`expectations.DataQualityError` when too many impressions were rejected, counting
    the ``parse_rejects`` lines that could not be parsed at all; the rejected ones are
    quarantined first and nothing of the file is inserted then.
    """
    known_items = [r[0] for r in con.execute("SELECT item_id FROM items").fetchall()]
    outcome = validate_impressions(
        impressions, source_file=source_file, known_items=known_items, known_users=known_users
    )
    quarantined = quarantine(con, outcome)
    total = outcome.total_rows + parse_rejects
    bad = outcome.rejected_rows + parse_rejects
    if total and bad / total > max_failure_share:
        raise DataQualityError(
            f"{source_file}: {bad:,} of {total:,} impressions ({bad / total:.1%}) were rejected, more "
            f"than the allowed {max_failure_share:.1%}; {parse_rejects:,} could not be parsed "
            "(see the quarantine table)"
        )
    enforce_failure_share(outcome, max_failure_share)
    added = insert_impressions(con, outcome.clean, source, source_file)
    return added, quarantined, {k: v for k, v in outcome.failures.items() if v}


def read_impressions(con: duckdb.DuckDBPyConnection, source: str | None = None) -> pd.DataFrame:
    """The impression log (optionally of one source), oldest first, as lists per row."""
    where = "WHERE source = $source" if source is not None else ""
    params = {"source": source} if source is not None else {}
    table = con.sql(
        f"SELECT {', '.join(IMPRESSION_TABLE_COLUMNS)}, source FROM impressions {where} "
        "ORDER BY ts, impression_id",
        params=params,
    ).to_arrow_table()
    return (
        table.to_pandas(maps_as_pydicts="strict")
        if table.num_rows
        else pd.DataFrame(columns=[*IMPRESSION_TABLE_COLUMNS, "source"])
    )
