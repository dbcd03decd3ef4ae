"""Which serving events may train (``events.train_from``), decided where the k-core input is
built: anonymous session events are held back unless the rule admits them, identified events
(a ``user_id``, a named ``client``, or a batch-loaded row) always enter."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import duckdb
import pytest

from storage.settings import EventsSettings, Settings
from storage.warehouse import connect
from tasks.events import ingest_events
from tasks.prepare import KCORE_TABLE, kcore_filter

TS = 1_700_000_000


@pytest.fixture()
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = connect(tmp_path / "w.duckdb")
    con.execute("INSERT INTO items (item_id) SELECT 'i' || range::VARCHAR FROM range(10)")
    return con


def line(session: str, item: str, n: int, *, user: str | None = None, client: str | None = None) -> str:
    event = {
        "event_id": uuid.uuid4().hex,
        "ts": TS + n,
        "session": session,
        "user_id": user,
        "item_id": item,
        "event": "click",
        "dwell_s": None,
    }
    if client is not None:
        event["client"] = client
    return json.dumps(event) + "\n"


def write_log(directory: Path) -> None:
    """Every kind of sender: a batch-loaded user, identified events, and anonymous sessions
    of different lengths and variety."""
    lines = [line("s-user", f"i{n % 3}", n, user="u1") for n in range(2)]  # claims a user id
    lines += [line("s-app", f"i{n}", n, client="web") for n in range(2)]  # a named client
    lines += [line(f"drive-by-{n}", f"i{n}", n) for n in range(5)]  # cookie-less: 1 event each
    lines += [line("short", f"i{n}", n) for n in range(3)]  # 3 events: one validation target
    lines += [line("stuck", "i7", n) for n in range(6)]  # 6 clicks on one item
    lines += [line("reader", f"i{n}", n) for n in range(5)]  # 5 events over 5 items
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "w1.jsonl").write_text("".join(lines))


def kcore_users(con: duckdb.DuckDBPyConnection, events: EventsSettings) -> dict[str, int]:
    summary = kcore_filter(con, 0, 0, events=events)
    rows = con.execute(f"SELECT user_id, count(*) FROM {KCORE_TABLE} GROUP BY ALL").fetchall()
    assert summary.rows_before == sum(n for _, n in rows)
    assert summary.held_back == con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] - sum(
        n for _, n in rows
    )
    return dict(rows)


def test_ingestion_keeps_the_client_and_every_valid_event(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    write_log(tmp_path / "events")
    (tmp_path / "events" / "w2.jsonl").write_text(
        line("s", "i1", 0).replace('"click"', '"click", "client": 7')
    )
    summary = ingest_events(con, tmp_path / "events")
    assert summary.added == 23 and summary.files[1].malformed == 1
    rule = con.execute("SELECT rule FROM quarantine WHERE source_file = 'w2.jsonl'").fetchall()[0][0]
    assert rule == "malformed event: field 'client' must be a string or null"
    clients = dict(
        con.execute("SELECT session_id, any_value(client) FROM interactions GROUP BY ALL").fetchall()
    )
    assert clients["s-app"] == "web" and clients["s-user"] is None and clients["reader"] is None


def test_the_rule_admits_identified_events_and_sessions_with_history(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    con.execute(
        "INSERT INTO interactions (event_id, user_id, item_id, event_type, value, ts, seq, source_file) "
        "SELECT 'ml-' || range, '42', 'i' || (range % 10), 'rating', 4, ?, range, 'u.data' FROM range(4)",
        [TS],
    )
    write_log(tmp_path / "events")
    ingest_events(con, tmp_path / "events")
    identified = {"42": 4, "u1": 2, "session:s-app": 2}

    everything = kcore_users(con, EventsSettings(train_from="all"))
    assert everything["session:drive-by-0"] == 1 and everything["session:short"] == 3
    assert sum(everything.values()) == 4 + 23

    assert kcore_users(con, EventsSettings(train_from="identified")) == identified

    default = kcore_users(con, Settings().events)
    assert Settings().events.train_from == "sessions_min_history"
    assert default == {**identified, "session:reader": 5}  # not "short" (3), not "stuck" (1 item)

    assert kcore_users(con, EventsSettings(min_session_events=3)) == {
        **identified,
        "session:reader": 5,
        "session:short": 3,
    }
    assert kcore_users(con, EventsSettings(min_session_events=6)) == identified
