"""The nightly on generated ML-25M-layout data, end to end, then a night with 1 % appended."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from storage.settings import Settings
from tasks.synthetic_movielens import append_ratings, generate

pytestmark = pytest.mark.slow  # two whole nightly runs on a Prefect API


def test_nightly_on_ml25m_layout_then_an_appended_night(prefect_api: None, tmp_path: Path) -> None:
    from flows.nightly import nightly_refresh

    data = tmp_path / "ml-25m-like"
    shape = generate(50_000, data, seed=5)
    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "ml-gen",
        "source": {"kind": "movielens", "path": str(data)},
        "model": {"name": "itemknn-recency", "candidates": []},  # one model: not about choosing
        "embedding": {"enabled": False},
    }
    settings = Settings(**overrides)
    first = nightly_refresh(overrides=overrides)
    assert first.version is not None
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == shape.ratings
        assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] == shape.items
        first_loaded = con.execute("SELECT max(loaded_at) FROM interactions").fetchall()[0][0]

    added = append_ratings(data, shape.ratings // 100, seed=6)
    second = nightly_refresh(overrides=overrides)
    assert second.version is not None and second.version != first.version
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == shape.ratings + added
        # only the appended rows were loaded on the second night: the first night's are untouched
        assert (
            con.execute("SELECT count(*) FROM interactions WHERE loaded_at > ?", [first_loaded]).fetchall()[
                0
            ][0]
            == added
        )
        loads = con.execute(
            "SELECT rows_seen, rows_added FROM loads WHERE table_name = 'interactions' ORDER BY loaded_at"
        ).fetchall()
        assert loads == [(shape.ratings, shape.ratings), (added, added)]
        # the movies file did not change: read once
        assert con.execute("SELECT count(*) FROM loads WHERE table_name = 'items'").fetchall()[0][0] == 1
        kcore = con.execute("SELECT count(*) FROM interactions_kcore").fetchall()[0][0]
        assert kcore == shape.ratings + added
