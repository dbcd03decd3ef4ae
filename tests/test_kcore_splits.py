"""k-core is the largest fixed point; splits never put a test row before a train row."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.warehouse import connect
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, TEMPORAL, kcore_filter, make_splits


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
