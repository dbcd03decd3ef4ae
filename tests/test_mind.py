"""The MIND adapter reads MIND's exact format and loads it idempotently, bad lines quarantined.

The fixture (tests/fixtures/mind) is a small split in MIND's layout, with real-looking rows:
line 5 of behaviors.tsv shows an unknown news id (N99999), line 6 has a label "2".
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from expectations import DataQualityError
from storage.settings import Settings
from storage.warehouse import open_warehouse, scalar
from tasks.impressions import read_impressions
from tasks.load import load_source
from tasks.sources import read_source
from tasks.sources.mind import parse_impression_list, read_mind

FIXTURE = Path(__file__).parent / "fixtures" / "mind"


def test_read_mind_maps_news_and_behaviors() -> None:
    data = read_mind(FIXTURE)
    items = data.items.set_index("item_id")
    assert len(items) == 8
    assert list(items.loc["N55528", "categories"]) == ["lifestyle", "lifestyleroyals"]
    assert items.loc["N19639", "title"] == "50 Worst Habits For Belly Fat"
    assert items.loc["N19639", "description"].startswith("These seemingly harmless habits")
    assert pd.isna(items.loc["N59295", "description"])  # empty abstract

    imps = data.impressions.set_index("impression_id")
    assert list(imps.index) == ["mind:1", "mind:2", "mind:3", "mind:4", "mind:5"]  # line 6 rejected
    first = imps.loc["mind:1"]
    assert first["user_id"] == "U13740"
    assert first["ts"] == int(datetime(2019, 11, 11, 9, 5, 58, tzinfo=UTC).timestamp())
    assert first["history"] == ["N55528", "N19639"]
    assert first["shown"] == ["N61837", "N53526", "N38324"]
    assert first["clicked"] == [False, True, False]
    assert imps.loc["mind:2", "ts"] == int(datetime(2019, 11, 12, 18, 11, 30, tzinfo=UTC).timestamp())
    assert imps.loc["mind:4", "history"] == []

    bad = data.rejects[data.rejects["table"] == "impressions"]
    assert bad["row_number"].tolist() == [6]
    assert "N2073-2" in bad["rule"].iloc[0]

    inter = data.interactions
    # History once per user (U13740 appears twice), then clicks: 3 + 4 + 1 + 1 + 2.
    assert len(inter) == 11
    u1 = inter[inter["user_id"] == "U13740"]
    assert u1["item_id"].tolist() == ["N55528", "N19639", "N53526", "N38324"]
    assert set(inter["event_type"]) == {"click"}
    assert inter.loc[inter["item_id"] == "N53526", "session_id"].tolist() == ["mind:1"]
    assert sorted(data.users["user_id"]) == ["U13740", "U34670", "U73700", "U91836"]


def test_impression_list_parsing() -> None:
    assert parse_impression_list("N1-1 N2-0") == (["N1", "N2"], [True, False])
    assert parse_impression_list("N1 N2") == (["N1", "N2"], [None, None])  # MIND's test split
    with pytest.raises(ValueError, match="'N1-x' is not NEWSID-0"):
        parse_impression_list("N1-x")
    with pytest.raises(ValueError, match="empty"):
        parse_impression_list("  ")


def test_load_is_idempotent_and_quarantines(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        catalogue="mind",
        source={"kind": "mind", "path": FIXTURE},
        validation={"max_failure_share": 0.5},
    )
    with open_warehouse(settings.warehouse_path) as con:
        first = load_source(con, settings, read_source(settings.source))
        assert first.added("items") == 8
        assert first.added("users") == 4
        assert first.added("interactions") == 10  # the click on unknown N99999 is quarantined
        assert first.added("impressions") == 4  # line 5 (unknown item) and line 6 (label 2) are not
        rules = dict(
            con.execute(
                "SELECT row_number, rule FROM quarantine WHERE table_name = 'impressions' ORDER BY row_number"
            ).fetchall()
        )
        assert rules[5] == "expect_column_values_to_not_be_in_set(item_id)"
        assert rules[6].startswith("parse:impressions")
        quarantined = scalar(con, "SELECT count(*) FROM quarantine")

        second = load_source(con, settings, read_source(settings.source))
        assert [t.rows_added for t in second.tables] == [0, 0, 0, 0]
        assert scalar(con, "SELECT count(*) FROM quarantine") == quarantined
        log = read_impressions(con)
    assert log["impression_id"].tolist() == ["mind:1", "mind:2", "mind:3", "mind:4"]
    assert list(log.iloc[1]["clicked"]) == [True, False, False, True]
    assert list(log.iloc[0]["history"]) == ["N55528", "N19639"]


def test_too_many_bad_impressions_stop_the_load(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        catalogue="mind",
        source={"kind": "mind", "path": FIXTURE},
        validation={"max_failure_share": 0.1},  # interactions pass (1 of 11), impressions do not
    )
    with open_warehouse(settings.warehouse_path) as con:
        with pytest.raises(DataQualityError, match="2 of 6 impressions"):
            load_source(con, settings, read_source(settings.source))
        assert scalar(con, "SELECT count(*) FROM impressions") == 0
        assert scalar(con, "SELECT count(*) FROM quarantine WHERE table_name = 'impressions'") == 2


def test_missing_files_are_named(tmp_path: Path) -> None:
    from tasks.sources import SourceFormatError

    (tmp_path / "news.tsv").write_text("")
    with pytest.raises(SourceFormatError, match=r"behaviors\.tsv is missing"):
        read_mind(tmp_path)
