"""The model stages at scale: columnar split loading, sampled evaluation scored once, the
ItemKNN fit in float32 blocks, torch candidates' size limit. Real DuckDB, real MovieLens
slices; the incremental nightly itself is in ``test_flow_incremental.py``."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from flows.nightly import over_size_limit, untrainable
from models.baselines import ItemKNNModel
from storage.warehouse import open_warehouse
from tasks.eval_report import recommendation_lists
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, make_splits
from tasks.training import (
    REPORT_LIST_K,
    SplitData,
    evaluate,
    load_split_data,
    protocol,
    sample_eval_users,
    train_and_evaluate,
)


def _reference_split(con: duckdb.DuckDBPyConnection, restrict: bool) -> SplitData:
    """The row-by-row reading ``load_split_data`` replaced: the definition it must match."""
    item_sql = f"SELECT DISTINCT item_id FROM {KCORE_TABLE}" if restrict else "SELECT item_id FROM items"
    item_ids = [
        r[0]
        for r in con.execute(
            f"SELECT item_id FROM ({item_sql}) ORDER BY TRY_CAST(item_id AS BIGINT) NULLS LAST, item_id"
        ).fetchall()
    ]
    index = {item: i for i, item in enumerate(item_ids)}
    rows = con.execute(
        f"SELECT t.user_id, t.item_id, s.part FROM {KCORE_TABLE} t JOIN splits s "
        "ON s.event_id = t.event_id AND s.split_name = ? "
        "ORDER BY TRY_CAST(t.user_id AS BIGINT) NULLS LAST, t.user_id, t.ts, t.seq",
        [LEAVE_LAST_OUT],
    ).fetchall()
    users: list[str] = []
    parts: dict[str, list[list[int]]] = {"train": [], "valid": [], "test": []}
    for user, item, part in rows:
        if not users or users[-1] != user:
            users.append(user)
            for p in parts.values():
                p.append([])
        if item in index:
            parts[part][-1].append(index[item])
    arrays = {p: [np.asarray(x, dtype=np.int64) for x in v] for p, v in parts.items()}
    return SplitData(
        LEAVE_LAST_OUT,
        np.array(users, dtype=object),
        np.array(item_ids, dtype=object),
        arrays["train"],
        arrays["valid"],
        arrays["test"],
    )


@pytest.fixture
def mixed_warehouse(tmp_path: Path) -> Path:
    """Numeric and text ids (ordered numbers first), equal timestamps (file order decides),
    an item missing from ``items`` and one never interacted with."""
    path = tmp_path / "w.duckdb"
    rng = np.random.default_rng(3)
    users = ["10", "9", "u-b", "u-a", "100", "2"]
    items = ["5", "40", "x", "7", "300", "never"]
    with open_warehouse(path) as con:
        for item in items:
            con.execute("INSERT INTO items (item_id) VALUES (?)", [item])
        rows = []
        seq = 0
        for user in users:
            for _ in range(int(rng.integers(1, 9))):
                item = str(rng.choice(["5", "40", "x", "7", "300", "ghost"]))
                rows.append((f"e{seq}", user, item, int(rng.integers(0, 4)), seq))
                seq += 1
        con.execute(
            f"CREATE TABLE {KCORE_TABLE} (event_id VARCHAR, user_id VARCHAR, item_id VARCHAR, ts BIGINT, seq BIGINT)"
        )
        con.executemany(f"INSERT INTO {KCORE_TABLE} VALUES (?, ?, ?, ?, ?)", rows)
        make_splits(con, KCORE_TABLE)
    return path


@pytest.mark.parametrize("restrict", [False, True])
def test_load_split_data_matches_the_row_by_row_reading(mixed_warehouse: Path, restrict: bool) -> None:
    with duckdb.connect(str(mixed_warehouse), read_only=True) as con:
        got = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=restrict)
        want = _reference_split(con, restrict)
    assert list(got.user_ids) == list(want.user_ids) == ["2", "9", "10", "100", "u-a", "u-b"]
    assert list(got.item_ids) == list(want.item_ids)
    assert ("never" in list(got.item_ids)) is not restrict
    for part in ("train", "valid", "test"):
        for mine, theirs in zip(getattr(got, part), getattr(want, part), strict=True):
            assert mine.dtype == np.int64
            np.testing.assert_array_equal(mine, theirs)
    assert got.n_interactions == sum(len(h) for h in got.histories(("train", "valid", "test")))


def test_sampled_evaluation_is_fixed_recorded_and_scored_once(ml100k_slice: Path, tmp_path: Path) -> None:
    from tests.slice_data import load_slice

    data = load_slice(ml100k_slice, tmp_path / "home")
    ks = [5, 10]
    full = train_and_evaluate(data, "itemknn-recency", {}, ks)

    sample_eval_users(data, data.n_users, seed=1)  # a cap the data do not reach: every user
    assert data.eval_users is None and "user_sample" not in protocol(data, ks, {})
    assert evaluate(full.model, data, "test", ks) == full.test

    sample_eval_users(data, 50, seed=7)
    assert data.eval_users is not None and len(data.eval_users) == 50
    assert all(len(data.test[u]) for u in data.eval_users)
    first = data.eval_users.copy()
    sample_eval_users(data, 50, seed=7)
    np.testing.assert_array_equal(data.eval_users, first)  # the same users every night
    assert protocol(data, ks, {})["user_sample"] == {"users": 50, "of": 120, "seed": 7}

    sampled = train_and_evaluate(data, "itemknn-recency", {}, ks)
    assert sampled.valid["users_evaluated"] == sampled.test["users_evaluated"] == 50
    assert sampled.test["ndcg@10"] != full.test["ndcg@10"]
    # the lists evaluation kept are the report's, so the report scores nobody again
    assert sampled.test_lists is not None and sampled.test_lists.shape == (50, REPORT_LIST_K)
    np.testing.assert_array_equal(
        sampled.test_lists, recommendation_lists(sampled.model, data, "test", REPORT_LIST_K)
    )
    with pytest.raises(ValueError, match="max_users"):
        sample_eval_users(data, 0, seed=7)


def test_itemknn_blocks_give_the_exact_top_k_cosine() -> None:
    """Any block size gives the brute-force cosine neighbourhoods (ties: lower index)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((300, 40)) < 0.15).astype(np.float32))
    dense = x.toarray().astype(np.float64)
    norms = np.sqrt(dense.sum(axis=0))
    cos = dense.T @ dense / (np.outer(norms, norms) + 2.0 + 1e-9)
    np.fill_diagonal(cos, 0.0)
    for chunk in (7, 40, 1024):
        model = ItemKNNModel(neighbors=5, shrink=2.0, chunk=chunk)
        model.fit(x, [])
        assert model.similarity.dtype == np.float32
        sim = model.similarity.toarray()
        for i in range(40):
            order = np.lexsort((np.arange(40), -cos[i]))
            want = [j for j in order[:5] if cos[i, j] > 0]
            assert sorted(np.flatnonzero(sim[i])) == sorted(want)
            np.testing.assert_allclose(sim[i, want], cos[i, want], rtol=1e-5)


def test_torch_candidates_are_skipped_above_their_size_limit(ml100k_slice: Path, tmp_path: Path) -> None:
    from tests.slice_data import load_slice

    data = load_slice(ml100k_slice, tmp_path / "home")
    n = data.n_interactions
    why = untrainable("two-tower-knn", data, n - 1)
    assert why is not None and f"{n:,} interactions" in why and "model.torch_max_interactions" in why
    assert untrainable("two-tower-knn", data, n) is None
    assert untrainable("two-tower-knn", data, None) is None
    assert untrainable("itemknn-recency", data, 1) is None  # not a torch model
    # what the nightly knows before reading item features: the size limit, not the clicks
    # (NRMS's impressions come with the features, so it must not be judged without them)
    assert over_size_limit("two-tower-knn", data, n - 1) == why
    data.impressions = None  # as in the nightly before load_item_features reads them
    assert untrainable("nrms", data, None) is not None
    assert over_size_limit("nrms", data, None) is None and over_size_limit("nrms", data, n) is None


def test_load_split_data_reads_only_the_recorded_rows_of_a_table_that_changed(mixed_warehouse: Path) -> None:
    """Rows added after the split was recorded have no part: they are left out (as the join
    on every event id leaves them), not read as train."""
    with open_warehouse(mixed_warehouse) as con:
        want = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE)
        con.execute(
            f"INSERT INTO {KCORE_TABLE} VALUES ('late', '2', '5', 9, 999), ('new', 'u-new', '7', 9, 1000)"
        )
        got = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE)
    assert list(got.user_ids) == list(want.user_ids)
    assert got.n_interactions == want.n_interactions
    for part in ("train", "valid", "test"):
        for mine, theirs in zip(getattr(got, part), getattr(want, part), strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_flat_histories_and_item_user_counts_match_their_per_user_definition() -> None:
    """``SplitData.flat`` (and ``histories``, ``matrix``, ``item_users`` on it) against the
    per-user concatenation they replaced, with repeated items within and across parts and
    users with empty parts."""
    from models.base import histories_to_csr
    from tasks.training import item_users

    rng = np.random.default_rng(3)
    n_users, n_items = 40, 9

    def part(max_len: int) -> list[np.ndarray]:
        return [
            rng.integers(0, n_items, rng.integers(0, max_len + 1)).astype(np.int64) for _ in range(n_users)
        ]

    data = SplitData(
        LEAVE_LAST_OUT,
        np.array([f"u{u}" for u in range(n_users)]),
        np.array([f"i{i}" for i in range(n_items)]),
        part(6),
        part(2),
        part(2),
    )
    for parts in (("train",), ("train", "valid"), ("train", "valid", "test")):
        expected = [np.concatenate([getattr(data, p)[u] for p in parts]) for u in range(n_users)]
        assert all(np.array_equal(a, b) for a, b in zip(data.histories(parts), expected, strict=True))
        reference = histories_to_csr(expected, n_items)
        assert (data.matrix(parts) != reference).nnz == 0
        counts = item_users(data, parts)
        assert counts.dtype == np.float32
        assert np.array_equal(counts, np.asarray(reference.sum(axis=0)).ravel())
        users = [3, 17, 39]
        picked = data.histories_of(users, parts)
        assert all(np.array_equal(picked[u], expected[u]) for u in users)
