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
