"""Simulated readers: reproducible logs, clicks that follow tastes, and a log the warehouse keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage.warehouse import open_warehouse, scalar
from tasks.impressions import insert_impressions, read_impressions
from tasks.news_eval import demo_items
from tasks.personas import (
    PersonaConfig,
    impressions_to_events,
    make_personas,
    simulate_impressions,
    split_by_time,
    topic_keywords,
)

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
CONFIG = PersonaConfig(personas=60, seed=11)


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    """Two days of the demo feeds' stories (contract C3)."""
    stories = demo_items(seed=7, now=NOW)
    return stories[stories["published"] >= NOW - timedelta(days=2)].reset_index(drop=True)


@pytest.fixture(scope="module")
def log(items: pd.DataFrame) -> pd.DataFrame:
    return simulate_impressions(items, config=CONFIG, progress=False)


def test_same_seed_same_log_other_seed_other_log(items: pd.DataFrame, log: pd.DataFrame) -> None:
    again = simulate_impressions(items, config=CONFIG, progress=False)
    pd.testing.assert_frame_equal(log, again)
    other = simulate_impressions(items, config=PersonaConfig(personas=60, seed=12), progress=False)
    assert not log["shown"].equals(other["shown"])


def test_log_shape_and_consistency(items: pd.DataFrame, log: pd.DataFrame) -> None:
    assert list(log.columns) == ["impression_id", "user_id", "ts", "history", "shown", "clicked", "dwell_s"]
    assert log["impression_id"].is_unique
    assert log["ts"].is_monotonic_increasing
    published = dict(zip(items["item_id"], items["published"].map(lambda d: int(d.timestamp())), strict=True))
    clicks_so_far: dict[str, list[str]] = {}
    for row in log.itertuples():
        assert len(row.shown) == len(row.clicked) == len(row.dwell_s) == CONFIG.slate_size
        assert len(set(row.shown)) == len(row.shown)
        for item, clicked, dwell in zip(row.shown, row.clicked, row.dwell_s, strict=True):
            assert row.ts - CONFIG.window_h * 3600 <= published[item] <= row.ts  # only recent stories
            assert (dwell > 0) == clicked  # dwell only on clicks
        # history = this reader's earlier clicks, oldest first
        assert row.history == clicks_so_far.get(row.user_id, [])[-CONFIG.max_history :]
        clicks_so_far.setdefault(row.user_id, []).extend(
            i for i, c in zip(row.shown, row.clicked, strict=True) if c
        )
    rate = sum(sum(c) for c in log["clicked"]) / sum(len(c) for c in log["clicked"])
    assert 0.05 < rate < 0.4


def test_clicks_follow_tastes_and_words(items: pd.DataFrame, log: pd.DataFrame) -> None:
    personas = {p.user_id: p for p in make_personas(items, CONFIG)}
    topic = dict(zip(items["item_id"], items["topic"], strict=True))
    liked, other = [], []
    for row in log.itertuples():
        taste = personas[row.user_id].taste
        favourite = max(taste, key=taste.__getitem__)
        for item, clicked in zip(row.shown, row.clicked, strict=True):
            (liked if topic[item] == favourite else other).append(clicked)
    assert np.mean(liked) > 2 * np.mean(other)
    # Favourite words come from the real texts of each persona's topics.
    words = {w for ws in topic_keywords(items).values() for w in ws}
    assert all(set(p.keywords) <= words and p.keywords for p in personas.values())


def test_split_events_and_bad_input(items: pd.DataFrame, log: pd.DataFrame) -> None:
    train, test = split_by_time(log, 0.25)
    assert len(train) + len(test) == len(log)
    assert train["ts"].max() < test["ts"].min()
    events = impressions_to_events(log)
    assert len(events) == sum(len(s) for s in log["shown"])
    assert set(events["event_type"]) == {"click", "skip"}
    assert events.loc[events["event_type"] == "skip", "dwell_s"].isna().all()
    assert (events.loc[events["event_type"] == "click", "dwell_s"] > 0).all()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['topic'\]"):
        simulate_impressions(items.drop(columns=["topic"]), config=CONFIG, progress=False)
    with pytest.raises(ValueError, match="appears more than once"):
        simulate_impressions(pd.concat([items, items.head(1)]), config=CONFIG, progress=False)


def test_log_goes_into_the_warehouse_once(tmp_path: Path, log: pd.DataFrame) -> None:
    frame = log.assign(row_number=range(1, len(log) + 1))
    with open_warehouse(tmp_path / "w.duckdb") as con:
        assert insert_impressions(con, frame, "personas", "simulated") == len(log)
        assert insert_impressions(con, frame, "personas", "simulated") == 0
        assert scalar(con, "SELECT count(*) FROM impressions") == len(log)
        back = read_impressions(con, source="personas")
    assert back["impression_id"].tolist() == log["impression_id"].tolist()
    assert [list(c) for c in back["clicked"]] == log["clicked"].tolist()
    assert [list(h) for h in back["history"]] == log["history"].tolist()


def test_warehouse_log_feeds_nrms_indices(tmp_path: Path, items: pd.DataFrame, log: pd.DataFrame) -> None:
    from tasks.news_eval import ItemIndex, log_to_impressions, warehouse_impressions

    index = ItemIndex.from_ids(items["item_id"].tolist())
    with open_warehouse(tmp_path / "w.duckdb") as con:
        insert_impressions(con, log.assign(row_number=range(1, len(log) + 1)), "personas", "simulated")
        from_db = warehouse_impressions(con, index, source="personas")
    direct = log_to_impressions(log, index)
    assert len(from_db) == len(direct)
    for a, b in zip(from_db, direct, strict=True):
        np.testing.assert_array_equal(a.shown, b.shown)
        np.testing.assert_array_equal(a.clicked, b.clicked)
        np.testing.assert_array_equal(a.history, b.history)
    with pytest.raises(ValueError, match="is not in the item table"):
        log_to_impressions(log, ItemIndex.from_ids(items["item_id"].tolist()[:10]))
