"""The nightly's side of impressions (issue 14, item 5): what a real service logged is ingested
into the real warehouse once by request id, and becomes news-model training rows where only
positives are clicks (a skip never is) within the click window."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from serving.events import Event, EventLog
from serving.impressions import ImpressionLog
from storage.warehouse import connect
from tasks.events import ingest_events
from tasks.impressions import read_impressions
from tasks.served_impressions import derive_training_rows, ingest_impressions, parse_impression
from tests.serving_fixtures import Catalogue, build_catalogue, serve, wait_for

WINDOW = 1800.0


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("served"), serving={"impression_flush_s": 0.05})


def served_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    frame = read_impressions(con, source="served")

    def plain(values: Any) -> list[Any]:
        return [v.item() if hasattr(v, "item") else v for v in values]

    return [
        {k: (plain(v) if k in ("history", "shown", "clicked", "dwell_s") else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def nightly(catalogue: Catalogue, now: float) -> tuple[Any, list[dict[str, Any]]]:
    """Events, then impressions, as the nightly's ingest task runs them."""
    settings = catalogue.settings
    with connect(settings.warehouse_path) as con:
        ingest_events(con, settings.events_dir, events=settings.events)
        summary = ingest_impressions(con, settings.impressions_dir, click_window_s=WINDOW, now=now)
        return summary, served_rows(con)


def test_a_served_feed_becomes_one_training_row_with_clicks_and_no_skips(catalogue: Catalogue) -> None:
    session = "served-reader-1"
    with serve(catalogue.settings) as (_app, client):
        first = client.post("/interact", json={"item_id": "sci-1", "event": "like", "session": session})
        assert first.status_code == 200
        feed = client.get("/feed", params={"k": 6, "session": session, "explore": "false"}).json()
        shown = [it["item_id"] for it in feed["items"]]
        liked, skipped, dwelled = shown[0], shown[1], shown[2]
        for item, event, dwell in [(liked, "click", None), (liked, "like", None), (skipped, "skip", None),
                                   (dwelled, "dwell", 45.0)]:  # fmt: skip
            body = {"item_id": item, "event": event, "session": session, "dwell_s": dwell}
            assert client.post("/interact", json=body).status_code == 200
        other = client.get("/feed", params={"k": 3, "session": "served-reader-2"}).json()  # only looked
        wait_for(
            lambda: len(list(catalogue.settings.impressions_dir.glob("*.jsonl"))) == 1
            and feed["request_id"].encode() in next(catalogue.settings.impressions_dir.glob("*.jsonl")).read_bytes()
            and other["request_id"].encode() in next(catalogue.settings.impressions_dir.glob("*.jsonl")).read_bytes(),
            what="both impressions logged",
        )  # fmt: skip

    # Tonight, while the click window is open: ingested, not yet derived.
    summary, rows = nightly(catalogue, now=time.time())
    assert summary.added == 2 and summary.waiting == 2 and rows == []
    # Tomorrow: derived. Run twice: the same rows, nothing added or duplicated.
    later = time.time() + WINDOW + 60
    summary, rows = nightly(catalogue, now=later)
    assert summary.added == 0 and summary.derived == 2
    again, rows_again = nightly(catalogue, now=later)
    assert again.added == 0 and again.derived == 0 and again.lines == 0
    assert rows_again == rows
    with connect(catalogue.settings.warehouse_path) as con:
        stored = con.execute("SELECT count(*), count(DISTINCT request_id) FROM served_impressions").fetchall()
        assert stored == [(2, 2)]
        versions = con.execute("SELECT DISTINCT bundle_version, model FROM served_impressions").fetchall()
    assert versions == [(feed["bundle_version"], "itemknn")]

    by_id = {r["impression_id"]: r for r in rows}
    row = by_id[feed["request_id"]]
    assert row["user_id"] == f"session:{session}"
    assert row["shown"] == shown
    clicked = dict(zip(row["shown"], row["clicked"], strict=True))
    assert clicked[liked] is True and clicked[dwelled] is True, "click/like and a long dwell are positives"
    assert clicked[skipped] is False, "a skip is never a click"
    assert sum(clicked.values()) == 2
    dwell = dict(zip(row["shown"], row["dwell_s"], strict=True))
    assert dwell[dwelled] == 45.0 and dwell[liked] == 0.0
    assert row["history"] == ["sci-1"], "the like before the impression is its history"
    looked = by_id[other["request_id"]]
    assert looked["history"] == [] and not any(looked["clicked"])


def test_clicks_go_to_the_latest_showing_within_the_window(tmp_path: Path) -> None:
    """Written with the service's own writers; the warehouse knows the items."""
    events_dir = tmp_path / "events"
    t0 = 1_795_420_800.0
    impressions = ImpressionLog(events_dir / "impressions", flush_s=60.0)
    item_ids = ["a", "b", "c"]
    for request_id, ts in [("r-early", t0), ("r-late", t0 + 100.0), ("r-other", t0 + 200.0)]:
        session = "s2" if request_id == "r-other" else "s1"
        impressions.log((request_id, ts, "/feed", session, None, item_ids, [0, 1, 2], ["ranker"] * 3,
                         "m", "v1", 7, "personalized"))  # fmt: skip
    impressions.close()
    log = EventLog(events_dir, fsync=False)
    for item, event, ts in [
        ("a", "click", t0 + 150.0),
        ("b", "click", t0 + 50.0),
        ("c", "click", t0 + 5000.0),
    ]:
        log.append(Event.new(session="s1", item_id=item, event=event, ts=ts))  # type: ignore[arg-type]
    log.close()
    with connect(tmp_path / "w.duckdb") as con:
        con.executemany("INSERT INTO items (item_id, title) VALUES (?, ?)", [(i, i) for i in item_ids])
        ingest_events(con, events_dir)
        summary = ingest_impressions(
            con, events_dir / "impressions", click_window_s=WINDOW, now=t0 + 10 * WINDOW
        )
        assert summary.derived == 3
        rows = {r["impression_id"]: r for r in served_rows(con)}
        delta = con.execute("SELECT delta_seq FROM served_impressions WHERE request_id = 'r-late'").fetchall()
    assert delta == [("7",)]
    assert rows["r-early"]["clicked"] == [False, True, False], "b was clicked before the later showing"
    assert rows["r-late"]["clicked"] == [True, False, False], "a was clicked after the later showing"
    assert rows["r-other"]["clicked"] == [False, False, False], "another session's clicks are not its"
    # c's click came after the window: no impression gets it.


def test_derivation_alone_is_idempotent_and_waits_for_the_window(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as con:
        con.execute("INSERT INTO items (item_id, title) VALUES ('a', 'a')")
        con.execute(
            "INSERT INTO served_impressions (request_id, ts, endpoint, session_id, item_ids)"
            " VALUES ('r1', 1000.5, '/feed', 's', ['a'])"
        )
        assert derive_training_rows(con, click_window_s=60, now=1050.0) == 0
        assert derive_training_rows(con, click_window_s=60, now=1061.0) == 1
        assert derive_training_rows(con, click_window_s=60, now=1061.0) == 0
        assert [r["ts"] for r in served_rows(con)] == [1000]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{", "not JSON"),
        ('{"request_id": "r", "endpoint": "/feed", "ts": "x", "items": []}', "'ts'"),
        (
            '{"request_id": "r", "endpoint": "/feed", "ts": 1, "items": [{"item_id": "a", "position": 2}]}',
            "1..n",
        ),
        ('{"request_id": "", "endpoint": "/feed", "ts": 1, "items": []}', "'request_id'"),
    ],
)
def test_a_malformed_line_names_its_problem(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_impression(line)


def test_a_malformed_line_is_quarantined_and_a_torn_tail_waits(tmp_path: Path) -> None:
    directory = tmp_path / "impressions"
    directory.mkdir()
    good = '{"request_id": "r1", "endpoint": "/feed", "ts": 1000.0, "session": "s", "items": []}'
    (directory / "20261127.jsonl").write_text(f"{good}\nnot json\n" + '{"request_id": "r2"')
    with connect(tmp_path / "w.duckdb") as con:
        summary = ingest_impressions(con, directory, now=0.0)
        assert (summary.added, summary.malformed, summary.torn_tails) == (1, 1, 1)
        rules = con.execute("SELECT rule FROM quarantine WHERE table_name = 'served_impressions'").fetchall()
        assert rules == [("malformed impression: not JSON (Expecting value)",)]
        with (directory / "20261127.jsonl").open("a") as fh:
            fh.write(', "endpoint": "/feed", "ts": 1001.0, "items": []}\n')
        summary = ingest_impressions(con, directory, now=0.0)
        assert (summary.added, summary.lines) == (1, 1), "the finished line is read once"
