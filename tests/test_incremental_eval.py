"""An incremental night's evaluation of a reused fit equals a full re-evaluation.

Two nights on a real DuckDB warehouse: the first evaluates a fitted ItemKNN and keeps its
per-user cache, the second (some users with one new event, some with several, new users)
evaluates the same fit with that cache and without it. Few neighbours leave many items
scored exactly 0 or tied, so lists reach past their distinct scores and the popularity
tie-break, which moves between the nights, decides their order.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from models.baselines import RecencyItemKNNModel
from storage.warehouse import connect
from tasks.incremental import known_entries, save_eval_cache
from tasks.prepare import KCORE_TABLE, kcore_filter, make_splits
from tasks.training import (
    REPORT_LIST_K,
    SplitData,
    TrainResult,
    eval_key,
    evaluate_with_lists,
    load_split_data,
    relist,
    sample_eval_users,
)

N_ITEMS = 120
NEIGHBORS = 20


def _insert(con: duckdb.DuckDBPyConnection, rows: list[tuple[int, int, int]], first: int) -> None:
    """(user, item, ts) rows as click events with ids from ``first`` on."""
    frame = pd.DataFrame(
        {
            "event_id": [f"e{first + n}" for n in range(len(rows))],
            "user_id": [f"u{u}" for u, _, _ in rows],
            "item_id": [f"i{i}" for _, i, _ in rows],
            "ts": [t for _, _, t in rows],
            "seq": [first + n for n in range(len(rows))],
        }
    )
    con.register("rows_df", frame)
    con.execute(
        "INSERT INTO interactions (event_id, user_id, item_id, event_type, ts, seq) "
        "SELECT event_id, user_id, item_id, 'click', ts, seq FROM rows_df"
    )
    con.unregister("rows_df")


def _night(con: duckdb.DuckDBPyConnection) -> SplitData:
    kcore_filter(con, 0, 0)
    make_splits(con, KCORE_TABLE, 0.9)
    data = load_split_data(con)
    sample_eval_users(data, 150, seed=3)  # a sample, as at scale: it must stay put
    return data


def _evaluate(
    model: RecencyItemKNNModel, data: SplitData, known: dict | None = None, workers: int = 1
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    detail: dict[str, dict] = {"valid": {}, "test": {}}
    metrics = {}
    for part in ("valid", "test"):
        metrics[part], detail[part]["lists"] = evaluate_with_lists(
            model,
            data,
            part,  # type: ignore[arg-type]
            [5, 10, 20],
            batch_size=32,
            list_k=REPORT_LIST_K,
            known=known,
            detail=detail[part],
            workers=workers,
        )
    return metrics, detail


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = connect(tmp_path / "w.duckdb")
    con.execute(f"INSERT INTO items (item_id) SELECT 'i' || range FROM range({N_ITEMS})")
    return con


def test_the_cached_evaluation_of_a_reused_fit_is_a_full_one(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    popular = np.arange(1, N_ITEMS + 1) ** -1.0
    seen: dict[int, set[int]] = {}

    def events(user: int, n: int, start: int) -> list[tuple[int, int, int]]:
        left = np.array(sorted(set(range(N_ITEMS)) - seen.setdefault(user, set())))
        items = rng.choice(left, size=n, replace=False, p=popular[left] / popular[left].sum())
        seen[user].update(int(i) for i in items)
        return [(user, int(i), start + k) for k, i in enumerate(items)]

    night1 = [row for u in range(300) for row in events(u, int(rng.integers(2, 25)), 1_000 * u)]
    _insert(con, night1, 0)
    data1 = _night(con)
    model = RecencyItemKNNModel(neighbors=NEIGHBORS, decay=0.6)
    model.fit(data1.matrix(("train",)), data1.train)
    metrics1, detail1 = _evaluate(model, data1)
    cache = save_eval_cache(
        tmp_path / "eval_cache.npz",
        data1,
        TrainResult(
            "r", "itemknn-recency", {}, metrics1["valid"], metrics1["test"], 0.0, model, eval_detail=detail1
        ),
    )
    assert cache is not None
    known = known_entries(cache)
    assert len(known) == sum(len(d["users"]) for d in detail1.values())

    # tonight: one new event for some users, several for others, nothing for the rest, new users
    new_counts = rng.choice([0, 1, 3], size=300, p=[0.3, 0.4, 0.3])
    tonight = [row for u, k in enumerate(new_counts) if k for row in events(u, int(k), 10**6 + 1_000 * u)]
    tonight += [row for u in range(300, 320) for row in events(u, 5, 2 * 10**6 + 1_000 * u)]
    _insert(con, tonight, len(night1))
    data2 = _night(con)
    assert list(data2.item_ids) == list(data1.item_ids)  # the same catalogue: a reusable fit

    fresh, fresh_detail = _evaluate(model, data2)
    cached, cached_detail = _evaluate(model, data2, known, workers=2)
    assert cached == fresh
    for part in ("valid", "test"):
        assert np.array_equal(cached_detail[part]["lists"], fresh_detail[part]["lists"]), part
        assert np.array_equal(cached_detail[part]["keys"], fresh_detail[part]["keys"]), part
        assert np.array_equal(cached_detail[part]["list_scores"], fresh_detail[part]["list_scores"]), part
        for a, b in zip(cached_detail[part]["ranks"], fresh_detail[part]["ranks"], strict=True):
            assert np.array_equal(a, b), part

    evaluated = {p: len(d["users"]) for p, d in cached_detail.items()}
    scored = {p: d["scored"] for p, d in cached_detail.items()}
    assert 0 < scored["valid"] < evaluated["valid"] and 0 < scored["test"] < evaluated["test"], (
        scored,
        evaluated,
    )
    # a user with one new event is validated tonight as they were tested last night: more
    # valid entries are reused than users left untouched
    index = {u: n for n, u in enumerate(data2.user_ids)}
    untouched = {index[f"u{u}"] for u in np.flatnonzero(new_counts == 0)}
    assert evaluated["valid"] - scored["valid"] > len(
        untouched & set(cached_detail["valid"]["users"].tolist())
    )
    # both ways a cached list meets tonight's tie-break: re-ordered (two of its items tie), or
    # scored again (its cut ties with an item left out)
    reused = [
        (part, pos)
        for part, d in cached_detail.items()
        for pos, (u, key) in enumerate(zip(d["users"], d["keys"], strict=True))
        if (str(data2.user_ids[u]), int(key)) in known
    ]
    width = cached_detail["test"]["lists"].shape[1]
    ties_inside = [
        np.any(np.diff(cached_detail[part]["list_scores"][pos, :width]) == 0) for part, pos in reused
    ]
    assert any(ties_inside)
    assert sum(evaluated.values()) - sum(scored.values()) < len(reused)


def test_relist_refuses_a_cut_through_tied_scores_and_reorders_ties() -> None:
    tiebreak = np.array([4, 3, 2, 1, 0])  # item 4 is the most popular tonight
    items = np.array([0, 1, 2, -1])
    # a tie at the cut (item 2's score is also the best one left out): score again
    assert relist(items, np.array([3.0, 2.0, 1.0, 1.0, -np.inf], np.float32), 3, tiebreak) is None
    # a shorter cached list cannot give a longer one
    assert relist(items[:2], np.array([3.0, 2.0, 1.0], np.float32), 3, tiebreak) is None
    # ties inside the list follow tonight's tie-break; fewer candidates keep their padding
    scores = np.array([2.0, 2.0, 1.0, -np.inf, -np.inf], np.float32)
    assert relist(items, scores, 4, tiebreak).tolist() == [1, 0, 2, -1]  # type: ignore[union-attr]
    assert relist(items, scores, 2, tiebreak).tolist() == [1, 0]  # type: ignore[union-attr]


def test_eval_key_sees_order_targets_and_the_boundary_between_them() -> None:
    a = np.array([3, 1, 2])
    assert eval_key(a, np.array([7])) == eval_key(a.copy(), np.array([7]))
    assert eval_key(a, np.array([7])) != eval_key(a[[1, 0, 2]], np.array([7]))
    assert eval_key(a, np.array([7])) != eval_key(a, np.array([8]))
    assert eval_key(a, np.array([7])) != eval_key(np.array([3, 1]), np.array([2, 7]))


def test_the_live_vectors_and_index_are_reused_only_for_the_same_items_and_settings(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    from storage.artifacts import ArtifactStore
    from storage.settings import Settings
    from tasks.indexing import build_index
    from tasks.train_models import live_vectors, vectors_key

    settings = Settings(home=str(tmp_path / "var"))
    data = SplitData(
        "leave_last_out",
        np.array(["u0"], dtype=object),
        np.array([f"i{i}" for i in range(N_ITEMS)], dtype=object),
        [],
        [],
        [],
    )
    vectors = np.random.default_rng(0).normal(size=(N_ITEMS, 8)).astype(np.float32)
    index = build_index(vectors, [str(i) for i in data.item_ids], settings.index)
    store = ArtifactStore(tmp_path / "bundles")
    key = vectors_key(con, settings)
    assert key is not None and vectors_key(con, settings) == key
    with store.staging() as staged:
        np.save(staged / "item_vectors.npy", vectors)
        index.save(staged / "index")
        live = store.commit(staged, {"vectors_key": key})

    got = live_vectors(store, key, data)
    assert got is not None and got[2] == live
    assert np.array_equal(got[0], vectors) and list(got[1].item_ids) == list(index.item_ids)
    # another item order, another text, another precision: nothing reused
    shuffled = SplitData("leave_last_out", data.user_ids, data.item_ids[::-1].copy(), [], [], [])
    assert live_vectors(store, key, shuffled) is None
    con.execute("UPDATE items SET title = 'a new title' WHERE item_id = 'i3'")
    assert vectors_key(con, settings) != key
    con.execute("UPDATE items SET title = NULL WHERE item_id = 'i3'")
    assert vectors_key(con, settings) == key
    bf16 = Settings(home=str(tmp_path / "var"), embedding={"precision": "bfloat16"})
    assert vectors_key(con, bf16) != key
    assert vectors_key(con, Settings(home=str(tmp_path / "var"), embedding={"enabled": False})) is None
