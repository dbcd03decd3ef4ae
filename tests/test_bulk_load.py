"""The streaming ML-25M-layout loader: same warehouse as the general loader, only new rows on
an appended night, every bad row quarantined with its line and rule."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from expectations import DataQualityError
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.bulk_load import bulk_loadable
from tasks.load import load_source
from tasks.sources.movielens import read_movielens
from tasks.synthetic_movielens import generate

MOVIES = (
    'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"American President, The (1995)",Drama\n'
)
RATINGS = (
    "userId,movieId,rating,timestamp\n"
    "1,1,3.5,1112486027\n"  # line 2: clean
    "1,2,4.0,1112484676\n"  # 3: clean
    "1,2\n"  # 4: too few fields (parse reject)
    "2,9,4.0,1112484676\n"  # 5: unknown movie
    "2,1,7.5,1112484677\n"  # 6: rating above the scale
    "2,2,bad,1112484678\n"  # 7: unparseable rating: NULL value, kept (as the general loader does)
    "3,1,3.0,1e30\n"  # 8: timestamp no int64 holds
    ",1,3.0,1112484679\n"  # 9: no user
    "1,1,3.5,1112486027\n"  # 10: the same content as line 2: one event
    "3,2,2.0,-5\n"  # 11: timestamp before min_timestamp
)


def _settings(home: Path, data: Path, **source: object) -> Settings:
    return Settings(
        home=home,
        catalogue="scale",
        source={"kind": "movielens", "path": str(data), **source},
        validation={"max_failure_share": 0.9},
    )


def _write(directory: Path, ratings: str = RATINGS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "movies.csv").write_text(MOVIES)
    (directory / "ratings.csv").write_text(ratings)
    return directory


def _state(con: duckdb.DuckDBPyConnection) -> tuple[set[tuple], set[tuple], set[tuple]]:
    events = set(
        con.execute("SELECT event_id, user_id, item_id, value, ts, label FROM interactions").fetchall()
    )
    quarantined = set(
        con.execute("SELECT row_number, rule FROM quarantine WHERE table_name = 'interactions'").fetchall()
    )
    items = set(
        con.execute("SELECT item_id, title, array_to_string(categories, '|'), year FROM items").fetchall()
    )
    return events, quarantined, items


def test_streaming_load_matches_the_general_loader(tmp_path: Path) -> None:
    data = _write(tmp_path / "ml")
    bulk, general = _settings(tmp_path / "a", data), _settings(tmp_path / "b", data)
    assert bulk_loadable(bulk)
    with open_warehouse(bulk.warehouse_path) as con:
        summary = load_source(con, bulk)
        got = _state(con)
    with open_warehouse(general.warehouse_path) as con:
        load_source(con, general, read_movielens(data))  # given data: the pandas + GX path
        con.execute("UPDATE interactions SET label = 'positive'")  # what k-core's labelling sets
        want = _state(con)
    assert got[2] == want[2]
    assert got[1] == want[1]
    assert {r[1:] for r in got[0]} == {r[1:] for r in want[0]}
    assert got[0] == want[0]  # the same content ids
    rows = {(r[1], r[2], r[3]) for r in got[0]}
    assert rows == {("1", "1", 3.5), ("1", "2", 4.0), ("2", "2", None)}
    inter = summary.tables[-1]
    assert (inter.rows_seen, inter.rows_added) == (10, 3)
    assert {r for r, _ in got[1]} == {4, 5, 6, 8, 9, 11}
    assert inter.failures["parse:out-of-range(timestamp)"] == 1


def test_appended_night_reads_only_the_new_rows(tmp_path: Path) -> None:
    data = _write(tmp_path / "ml")
    settings = _settings(tmp_path / "h", data)
    with open_warehouse(settings.warehouse_path) as con:
        load_source(con, settings)
        assert load_source(con, settings).tables[-1].rows_seen == 0  # unchanged: nothing read
        with (data / "ratings.csv").open("a") as fh:
            fh.write("4,1,5.0,1112490000\n4,3,5.0,1112490001\n")  # line 13: unknown movie
        night = load_source(con, settings).tables[-1]
        assert (night.rows_seen, night.rows_added) == (2, 1)
        assert con.execute(
            "SELECT row_number, rule FROM quarantine WHERE rule LIKE '%not_be_in_set%' ORDER BY 1"
        ).fetchall() == [
            (5, "expect_column_values_to_not_be_in_set(item_id)"),
            (13, "expect_column_values_to_not_be_in_set(item_id)"),
        ]
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 4
        assert con.execute("SELECT count(*) FROM users").fetchall()[0][0] == 3
        # items unchanged: their file is not re-read
        assert load_source(con, settings).tables[0].rows_seen == 0


def test_a_rewritten_file_is_read_whole_and_adds_only_what_is_new(tmp_path: Path) -> None:
    data = _write(tmp_path / "ml")
    settings = _settings(tmp_path / "h", data)
    with open_warehouse(settings.warehouse_path) as con:
        load_source(con, settings)
        header, *lines = RATINGS.splitlines()
        (data / "ratings.csv").write_text("\n".join([header, "5,1,1.0,1112499999", *lines]) + "\n")
        night = load_source(con, settings).tables[-1]
        assert (night.rows_seen, night.rows_added) == (11, 1)
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 4


def test_too_many_bad_rows_stop_the_load(tmp_path: Path) -> None:
    data = _write(tmp_path / "ml")
    settings = Settings(
        home=tmp_path / "h",
        catalogue="scale",
        source={"kind": "movielens", "path": str(data)},
        validation={"max_failure_share": 0.1},
    )
    with (
        open_warehouse(settings.warehouse_path) as con,
        pytest.raises(DataQualityError, match=r"ratings\.csv"),
    ):
        load_source(con, settings)
    with open_warehouse(settings.warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 0
        assert con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0] >= 6


def test_generated_data_loads_whole(tmp_path: Path) -> None:
    shape = generate(20_000, tmp_path / "gen", seed=3)
    settings = _settings(tmp_path / "h", tmp_path / "gen")
    with open_warehouse(settings.warehouse_path) as con:
        summary = load_source(con, settings)
        assert summary.added("interactions") == shape.ratings
        assert summary.added("items") == shape.items
        assert con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0] == 0
