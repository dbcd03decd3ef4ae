"""Loading is idempotent, and broken rows end in quarantine with the rule they broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from expectations import DataQualityError
from storage.settings import Settings
from storage.warehouse import connect, table_counts
from tasks.load import load_source


def _settings(tmp_path: Path, events: Path, items: Path, **source: object) -> Settings:
    return Settings(
        home=tmp_path / "var",
        source={"kind": "csv", "path": events, "items_path": items, "value_min": 1, "value_max": 5, **source},
    )


@pytest.mark.slow  # loads MovieLens-100K twice
def test_loading_the_same_files_twice_adds_nothing(ml100k_dir: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var", source={"kind": "movielens", "path": ml100k_dir})
    con = connect(settings.warehouse_path)
    first = load_source(con, settings)
    assert (first.added("items"), first.added("interactions")) == (1682, 100_000)
    counts = table_counts(con)
    second = load_source(con, settings)
    assert (second.added("items"), second.added("interactions")) == (0, 0)
    assert table_counts(con) == counts


def test_broken_rows_are_quarantined_and_the_rest_loaded(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    good = [f"u{i % 7},i{i % 5},{1 + i % 5},{1_600_000_000 + i}" for i in range(100)]
    bad = [
        "u1,i1,9,1600000100",  # rating off the 1-5 scale
        "u1,unknown-item,3,1600000101",  # item not in the catalogue
        "u1,i2,3,99999999999",  # timestamp in the future
        "u1,i2,3",  # missing field: cannot be parsed
    ]
    events.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(good + bad) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "\n".join(f"i{i},Item {i}" for i in range(5)) + "\n")
    settings = _settings(tmp_path, events, items)
    con = connect(settings.warehouse_path)
    summary = load_source(con, settings)
    assert summary.added("interactions") == 100
    rules = dict(con.execute("SELECT row_number, rule FROM quarantine ORDER BY row_number").fetchall())
    assert set(rules) == {102, 103, 104, 105}
    assert "between(value)" in rules[102] and "item_id" in rules[103] and "between(ts)" in rules[104]
    assert rules[105].startswith("parse:")
    assert load_source(con, settings).added("interactions") == 0
    assert con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0] == 4


def test_too_many_bad_rows_stop_the_load_with_a_clear_error(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,item_id,rating,timestamp\n" + "\n".join(f"u{i},i0,7,1600000000" for i in range(10)) + "\n"
    )
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\ni0,Item\n")
    settings = _settings(tmp_path, events, items)
    con = connect(settings.warehouse_path)
    with pytest.raises(DataQualityError, match=r"events\.csv: 10 of 10 rows .*between\(value\)"):
        load_source(con, settings)
    assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 0


def test_timestamps_no_integer_can_hold_are_quarantined_by_name(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    good = [f"u{i % 7},i{i % 5},{1 + i % 5},{1_600_000_000 + i}" for i in range(100)]
    events.write_text(
        "user_id,item_id,rating,timestamp\n"
        + "\n".join([*good[:50], "u1,i1,3,1e30", "u2,i2,4,inf", "u3,i3,2,-inf", *good[50:]])
        + "\n"
    )
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "\n".join(f"i{i},Item {i}" for i in range(5)) + "\n")
    settings = _settings(tmp_path, events, items)
    con = connect(settings.warehouse_path)
    summary = load_source(con, settings)
    assert summary.added("interactions") == 100
    rows = con.execute(
        "SELECT row_number, rule, payload->>'timestamp' FROM quarantine ORDER BY row_number"
    ).fetchall()
    assert rows == [
        (52, "parse:out-of-range(timestamp)", "1e30"),
        (53, "parse:out-of-range(timestamp)", "inf"),
        (54, "parse:out-of-range(timestamp)", "-inf"),
    ]
    assert load_source(con, settings).added("interactions") == 0


def test_the_load_task_does_not_retry_bad_data() -> None:
    from prefect.states import Failed

    from flows.nightly import retry_if_transient

    for data_error in (TypeError("cannot cast"), OverflowError("too big"), KeyError("col"), ValueError("x")):
        assert retry_if_transient(None, None, Failed(data=data_error)) is False
    assert retry_if_transient(None, None, Failed(data=FileNotFoundError("gone"))) is False
    assert retry_if_transient(None, None, Failed(data=ConnectionResetError("peer"))) is True
    assert retry_if_transient(None, None, Failed(data=TimeoutError())) is True


def test_identical_rows_are_one_event_and_distinct_ones_stay_apart(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    lines = [
        "u1,i1,4,1600000000",
        "u1,i1,4,1600000000",  # the same line twice: one event
        "u1,i1,4,1600000500",  # the same rating again later: another event
        "u1,i1,2,1600000000",  # same moment, another value: another event
        "u2,i1,4,1600000000",
    ]
    events.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(lines) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\ni1,Item\n")
    settings = _settings(tmp_path, events, items)
    con = connect(settings.warehouse_path)
    assert load_source(con, settings).added("interactions") == 4
    # Loading the file again, or a copy with the duplicate removed, adds nothing.
    assert load_source(con, settings).added("interactions") == 0
    dedup = tmp_path / "dedup.csv"
    dedup.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(dict.fromkeys(lines)) + "\n")
    assert load_source(con, _settings(tmp_path, dedup, items)).added("interactions") == 0
    assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 4
