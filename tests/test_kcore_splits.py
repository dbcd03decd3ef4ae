"""k-core is the largest fixed point; splits never put a test row before a train row."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasks.prepare
from storage.warehouse import connect
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, TEMPORAL, _rebuild_splits, kcore_filter, make_splits


def _load(con: duckdb.DuckDBPyConnection, edges: list[tuple[int, int]]) -> None:
    con.execute("DELETE FROM interactions")
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(edges))],
            "user_id": [f"u{u}" for u, _ in edges],
            "item_id": [f"i{i}" for _, i in edges],
            "ts": list(range(len(edges))),
            "seq": list(range(len(edges))),
        }
    )
    con.register("edges", frame)
    con.execute(
        "INSERT INTO interactions (event_id, user_id, item_id, event_type, ts, seq) "
        "SELECT event_id, user_id, item_id, 'click', ts, seq FROM edges"
    )
    con.unregister("edges")


def _is_core(edges: list[tuple[int, int]], uk: int, ik: int) -> bool:
    users = pd.Series([u for u, _ in edges]).value_counts()
    items = pd.Series([i for _, i in edges]).value_counts()
    return (not edges) or ((users >= uk).all() and (items >= ik).all())


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    return connect(tmp_path_factory.mktemp("kcore") / "w.duckdb")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edges=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), max_size=11, unique=True),
    uk=st.integers(0, 3),
    ik=st.integers(0, 3),
)
@pytest.mark.slow  # hypothesis over many generated graphs
def test_kcore_is_largest_fixed_point(
    con: duckdb.DuckDBPyConnection, edges: list[tuple[int, int]], uk: int, ik: int
) -> None:
    _load(con, edges)
    kcore_filter(con, uk, ik)
    kept = {
        (int(u[1:]), int(i[1:]))
        for u, i in con.execute(f"SELECT user_id, item_id FROM {KCORE_TABLE}").fetchall()
    }
    # Fixed point: filtering the result again removes nothing.
    assert _is_core(sorted(kept), uk, ik)
    # Largest: no subset of the input that is a valid core has more rows (brute force).
    best = max(
        (
            n
            for n in range(len(edges), -1, -1)
            for sub in combinations(edges, n)
            if _is_core(list(sub), uk, ik)
        ),
        default=0,
    )
    assert len(kept) == best


def test_kcore_zero_is_identity(con: duckdb.DuckDBPyConnection) -> None:
    _load(con, [(0, 0), (1, 1), (1, 2)])
    summary = kcore_filter(con, 0, 0)
    assert summary.rows_after == 3 and summary.iterations == 0


@pytest.mark.slow  # the whole MovieLens-100K
def test_splits_on_movielens(ml100k_dir: Path, tmp_path: Path) -> None:
    from tasks.load import insert_interactions
    from tasks.sources.movielens import read_movielens

    con = connect(tmp_path / "w.duckdb")
    insert_interactions(con, read_movielens(ml100k_dir).interactions, "ml-100k.inter")
    kcore_filter(con, 0, 0)
    sizes = make_splits(con)
    assert sizes[LEAVE_LAST_OUT] == {"train": 98_114, "valid": 943, "test": 943}
    # No test (or valid) interaction of a user is earlier than one of their training rows.
    for later in ("test", "valid"):
        bad = con.execute(
            f"""
            WITH s AS (SELECT t.user_id, t.ts, t.seq, p.part FROM {KCORE_TABLE} t
                       JOIN splits p ON p.event_id = t.event_id AND p.split_name = ?)
            SELECT count(*) FROM s a JOIN s b ON a.user_id = b.user_id
            WHERE a.part = '{later}' AND b.part = 'train' AND (a.ts, a.seq) < (b.ts, b.seq)
            """,
            [LEAVE_LAST_OUT],
        ).fetchall()[0][0]
        assert bad == 0
    # Global temporal cut: every test row is later than every train row.
    (max_train, min_test) = con.execute(
        f"""SELECT max(t.ts) FILTER (WHERE p.part = 'train'), min(t.ts) FILTER (WHERE p.part = 'test')
            FROM {KCORE_TABLE} t JOIN splits p ON p.event_id = t.event_id AND p.split_name = '{TEMPORAL}'"""
    ).fetchall()[0]
    assert max_train < min_test


def test_ties_broken_by_file_order(tmp_path: Path) -> None:
    con = connect(tmp_path / "w.duckdb")
    con.execute(
        "INSERT INTO interactions (event_id, user_id, item_id, event_type, ts, seq) VALUES "
        "('a', 'u', 'i1', 'click', 5, 0), ('b', 'u', 'i2', 'click', 5, 1), ('c', 'u', 'i3', 'click', 5, 2)"
    )
    kcore_filter(con, 0, 0)
    make_splits(con)
    parts = dict(
        con.execute(
            "SELECT event_id, part FROM splits WHERE split_name = ? ORDER BY event_id", [LEAVE_LAST_OUT]
        ).fetchall()
    )
    assert parts == {"a": "train", "b": "valid", "c": "test"}


def _add_rows(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, int, int]]) -> None:
    """(event id, user, ts, seq) rows into ``interactions``."""
    frame = pd.DataFrame(rows, columns=["event_id", "user_id", "ts", "seq"])
    con.register("added", frame)
    con.execute(
        "INSERT INTO interactions (event_id, user_id, item_id, event_type, ts, seq) "
        "SELECT event_id, user_id, 'i' || (seq % 13), 'click', ts, seq FROM added"
    )
    con.unregister("added")


def _splits(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str, str]]:
    return set(con.execute("SELECT split_name, event_id, part FROM splits").fetchall())


def _rebuilt(con: duckdb.DuckDBPyConnection, tmp_path: Path, quantile: float) -> set[tuple[str, str, str]]:
    """The splits a rebuild from nothing gives on ``con``'s k-core table."""
    fresh = connect(tmp_path / "fresh.duckdb")
    rows = con.execute(f"SELECT event_id, user_id, ts, seq FROM {KCORE_TABLE}").fetchall()
    _add_rows(fresh, rows)
    kcore_filter(fresh, 0, 0)
    _rebuild_splits(fresh, KCORE_TABLE, quantile)
    out = _splits(fresh)
    fresh.close()
    (tmp_path / "fresh.duckdb").unlink()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_night_that_only_added_rows_updates_the_splits_to_what_a_rebuild_gives(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users with one or two rows, known users with later and earlier (late-arriving) rows,
    new users, ties at the temporal cut: the updated splits equal a rebuild's, and only the
    rows whose part changed were written (the row count stays 2 x n, no duplicates)."""
    import random

    rng = random.Random(seed)
    con = connect(tmp_path / "w.duckdb")
    rows = [(f"e{j}", f"u{rng.randrange(40)}", rng.randrange(200), j) for j in range(400)]
    _add_rows(con, rows)
    kcore_filter(con, 0, 0)
    make_splits(con, KCORE_TABLE, 0.8)
    con.execute("INSERT INTO splits VALUES ('other', 'e1', 'train')")  # another split stays

    def no_rebuild(*_: object) -> None:
        raise AssertionError("an appended night rebuilt the splits")

    monkeypatch.setattr(tasks.prepare, "_rebuild_splits", no_rebuild)
    seq = 400
    for night in range(3):
        added = []
        for _ in range(rng.randrange(1, 30)):
            user = f"u{rng.randrange(55)}"  # u40.. are new users
            ts = rng.randrange(150, 260 + 20 * night) if rng.random() < 0.8 else rng.randrange(100)
            added.append((f"e{seq}", user, ts, seq))
            seq += 1
        _add_rows(con, added)
        kcore_filter(con, 0, 0)
        sizes = make_splits(con, KCORE_TABLE, 0.8)
        assert sum(sizes[LEAVE_LAST_OUT].values()) == sum(sizes[TEMPORAL].values()) == seq
        assert _splits(con) - {("other", "e1", "train")} == _rebuilt(con, tmp_path, 0.8)
        assert ("other", "e1", "train") in _splits(con)


def test_rows_that_left_the_table_rebuild_the_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    con = connect(tmp_path / "w.duckdb")
    _add_rows(con, [(f"e{j}", f"u{j % 5}", j, j) for j in range(60)])
    kcore_filter(con, 0, 0)
    make_splits(con)
    rebuilds: list[str] = []
    monkeypatch.setattr(
        tasks.prepare, "_rebuild_splits", lambda *a: rebuilds.append("rebuilt") or _rebuild_splits(*a)
    )
    con.execute("DELETE FROM interactions WHERE event_id IN ('e59', 'e58', 'e12')")
    _add_rows(con, [("e60", "u0", 61, 60), ("e61", "u9", 62, 61)])
    kcore_filter(con, 0, 0)
    make_splits(con)
    assert _splits(con) == _rebuilt(con, tmp_path, 0.9)
    assert rebuilds == ["rebuilt"]
    assert not con.execute("SELECT count(*) FROM splits WHERE event_id = 'e59'").fetchall()[0][0]


def _count_rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    rebuilds: list[str] = []
    monkeypatch.setattr(
        tasks.prepare, "_rebuild_splits", lambda *a: rebuilds.append("rebuilt") or _rebuild_splits(*a)
    )
    return rebuilds


def test_late_rows_that_lower_the_temporal_cut_update_to_what_a_rebuild_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows arriving with old timestamps move the cut down: recorded train rows above the new
    cut become test, without a rebuild."""
    con = connect(tmp_path / "w.duckdb")
    _add_rows(con, [(f"e{j}", f"u{j % 7}", 100 + j, j) for j in range(100)])
    kcore_filter(con, 0, 0)
    make_splits(con, KCORE_TABLE, 0.8)
    before = dict(con.execute("SELECT temporal_cut, row_count FROM split_state").fetchall())
    rebuilds = _count_rebuilds(monkeypatch)
    _add_rows(con, [(f"e{j}", f"u{j % 9}", j - 100, j) for j in range(100, 120)])
    kcore_filter(con, 0, 0)
    make_splits(con, KCORE_TABLE, 0.8)
    after = dict(con.execute("SELECT temporal_cut, row_count FROM split_state").fetchall())
    assert rebuilds == []
    assert next(iter(after)) < next(iter(before)) and list(after.values()) == [120]
    assert _splits(con) == _rebuilt(con, tmp_path, 0.8)


def test_other_rows_under_the_same_count_rebuild_the_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded row gone and a new one loaded: the count alone would not tell, the event-id
    hashes do."""
    con = connect(tmp_path / "w.duckdb")
    _add_rows(con, [(f"e{j}", f"u{j % 5}", j, j) for j in range(40)])
    kcore_filter(con, 0, 0)
    make_splits(con)
    rebuilds = _count_rebuilds(monkeypatch)
    con.execute("DELETE FROM interactions WHERE event_id = 'e3'")
    _add_rows(con, [("e40", "u1", 50, 40)])
    kcore_filter(con, 0, 0)
    make_splits(con)
    assert rebuilds == ["rebuilt"]
    assert _splits(con) == _rebuilt(con, tmp_path, 0.9)


def test_splits_without_a_recorded_state_are_rebuilt_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Splits recorded before ``split_state`` existed (migration 13): the next split rebuilds
    them and records the state, the night after updates."""
    con = connect(tmp_path / "w.duckdb")
    _add_rows(con, [(f"e{j}", f"u{j % 5}", j, j) for j in range(40)])
    kcore_filter(con, 0, 0)
    make_splits(con)
    con.execute("DELETE FROM split_state")
    rebuilds = _count_rebuilds(monkeypatch)
    _add_rows(con, [("e40", "u1", 50, 40)])
    kcore_filter(con, 0, 0)
    make_splits(con)
    assert rebuilds == ["rebuilt"]
    _add_rows(con, [("e41", "u2", 51, 41)])
    kcore_filter(con, 0, 0)
    make_splits(con)
    assert rebuilds == ["rebuilt"]
    assert _splits(con) == _rebuilt(con, tmp_path, 0.9)
