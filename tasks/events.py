"""Ingest the serving event log (contract C1) into ``interactions``, idempotently by event id.

Serving appends one JSON object per line to ``events_dir/*.jsonl``, each line written whole
and fsynced before its 2xx reply. A line without a trailing newline is a torn write (a
worker died mid-line, or is still writing): it is skipped and not counted as read, so it is
looked at again next time. Per file, the byte offset read so far is kept in
``event_log_offsets``, so a night reads only what was appended since the last; ids make a
re-read harmless anyway (a file that shrank is read again from the start).

Mapping (C1): user_id = user_id or "session:"+session; value = 1.0 for click/like/share/dwell,
0.0 for skip; label = ``storage.labels.label_of`` under ``events.labels`` /
``events.dwell_positive_s`` (positive, negative or weak_negative: only positives train
retrieval models and become targets); ts = int(ts); seq = the line's number in its file;
session_id = session; source_file = the file's name; client = client (NULL when missing,
null or empty: anonymous).
Lines that are not valid events go to ``quarantine`` with the reason; events failing the
interaction expectations (unknown item, time in the future) too. Every valid event is kept:
which anonymous ones may train is decided where the training data is built
(``tasks/prepare.py::admitted_interactions_sql``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from expectations import quarantine, validate_interactions
from storage.labels import EVENT_TYPES, labelled
from storage.settings import EventsSettings
from storage.warehouse import scalar
from tasks.jsonl_log import parse_lines, quarantine_bad_lines, read_new_lines

EVENT_VALUES = {"click": 1.0, "like": 1.0, "share": 1.0, "dwell": 1.0, "skip": 0.0}
"""The stored ``value`` of each event (kept for what reads it, e.g. demand counts); what an
event means for training is its ``label``."""
assert set(EVENT_VALUES) == set(EVENT_TYPES)


@dataclass
class FileIngest:
    file: str
    lines: int
    added: int
    duplicates: int
    malformed: int
    quarantined: int
    torn_tail: bool


@dataclass
class EventIngestSummary:
    files: list[FileIngest] = field(default_factory=list)

    @property
    def added(self) -> int:
        return sum(f.added for f in self.files)

    def log_line(self) -> str:
        if not self.files:
            return "event log: nothing new"
        return (
            f"event log: {len(self.files)} files, {sum(f.lines for f in self.files)} new lines, "
            f"{self.added} interactions added, {sum(f.duplicates for f in self.files)} already present, "
            f"{sum(f.malformed for f in self.files)} malformed, {sum(f.quarantined for f in self.files)} "
            f"quarantined, {sum(f.torn_tail for f in self.files)} torn tails left for later"
        )

    def markdown(self) -> str:
        lines = [
            "### Event log ingestion",
            "",
            self.log_line(),
            "",
            "| file | new lines | added | already present | malformed | quarantined | torn tail |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {f.file} | {f.lines} | {f.added} | {f.duplicates} | {f.malformed} | {f.quarantined} "
            f"| {'yes' if f.torn_tail else ''} |"
            for f in self.files
        ]
        return "\n".join(lines) + "\n"


def parse_event(line: str) -> dict[str, Any]:
    """One log line as an interaction row; raises ValueError naming what is wrong."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from exc
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    for key, kinds in (("event_id", str), ("session", str), ("item_id", str), ("event", str)):
        if not isinstance(event.get(key), kinds) or not event[key]:
            raise ValueError(f"field {key!r} must be a non-empty string")
    if event["event"] not in EVENT_VALUES:
        raise ValueError(f"event {event['event']!r} is not one of {sorted(EVENT_VALUES)}")
    ts = event.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise ValueError("field 'ts' must be a number (unix seconds)")
    user = event.get("user_id")
    if user is not None and not isinstance(user, str):
        raise ValueError("field 'user_id' must be a string or null")
    client = event.get("client")
    if client is not None and not isinstance(client, str):
        raise ValueError("field 'client' must be a string or null")
    dwell = event.get("dwell_s")
    if dwell is not None and (isinstance(dwell, bool) or not isinstance(dwell, int | float)):
        raise ValueError("field 'dwell_s' must be a number or null")
    return {
        "event_id": event["event_id"],
        "user_id": user or f"session:{event['session']}",
        "item_id": event["item_id"],
        "event_type": event["event"],
        "value": EVENT_VALUES[event["event"]],
        "dwell_s": float(dwell) if dwell is not None else None,
        "ts": int(ts),
        "session_id": event["session"],
        "client": client or None,
    }


def ingest_events(
    con: duckdb.DuckDBPyConnection,
    events_dir: Path,
    *,
    value_min: float = 0.0,
    value_max: float = 5.0,
    future_skew_s: int = 300,
    events: EventsSettings | None = None,
) -> EventIngestSummary:
    """Read what was appended to every ``*.jsonl`` since last time and insert it, each event
    labelled by the mapping in ``events`` (default: the default mapping)."""
    from tasks.load import upsert_users

    summary = EventIngestSummary()
    if not events_dir.is_dir():
        return summary
    known_items = {r[0] for r in con.execute("SELECT item_id FROM items").fetchall()}
    for path in sorted(events_dir.glob("*.jsonl")):
        name = path.name
        new = read_new_lines(con, path, name)
        if new is None:
            continue
        torn = new.torn
        if not new.lines:  # only a torn line so far
            summary.files.append(FileIngest(name, 0, 0, 0, 0, 0, torn))
            continue
        parsed = parse_lines(
            new,
            lambda text, i: {**parse_event(text), "seq": i, "row_number": i},
            table="interactions",
            source_file=name,
            what="event",
        )
        rows, bad = parsed.rows, parsed.bad
        con.execute("BEGIN TRANSACTION")
        try:
            quarantine_bad_lines(con, bad)
            added = duplicates = quarantined = 0
            if rows:
                frame = pd.DataFrame(rows)
                outcome = validate_interactions(
                    frame,
                    source_file=name,
                    known_items=known_items,
                    known_users=None,
                    value_min=value_min,
                    value_max=value_max,
                    min_ts=0,
                    max_ts=int(time.time()) + future_skew_s,
                )
                quarantined = quarantine(con, outcome)
                clean = outcome.clean.drop(columns=["row_number"])
                clean["source_file"] = name
                clean["label"] = labelled(zip(clean["event_type"], clean["dwell_s"], strict=True), events)
                before = int(scalar(con, "SELECT count(*) FROM interactions"))
                con.register("new_events", clean)
                con.execute(
                    "INSERT INTO interactions (event_id, user_id, item_id, event_type, value, dwell_s, ts, "
                    "seq, session_id, source_file, client, label) SELECT event_id, user_id, item_id, "
                    "event_type, value, dwell_s, ts, seq, session_id, source_file, CAST(client AS VARCHAR), "
                    "label FROM new_events n "
                    # event ids are the key (no index: migration 12): skip stored and repeated ids,
                    # probing the stored ones with tonight's few rather than hashing them all
                    "WHERE n.event_id NOT IN (SELECT event_id FROM interactions WHERE event_id IN "
                    "(SELECT event_id FROM new_events)) "
                    "QUALIFY row_number() OVER (PARTITION BY n.event_id ORDER BY n.seq) = 1"
                )
                con.unregister("new_events")
                added = int(scalar(con, "SELECT count(*) FROM interactions")) - before
                duplicates = len(clean) - added
                upsert_users(
                    con, clean[["user_id"]].drop_duplicates().assign(attributes="{}"), overwrite=False
                )
            new.commit_offset(con)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        summary.files.append(FileIngest(name, len(new.lines), added, duplicates, len(bad), quarantined, torn))
    return summary
