"""Ingest the serving impression log, and derive news-model training rows from it.

Serving writes one JSON line per ``/feed`` and ``/recommend`` answer under
``events_dir/impressions/`` (contract C6 in ``docs/contracts.md``). The
nightly reads what was appended since last time (byte offsets in ``event_log_offsets``, under
``impressions/<file>``; a torn last line is left for later, as with events) and inserts each
impression once, by ``request_id``, into ``served_impressions``.

Then it derives the rows news models train on, in the layout of ``tasks/impressions.py``
(``impression_id, user_id, ts, history, shown, clicked, dwell_s``, ``source = 'served'``):

* ``user_id``: the impression's user, else ``session:<session>`` (as events are mapped);
* ``history``: that reader's positive interactions before the impression (the last
  :data:`HISTORY_MAX`), oldest first (events keep whole seconds: one in the impression's own
  second counts unless it is on a shown item);
* ``clicked``: per shown item, whether the same session (or, without one, the same user)
  had a **positive** event on it (``storage.labels``: click, like, share, a long dwell) within
  ``events.impression_click_window_s`` after the impression. A skip is never a click. A click
  counts for the reader's latest impression that showed the item before it, not for every one;
* ``dwell_s``: per shown item, the longest dwell event so attributed (0 when none).

A row is derived only once the impression's click window has closed (its clicks may still be
on their way otherwise) and the events of that window have been ingested (the nightly ingests
events first). It is inserted once, by id, so running the nightly twice adds nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from expectations import quarantine
from storage.warehouse import scalar
from tasks.impressions import insert_impressions, validate_impressions
from tasks.jsonl_log import parse_lines, quarantine_bad_lines, read_new_lines

HISTORY_MAX = 50
"""Most history entries a derived row carries (the reader's latest positives)."""
SOURCE = "served"
"""``impressions.source`` of the rows derived from the serving log."""
OFFSET_PREFIX = "impressions/"


@dataclass
class ImpressionIngestSummary:
    files: int = 0
    lines: int = 0
    added: int = 0
    duplicates: int = 0
    malformed: int = 0
    torn_tails: int = 0
    derived: int = 0
    derived_quarantined: int = 0
    waiting: int = 0
    """Impressions whose click window is still open: derived on a later run."""
    per_file: list[tuple[str, int, int]] = field(default_factory=list)

    def log_line(self) -> str:
        return (
            f"impression log: {self.files} files, {self.lines} new lines, {self.added} impressions added, "
            f"{self.duplicates} already present, {self.malformed} malformed, {self.torn_tails} torn tails "
            f"left for later; {self.derived} training rows derived ({self.derived_quarantined} quarantined), "
            f"{self.waiting} impressions wait for their click window to close"
        )

    def markdown(self) -> str:
        lines = [
            "### Impression log ingestion",
            "",
            self.log_line(),
            "",
            "| file | new lines | added |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {n} | {added} |" for name, n, added in self.per_file]
        return "\n".join(lines) + "\n"


def parse_impression(line: str) -> dict[str, Any]:
    """One impression line as a ``served_impressions`` row; raises ValueError naming the problem."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key in ("request_id", "endpoint"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise ValueError(f"field {key!r} must be a non-empty string")
    ts = record.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise ValueError("field 'ts' must be a number (unix seconds)")
    for key in ("session", "user_id", "model", "bundle_version", "strategy"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(f"field {key!r} must be a string or null")
    items = record.get("items")
    if not isinstance(items, list):
        raise ValueError("field 'items' must be a list")
    ordered: list[tuple[int, str, str | None]] = []
    for entry in items:
        if not isinstance(entry, dict) or not isinstance(entry.get("item_id"), str):
            raise ValueError("each of 'items' needs an 'item_id' string")
        position = entry.get("position")
        if isinstance(position, bool) or not isinstance(position, int) or position < 1:
            raise ValueError("each of 'items' needs a 'position' from 1")
        stage = entry.get("stage")
        ordered.append((position, entry["item_id"], stage if isinstance(stage, str) else None))
    ordered.sort()
    if [p for p, _, _ in ordered] != list(range(1, len(ordered) + 1)):
        raise ValueError("'items' positions must be 1..n, each once")
    delta = record.get("delta_seq")
    return {
        "request_id": record["request_id"],
        "ts": float(ts),
        "endpoint": record["endpoint"],
        "session_id": record.get("session") or None,
        "user_id": record.get("user_id") or None,
        "item_ids": [i for _, i, _ in ordered],
        "stages": [s for _, _, s in ordered],
        "model": record.get("model"),
        "bundle_version": record.get("bundle_version"),
        "delta_seq": None if delta is None else str(delta),
        "strategy": record.get("strategy"),
    }


def ingest_impressions(
    con: duckdb.DuckDBPyConnection,
    directory: Path,
    *,
    click_window_s: float = 1800.0,
    now: float | None = None,
) -> ImpressionIngestSummary:
    """Read the impression files' new lines into ``served_impressions``, then derive the
    training rows of every impression whose click window closed before ``now``."""
    summary = ImpressionIngestSummary()
    if directory.is_dir():
        for path in sorted(directory.glob("*.jsonl")):
            _ingest_file(con, path, summary)
    derive_training_rows(
        con, click_window_s=click_window_s, now=time.time() if now is None else now, summary=summary
    )
    return summary


def _ingest_file(con: duckdb.DuckDBPyConnection, path: Path, summary: ImpressionIngestSummary) -> None:
    new = read_new_lines(con, path, OFFSET_PREFIX + path.name)
    if new is None:
        return
    summary.files += 1
    summary.torn_tails += new.torn
    if not new.lines:
        return
    parsed = parse_lines(
        new,
        lambda text, _i: {**parse_impression(text), "source_file": path.name},
        table="served_impressions",
        source_file=path.name,
        what="impression",
    )
    rows, bad = parsed.rows, parsed.bad
    con.execute("BEGIN TRANSACTION")
    try:
        quarantine_bad_lines(con, bad)
        added = 0
        if rows:
            before = int(scalar(con, "SELECT count(*) FROM served_impressions"))
            con.register("new_impressions", pd.DataFrame(rows))
            con.execute(
                "INSERT INTO served_impressions (request_id, ts, endpoint, session_id, user_id, item_ids,"
                " stages, model, bundle_version, delta_seq, strategy, source_file)"
                " SELECT request_id, ts, endpoint, session_id, user_id, CAST(item_ids AS VARCHAR[]),"
                " CAST(stages AS VARCHAR[]), model, bundle_version, delta_seq, strategy, source_file"
                " FROM new_impressions ON CONFLICT DO NOTHING"
            )
            con.unregister("new_impressions")
            added = int(scalar(con, "SELECT count(*) FROM served_impressions")) - before
        new.commit_offset(con)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    summary.lines += len(new.lines)
    summary.malformed += len(bad)
    summary.added += added
    summary.duplicates += len(rows) - added
    summary.per_file.append((path.name, len(new.lines), added))


_DERIVE = """
WITH ready AS (
    SELECT request_id, ts, session_id, coalesce(user_id, 'session:' || session_id) AS reader, item_ids
    FROM served_impressions
    WHERE NOT derived AND ts + $window <= $now AND (user_id IS NOT NULL OR session_id IS NOT NULL)
),
shown AS (  -- every impression's items, derived or not: a click goes to the latest showing
    SELECT request_id, ts, session_id, coalesce(user_id, 'session:' || session_id) AS reader,
           unnest(item_ids) AS item_id, generate_subscripts(item_ids, 1) AS pos
    FROM served_impressions
    WHERE user_id IS NOT NULL OR session_id IS NOT NULL
),
served_events AS (
    SELECT event_id, session_id, user_id, item_id, ts, event_type, dwell_s, label
    FROM interactions
    WHERE event_type IN ('click', 'like', 'share', 'dwell', 'skip')
),
attributed AS (  -- each serving event's impression: the reader's latest showing before it
    SELECT e.event_id, arg_max(s.request_id, s.ts) AS request_id, any_value(e.item_id) AS item_id,
           any_value(e.label) AS label, any_value(e.event_type) AS event_type, any_value(e.dwell_s) AS dwell_s
    FROM served_events e JOIN shown s
      ON s.item_id = e.item_id
     AND (CASE WHEN s.session_id IS NOT NULL THEN e.session_id = s.session_id ELSE e.user_id = s.reader END)
     AND e.ts >= floor(s.ts) AND e.ts <= s.ts + $window
    GROUP BY e.event_id
),
per_item AS (
    SELECT request_id, item_id, bool_or(label = 'positive') AS clicked,
           max(CASE WHEN event_type = 'dwell' THEN dwell_s END) AS dwell_s
    FROM attributed GROUP BY request_id, item_id
),
lists AS (
    SELECT s.request_id, any_value(s.reader) AS reader, any_value(s.ts) AS ts,
           list(s.item_id ORDER BY s.pos) AS shown,
           list(coalesce(p.clicked, false) ORDER BY s.pos) AS clicked,
           list(coalesce(p.dwell_s, 0.0) ORDER BY s.pos) AS dwell_s
    FROM shown s JOIN ready r USING (request_id)
    LEFT JOIN per_item p ON p.request_id = s.request_id AND p.item_id = s.item_id
    GROUP BY s.request_id
),
histories AS (
    SELECT r.request_id, list(i.item_id ORDER BY i.ts, i.seq) AS history
    -- events keep whole seconds: one in the impression's second is history unless it is on a
    -- shown item (then it came after: a click, not history)
    FROM ready r JOIN interactions i
      ON i.user_id = r.reader AND i.label = 'positive'
     AND (i.ts < floor(r.ts) OR (i.ts = floor(r.ts) AND NOT list_contains(r.item_ids, i.item_id)))
    GROUP BY r.request_id
)
SELECT l.request_id AS impression_id, l.reader AS user_id, CAST(floor(l.ts) AS BIGINT) AS ts,
       coalesce(list_slice(h.history, greatest(len(h.history) - $history_max + 1, 1), len(h.history)),
                []::VARCHAR[]) AS history,
       l.shown, l.clicked, l.dwell_s
FROM lists l LEFT JOIN histories h USING (request_id)
ORDER BY l.ts, l.request_id
"""


def derive_training_rows(
    con: duckdb.DuckDBPyConnection,
    *,
    click_window_s: float,
    now: float,
    summary: ImpressionIngestSummary | None = None,
) -> int:
    """Insert the training rows of the impressions whose click window has closed; returns
    rows added. Rows failing the impression checks (e.g. an item the warehouse lacks) are
    quarantined; either way the impression is marked ``derived`` and not looked at again."""
    summary = summary if summary is not None else ImpressionIngestSummary()
    params = {"window": float(click_window_s), "now": float(now), "history_max": HISTORY_MAX}
    # Python lists of Python values (through Arrow): numpy scalars in object columns would be
    # written back as their repr.
    table = con.execute(_DERIVE, params).to_arrow_table()
    records = table.to_pylist() if table is not None else []
    frame = pd.DataFrame(
        records, columns=["impression_id", "user_id", "ts", "history", "shown", "clicked", "dwell_s"]
    )
    summary.waiting = int(
        scalar(
            con,
            "SELECT count(*) FROM served_impressions WHERE NOT derived AND ts + $window > $now",
            {"window": float(click_window_s), "now": float(now)},
        )
    )
    if frame.empty:
        return 0
    frame["row_number"] = range(1, len(frame) + 1)
    known_items = [r[0] for r in con.execute("SELECT item_id FROM items").fetchall()]
    # Row numbers count within this run, so the run's time keeps quarantine ids apart.
    outcome = validate_impressions(
        frame,
        source_file=f"served_impressions@{int(now)}",
        known_items=known_items,
        known_users=None,
        max_ts=int(now) + 300,
    )
    con.execute("BEGIN TRANSACTION")
    try:
        summary.derived_quarantined += quarantine(con, outcome)
        added = insert_impressions(con, outcome.clean, SOURCE, "served_impressions")
        con.register("derived_ids", frame[["impression_id"]])
        con.execute(
            "UPDATE served_impressions SET derived = true"
            " WHERE request_id IN (SELECT impression_id FROM derived_ids)"
        )
        con.unregister("derived_ids")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    summary.derived += added
    return added
