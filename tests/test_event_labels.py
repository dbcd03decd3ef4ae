"""Events mean what they say: a skip or a short dwell never trains a retrieval model nor
becomes a validation or test target, whatever its place in a session; the mapping in
settings decides, and a bad mapping is refused naming the field.

Everything goes through the real path: events written as a C1 log file, ingested into a real
DuckDB warehouse, k-core filtered and split.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from storage.labels import label_of
from storage.settings import EventsSettings, Settings
from storage.warehouse import connect
from tasks.events import ingest_events
from tasks.load import load_source
from tasks.prepare import KCORE_TABLE, kcore_filter, make_splits

TS = 1_700_000_000
ITEMS = [f"i{n}" for n in range(8)]


def fresh(path: Path) -> duckdb.DuckDBPyConnection:
    con = connect(path)
    con.execute("INSERT INTO items (item_id, title) SELECT unnest(?), unnest(?)", [ITEMS, ITEMS])
    return con


def write_log(directory: Path, events: list[dict]) -> Path:
    """The events as one C1 log file, one JSON object per line."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "20231114.jsonl").open("a") as fh:
        fh.write("".join(json.dumps(e) + "\n" for e in events))
    return directory


def ev(
    n: int, session: str, item: str, kind: str, *, user: str | None = None, dwell: float | None = None
) -> dict:
    return {
        "event_id": f"{session}-{n}",
        "ts": TS + n,
        "session": session,
        "user_id": user,
        "item_id": item,
        "event": kind,
        "dwell_s": dwell,
    }


def reader_log() -> list[dict]:
    """A signed-in reader and an anonymous one, each ending their session on a skip."""
    user = [("i1", "click"), ("i2", "click"), ("i3", "like"), ("i4", "skip")]
    anon = [("i1", "click"), ("i2", "share"), ("i5", "click"), ("i6", "click"), ("i4", "skip")]
    events = [ev(n, "s-user", item, kind, user="u1") for n, (item, kind) in enumerate(user)]
    events += [ev(n, "s-anon", item, kind) for n, (item, kind) in enumerate(anon)]
    events += [
        ev(0, "s-dwell", "i1", "dwell", user="u2", dwell=45.0),
        ev(1, "s-dwell", "i2", "dwell", user="u2", dwell=5.0),
        ev(2, "s-dwell", "i3", "dwell", user="u2"),
    ]
    return events


def targets(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], str]:
    """(user, part) → the held-out item of the leave-last-out split."""
    rows = con.execute(
        "SELECT k.user_id, s.part, k.item_id FROM splits s JOIN interactions_kcore k USING (event_id) "
        "WHERE s.split_name = 'leave_last_out' AND s.part <> 'train'"
    ).fetchall()
    return {(u, p): i for u, p, i in rows}


def test_label_of_follows_the_mapping() -> None:
    assert [label_of(e, None) for e in ("click", "like", "share", "skip")] == [
        "positive",
        "positive",
        "positive",
        "negative",
    ]
    assert label_of("dwell", 30.0) == "positive" and label_of("dwell", 29.9) == "weak_negative"
    assert label_of("dwell", None) == "weak_negative"
    assert label_of("dwell", 12.0, EventsSettings(dwell_positive_s=10)) == "positive"
    assert label_of("like", None, EventsSettings(labels={"like": "negative"})) == "negative"
    with pytest.raises(ValueError, match="teleport"):
        label_of("teleport", None)


def test_a_skip_never_trains_nor_becomes_a_target_even_as_the_last_event(tmp_path: Path) -> None:
    con = fresh(tmp_path / "w.duckdb")
    summary = ingest_events(con, write_log(tmp_path / "events", reader_log()))
    assert summary.added == 12
    labels = dict(con.execute("SELECT event_id, label FROM interactions").fetchall())
    assert labels["s-user-3"] == labels["s-anon-4"] == "negative"  # the skips
    assert labels["s-dwell-0"] == "positive"  # 45 s
    assert labels["s-dwell-1"] == labels["s-dwell-2"] == "weak_negative"  # 5 s, no duration
    assert all(v is not None for v in labels.values())

    result = kcore_filter(con, 0, 0)
    assert result.not_positive == 4 and result.held_back == 0  # the anonymous reader has 4 positives
    kcore = con.execute(f"SELECT event_type, label, dwell_s FROM {KCORE_TABLE}").fetchall()
    assert {e for e, _, _ in kcore} == {"click", "like", "share", "dwell"}
    assert {label for _, label, _ in kcore} == {"positive"}
    assert [d for e, _, d in kcore if e == "dwell"] == [45.0]

    make_splits(con, KCORE_TABLE)
    held_out = targets(con)
    assert held_out[("u1", "test")] == "i3" and held_out[("u1", "valid")] == "i2"  # the like, not the skip
    assert held_out[("session:s-anon", "test")] == "i6"
    skipped_in_splits = con.execute(
        "SELECT count(*) FROM splits JOIN interactions USING (event_id) WHERE interactions.label <> 'positive'"
    ).fetchall()[0][0]
    assert skipped_in_splits == 0
    # The negatives stay in interactions, for the ranker.
    assert con.execute("SELECT count(*) FROM interactions WHERE event_type = 'skip'").fetchall()[0][0] == 2


def test_the_mapping_in_settings_decides(tmp_path: Path) -> None:
    con = fresh(tmp_path / "w.duckdb")
    like_is_negative = EventsSettings(labels={"like": "negative"}, dwell_positive_s=5.0)
    ingest_events(con, write_log(tmp_path / "events", reader_log()), events=like_is_negative)
    labels = dict(con.execute("SELECT event_id, label FROM interactions").fetchall())
    assert labels["s-user-2"] == "negative" and labels["s-user-0"] == "positive"
    assert labels["s-dwell-1"] == "positive"  # 5 s reaches the lowered threshold
    kcore_filter(con, 0, 0, events=like_is_negative)
    kept = {r[0] for r in con.execute(f"SELECT event_id FROM {KCORE_TABLE}").fetchall()}
    assert "s-user-2" not in kept and "s-dwell-1" in kept

    # The mapping is applied again when the training data is built: back to the defaults,
    # the like trains again and the 5-second dwell does not, without re-ingesting anything.
    kcore_filter(con, 0, 0)
    kept = {r[0] for r in con.execute(f"SELECT event_id FROM {KCORE_TABLE}").fetchall()}
    assert "s-user-2" in kept and "s-dwell-1" not in kept
    assert con.execute("SELECT label FROM interactions WHERE event_id = 's-user-2'").fetchall() == [
        ("positive",)
    ]


def test_a_skip_in_a_batch_file_is_a_negative_and_ratings_stay_positive(tmp_path: Path) -> None:
    csv = tmp_path / "log.csv"
    csv.write_text(
        "user_id,item_id,event_type,timestamp\n"
        "a,x,click,1700000000\na,y,click,1700000001\na,z,skip,1700000002\n"
        "b,x,purchase,1700000003\nb,z,purchase,1700000004\n"
    )
    config = Settings(home=tmp_path / "home", source={"kind": "csv", "path": csv})
    con = connect(tmp_path / "w.duckdb")
    load_source(con, config)
    kcore_filter(con, 0, 0, events=config.events)
    make_splits(con, KCORE_TABLE)
    assert dict(con.execute("SELECT event_type, label FROM interactions").fetchall()) == {
        "click": "positive",
        "skip": "negative",
        "purchase": "positive",
    }
    assert targets(con)[("a", "test")] == "y"
    assert con.execute(f"SELECT count(*) FROM {KCORE_TABLE} WHERE event_type = 'skip'").fetchall()[0][0] == 0


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"teleport": "positive"}, "events.labels.teleport"),
        ({"like": "good"}, "events.labels.like"),
        ({"dwell": "positive"}, "events.dwell_positive_s"),
    ],
)
def test_a_bad_mapping_is_refused_naming_the_field(labels: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        Settings(events={"labels": labels})


def test_the_mapping_can_be_set_from_the_config_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "recflow.toml"
    config.write_text('[events]\nlabels = { share = "weak_negative" }\ndwell_positive_s = 12\n')
    monkeypatch.setenv("RECFLOW_CONFIG", str(config))
    loaded = Settings()
    assert loaded.events.labels["share"] == "weak_negative" and loaded.events.labels["skip"] == "negative"
    assert loaded.events.dwell_positive_s == 12
    config.write_text('[events]\nlabels = { skipp = "negative" }\n')
    with pytest.raises(ValidationError, match=r"events\.labels\.skipp"):
        Settings()


KINDS = st.sampled_from(["click", "like", "share", "skip", "dwell"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sessions=st.lists(
        st.lists(st.tuples(st.sampled_from(ITEMS), KINDS, st.floats(0, 120)), min_size=1, max_size=7),
        min_size=1,
        max_size=4,
    ),
    threshold=st.floats(0, 60),
)
@pytest.mark.slow  # hypothesis over many generated event logs
def test_no_log_turns_a_skip_or_short_dwell_into_a_target(
    tmp_path_factory: pytest.TempPathFactory, sessions: list[list[tuple[str, str, float]]], threshold: float
) -> None:
    root = tmp_path_factory.mktemp("labels")
    con = fresh(root / "w.duckdb")
    events = [
        ev(n, f"s{s}", item, kind, user=f"u{s}" if s % 2 else None, dwell=dwell if kind == "dwell" else None)
        for s, session in enumerate(sessions)
        for n, (item, kind, dwell) in enumerate(session)
    ]
    rule = EventsSettings(train_from="all", dwell_positive_s=threshold)
    ingest_events(con, write_log(root / "events", events), events=rule)
    kcore_filter(con, 0, 0, events=rule)
    make_splits(con, KCORE_TABLE)
    bad = con.execute(
        f"SELECT count(*) FROM {KCORE_TABLE} WHERE event_type = 'skip' "
        "OR (event_type = 'dwell' AND (dwell_s IS NULL OR dwell_s < $t))",
        {"t": threshold},
    ).fetchall()[0][0]
    assert bad == 0
    positives = [
        e["event_id"]
        for e in events
        if e["event"] in ("click", "like", "share") or (e["event"] == "dwell" and e["dwell_s"] >= threshold)
    ]
    kept = sorted(r[0] for r in con.execute(f"SELECT event_id FROM {KCORE_TABLE}").fetchall())
    assert kept == sorted(positives)
    in_splits = con.execute(
        "SELECT count(DISTINCT i.event_type) FILTER (WHERE i.label <> 'positive') FROM splits s "
        "JOIN interactions i USING (event_id)"
    ).fetchall()[0][0]
    assert in_splits == 0
    con.close()


def test_the_session_store_weighs_events_by_the_same_mapping(tmp_path: Path) -> None:
    """Online, a skip or a short dwell never joins the session's history; the mapping decides."""
    from serving.events import Event
    from serving.sessions import SessionStore

    store = SessionStore(tmp_path / "sessions.sqlite")
    for item, event, dwell in [
        ("a", "click", None),
        ("b", "skip", None),
        ("c", "dwell", 5.0),
        ("d", "dwell", 45.0),
    ]:
        store.record(Event.new(session="s", item_id=item, event=event, dwell_s=dwell))
    state = store.state("s")
    assert state.positives == ["a", "d"]
    assert [w > 0 for _, _, w in state.events] == [True, False, False, True]

    relabelled = SessionStore(tmp_path / "other.sqlite", events=EventsSettings(labels={"click": "negative"}))
    relabelled.record(Event.new(session="s", item_id="a", event="click"))
    assert relabelled.state("s").positives == []
