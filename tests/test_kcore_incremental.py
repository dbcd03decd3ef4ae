"""Without k-core filtering, a night that only added rows appends them; anything else rebuilds."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from storage.warehouse import connect
from tasks.prepare import KCORE_TABLE, kcore_filter


def _add(con: duckdb.DuckDBPyConnection, start: int, n: int) -> None:
    con.execute(
        "INSERT INTO interactions (event_id, user_id, item_id, event_type, value, ts, seq, label) "
        "SELECT 'e' || i, 'u' || (i % 7), 'i' || (i % 11), 'rating', 4.0, 1000 + i, i, 'positive' "
        "FROM range(?, ?) t(i)",
        [start, start + n],
    )


def _kcore_rows(con: duckdb.DuckDBPyConnection) -> set[tuple]:
    return set(con.execute(f"SELECT event_id, user_id, item_id, ts FROM {KCORE_TABLE}").fetchall())


def _admitted(con: duckdb.DuckDBPyConnection) -> set[tuple]:
    return set(
        con.execute(
            "SELECT event_id, user_id, item_id, ts FROM interactions WHERE label = 'positive'"
        ).fetchall()
    )


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    return connect(tmp_path / "w.duckdb")


def test_appended_rows_only(con: duckdb.DuckDBPyConnection) -> None:
    _add(con, 0, 50)
    first = kcore_filter(con, 0, 0)
    assert first.appended is None and first.rows_after == 50
    _add(con, 50, 5)
    second = kcore_filter(con, 0, 0)
    assert second.appended == 5 and second.rows_after == 55
    assert _kcore_rows(con) == _admitted(con)
    assert kcore_filter(con, 0, 0).appended == 0  # nothing new: nothing copied


def test_a_row_that_left_the_admitted_set_rebuilds(con: duckdb.DuckDBPyConnection) -> None:
    _add(con, 0, 30)
    kcore_filter(con, 0, 0)
    con.execute("UPDATE interactions SET label = 'negative' WHERE event_id = 'e3'")
    _add(con, 30, 2)
    again = kcore_filter(con, 0, 0)
    assert again.appended is None and again.rows_after == 31
    assert _kcore_rows(con) == _admitted(con)


def test_replaced_rows_rebuild(con: duckdb.DuckDBPyConnection) -> None:
    _add(con, 0, 20)
    kcore_filter(con, 0, 0)
    con.execute("DELETE FROM interactions")
    _add(con, 100, 4)
    again = kcore_filter(con, 0, 0)
    assert again.appended is None
    assert _kcore_rows(con) == _admitted(con) and len(_admitted(con)) == 4


def test_k_core_filtering_always_rebuilds(con: duckdb.DuckDBPyConnection) -> None:
    _add(con, 0, 40)
    kcore_filter(con, 2, 2)
    _add(con, 40, 3)
    assert kcore_filter(con, 2, 2).appended is None
