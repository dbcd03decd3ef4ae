"""Expectations on scraped feed entries, run with Great Expectations like the file gates.

A feed is someone else's data: an entry without a title cannot be shown or embedded, one
whose link is not an http(s) URL cannot be opened, and one dated in the future would sit at
the top of every freshness ranking. Such entries go to ``quarantine`` with the rule they
broke; the rest are loaded. One GX validation covers every new entry of a scrape run (GX
costs ~0.1 s per call, so one call per feed would dominate a run of hundreds of feeds); the
quarantine rows name the feed each entry came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb
import pandas as pd

from expectations.suites import ValidationOutcome, _validate, quarantine_id

TITLE_MIN_CHARS = 3
TITLE_MAX_CHARS = 300
URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[^\s]*)?$"


@dataclass(frozen=True)
class EntryRules:
    """Bounds the entry rules check; ``max_published_ts`` is now plus the allowed clock skew."""

    max_published_ts: int
    title_min: int = TITLE_MIN_CHARS
    title_max: int = TITLE_MAX_CHARS


def validate_feed_entries(entries: pd.DataFrame, rules: EntryRules) -> ValidationOutcome:
    """Split scraped entries into clean and rejected rows.

    ``entries`` needs ``title``, ``url``, ``published_ts`` and ``row_number`` (unique in the
    frame). Rules: title present and ``title_min``..``title_max`` characters long; url an
    absolute http(s) URL; published_ts at most ``max_published_ts``.
    """
    import great_expectations.expectations as gxe

    missing = [c for c in ("title", "url", "published_ts", "row_number") if c not in entries.columns]
    if missing:
        raise ValueError(f"scraped entries lack column(s) {', '.join(missing)}")
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="title"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="title", min_value=rules.title_min, max_value=rules.title_max
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="url"),
        gxe.ExpectColumnValuesToMatchRegex(column="url", regex=URL_PATTERN),
        gxe.ExpectColumnValuesToBeBetween(column="published_ts", max_value=rules.max_published_ts),
    ]
    return _validate(entries, "items", "scraped feed entries", expectations)


def quarantine_entries(
    con: duckdb.DuckDBPyConnection,
    outcome: ValidationOutcome,
    feed_of_row: dict[int, str],
    key_of_row: dict[int, int],
) -> int:
    """Store rejected entries in ``quarantine`` under their feed's URL; returns rows added.

    ``row_number`` in the quarantine is the entry's stable key (a 63-bit hash of its id or
    link), not its position: feeds shift entries down as news arrives, and the key keeps a
    re-fetched bad entry from being quarantined twice.
    """
    rejected = outcome.rejected
    if rejected.empty:
        return 0
    rows = []
    for row_number, rule, payload in zip(
        rejected["row_number"], rejected["rule"], rejected["payload"], strict=True
    ):
        feed = feed_of_row[int(row_number)]
        key = key_of_row[int(row_number)]
        rows.append(
            {
                "quarantine_id": quarantine_id("items", feed, key, str(rule)),
                "table_name": "items",
                "source_file": feed,
                "row_number": key,
                "rule": str(rule),
                "payload": json.dumps(json.loads(str(payload))),
            }
        )
    frame = pd.DataFrame(rows).drop_duplicates("quarantine_id")
    before = con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
    con.register("feed_rejects", frame)
    try:
        con.execute(
            "INSERT INTO quarantine (quarantine_id, table_name, source_file, row_number, rule, payload) "
            "SELECT quarantine_id, table_name, source_file, row_number, rule, payload::JSON "
            "FROM feed_rejects "
            "ON CONFLICT DO NOTHING"
        )
    finally:
        con.unregister("feed_rejects")
    return int(con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0] - before)
