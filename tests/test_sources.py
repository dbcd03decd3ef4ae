"""Each MovieLens layout and the generic CSV map to the one schema; bad rows are kept aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.settings import SourceSettings
from tasks.sources import SourceFormatError, read_source
from tasks.sources.movielens import ML100K_GENRES, detect_layout, read_movielens
from tasks.sources.tabular import read_tabular


def _flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in ML100K_GENRES)


def test_ml100k_layout(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t881250949\n2\t20\t5\t881250950\n1\t20\t3\t881250951\n")
    (tmp_path / "u.item").write_bytes(
        (
            f"10|Café Society (1995)|01-Jan-1995||http://x|{_flags('Comedy', 'Drama')}\n"
            f"20|Heat (1995)|15-Dec-1995||http://y|{_flags('Action')}\n"
        ).encode("latin-1")
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    data = read_movielens(tmp_path)
    assert detect_layout(tmp_path) == "ml-100k"
    items = data.items.set_index("item_id")
    assert items.loc["10", "title"] == "Café Society"
    assert items.loc["10", "year"] == 1995
    assert list(items.loc["10", "categories"]) == ["Comedy", "Drama"]
    inter = data.interactions
    assert inter["value"].tolist() == [4.0, 5.0, 3.0]
    assert inter["ts"].tolist() == [881250949, 881250950, 881250951]
    assert set(inter["event_type"]) == {"rating"}
    assert data.users is not None and len(data.users) == 2


def test_ml_latest_layout(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,3.5,1112486027\n1,2,4.0,1112484676\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"American President, The (1995)",(no genres listed)\n'
    )
    data = read_movielens(tmp_path)
    items = data.items.set_index("item_id")
    assert items.loc["2", "title"] == "American President, The"
    assert list(items.loc["1", "categories"]) == ["Adventure", "Animation"]
    assert list(items.loc["2", "categories"]) == []
    assert data.interactions["value"].tolist() == [3.5, 4.0]


def test_recbole_atomic_layout(tmp_path: Path) -> None:
    (tmp_path / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t1\t5\t100\n7\t2\t1\t101\n"
    )
    (tmp_path / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tHeat\t1995\tAction\n"
    )
    data = read_movielens(tmp_path)
    assert detect_layout(tmp_path) == "atomic"
    items = data.items.set_index("item_id")
    assert list(items.loc["1", "categories"]) == ["Animation", "Children's", "Comedy"]
    assert items.loc["2", "year"] == 1995
    assert data.interactions["user_id"].tolist() == ["7", "7"]


def test_broken_rows_are_rejected_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n1\t10\n2\t10\t5\t101\textra\n3\t10\tbad\t102\n")
    (tmp_path / "u.item").write_text(f"10|Heat (1995)|15-Dec-1995||http://y|{_flags('Action')}\n")
    data = read_movielens(tmp_path)
    assert sorted(data.rejects["row_number"].tolist()) == [2, 3]
    assert all(r.startswith("parse:") for r in data.rejects["rule"])
    # The unparseable rating is kept as a row with a NULL value for the expectations to judge.
    assert data.interactions["row_number"].tolist() == [1, 4]
    assert data.interactions["value"].isna().tolist() == [False, True]


def test_generic_csv_with_iso_dates_and_items(tmp_path: Path) -> None:
    inter = tmp_path / "events.csv"
    inter.write_text(
        "user_id,item_id,event_type,timestamp\na,x,click,2024-01-01T10:00:00Z\nb,y,like,1704103200\n"
    )
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,categories\nx,First,news|tech\ny,Second,\n")
    data = read_tabular(inter, items)
    assert data.interactions["ts"].tolist() == [1704103200, 1704103200]
    assert data.interactions["event_type"].tolist() == ["click", "like"]
    assert list(data.items.set_index("item_id").loc["x", "categories"]) == ["news", "tech"]


def test_missing_columns_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "events.csv"
    bad.write_text("user,item\n1,2\n")
    with pytest.raises(SourceFormatError, match=r"events\.csv.*missing column"):
        read_tabular(bad)


def test_missing_movielens_directory_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(SourceFormatError, match="recflow data demo"):
        read_source(SourceSettings(kind="movielens", path=tmp_path / "nowhere"))
    with pytest.raises(SourceFormatError, match="no MovieLens data"):
        read_movielens(tmp_path)


def test_unrepresentable_timestamps_become_rejects_not_crashes(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n1\t10\t5\tinf\n2\t10\t5\t1e30\n3\t10\t2\t1e18\n")
    (tmp_path / "u.item").write_text(f"10|Heat (1995)|15-Dec-1995||http://y|{_flags('Action')}\n")
    data = read_movielens(tmp_path)
    assert data.interactions["row_number"].tolist() == [1, 4]
    assert data.interactions["ts"].tolist() == [100, 10**18]
    rejects = data.rejects.sort_values("row_number")
    assert rejects["row_number"].tolist() == [2, 3]
    assert set(rejects["rule"]) == {"parse:out-of-range(timestamp)"}
    assert [p["timestamp"] for p in rejects["payload"]] == ["inf", "1e30"]
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,timestamp\na,x,1e30\nb,y,2024-01-01T10:00:00Z\nc,z,1704103200\n")
    tab = read_tabular(csv)
    assert tab.interactions["ts"].tolist() == [1704103200, 1704103200]
    assert tab.rejects["rule"].tolist() == ["parse:out-of-range(timestamp)"]
