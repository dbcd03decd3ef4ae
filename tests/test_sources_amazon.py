"""Amazon Reviews 2023 adapter on hand-written files in the published JSONL layout."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import duckdb
import pytest

from storage.settings import AmazonRules, Settings, SourceSettings
from tasks.sources import read_source
from tasks.sources.amazon import clean_text, item_text
from tests.nightly_cli import run_nightly_cli

FIXTURES = Path(__file__).parent / "fixtures" / "amazon"
REVIEWS = FIXTURES / "Movies_and_TV.jsonl"
META = FIXTURES / "meta_Movies_and_TV.jsonl"


def _gz(src: Path, dst: Path) -> Path:
    with src.open("rb") as fin, gzip.open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dst


def test_reviews_become_positive_5core_interactions_keyed_by_parent_asin(tmp_path: Path) -> None:
    data = read_source(
        SourceSettings(
            kind="amazon",
            path=_gz(REVIEWS, tmp_path / "r.jsonl.gz"),
            items_path=_gz(META, tmp_path / "m.jsonl.gz"),
        )
    )
    inter = data.interactions
    # 8 users x 6 products, two readers skip one each...: 42 kept; the 1-star, unverified,
    # 2013, single-review product and single-review user lines are gone.
    assert len(inter) == 42
    assert set(inter["item_id"]) == {f"B07PARENT{i}" for i in range(1, 7)}
    assert inter["value"].min() >= 3.0
    assert "AONEREVIEWER" not in set(inter["user_id"])
    assert inter.groupby("user_id").size().min() >= 5 and inter.groupby("item_id").size().min() >= 5
    # milliseconds in the file, seconds in the warehouse
    assert inter["ts"].min() >= 1577836800 and inter["ts"].max() < 1_700_000_000
    assert set(data.items["item_id"]) == set(inter["item_id"])
    first = data.items.set_index("item_id").loc["B07PARENT1"]
    assert first["title"] == "The Long Night [Blu-ray]"
    assert first["description"] == (
        "The Long Night [Blu-ray] | Region A Widescreen & Dolby Atmos | A tense thriller set in a snowed-in cabin"
        " | Movies & TV > Genre for Featured Categories > Thriller | Lionsgate"
    )
    assert list(first["categories"]) == ["Movies & TV", "Genre for Featured Categories", "Thriller"]
    rules = sorted(
        zip(
            data.rejects["table"],
            data.rejects["row_number"],
            data.rejects["rule"].str.split("(").str[0],
            strict=True,
        )
    )
    assert rules == [
        ("interactions", 6, "parse:json"),
        ("interactions", 10, "parse:not-an-object"),
        ("interactions", 13, "parse:missing"),
        ("items", 4, "parse:json"),
    ]


def test_rules_are_settings(tmp_path: Path) -> None:
    loose = AmazonRules(min_rating=1, verified_only=False, since_year=2010, kcore=0, chunk_lines=3)
    data = read_source(SourceSettings(kind="amazon", path=REVIEWS, items_path=META, amazon=loose))
    # every parsed line with an id is kept: 47 = 50 lines - 3 rejects
    assert len(data.interactions) == 47
    assert data.interactions["value"].min() == 1.0
    assert "B07PARENT7" in set(data.items["item_id"])
    env = Settings(source={"kind": "amazon", "path": str(REVIEWS), "amazon": {"min_rating": 4}})
    assert env.source.amazon.min_rating == 4 and env.source.amazon.kcore == 5


def test_text_cleaning() -> None:
    assert clean_text("<p>Product Description</p><p>Fun &amp; games.</p>") == "Fun & games"
    assert clean_text(["a<br/>b", None, "  "]) == "a b"
    assert (
        item_text({"title": "T", "features": [], "categories": ["X", "X", "Y"], "store": "S"})
        == "T | X > Y | S"
    )


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.jsonl"):
        read_source(SourceSettings(kind="amazon", path=tmp_path / "nope.jsonl"))


@pytest.mark.slow
def test_recflow_run_nightly_publishes_parent_asins_with_cleaned_text(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.artifacts import ArtifactStore

    home = tmp_path / "var"
    output = run_nightly_cli(
        {
            "RECFLOW_HOME": str(home),
            "RECFLOW_CATALOGUE": "amazon-movies",
            "RECFLOW_SOURCE__KIND": "amazon",
            "RECFLOW_SOURCE__PATH": str(_gz(REVIEWS, tmp_path / "reviews.jsonl.gz")),
            "RECFLOW_SOURCE__ITEMS_PATH": str(_gz(META, tmp_path / "meta.jsonl.gz")),
            # the tiny fixture's 4 broken lines are 6-14 % of its files, over the 5 % default
            "RECFLOW_VALIDATION__MAX_FAILURE_SHARE": "0.2",
            "RECFLOW_MODEL__NAME": "itemknn-recency",  # one cheap model: the test is about the source
        },
        tmp_path,
        monkeypatch,
    )
    store = ArtifactStore(home / "amazon-movies" / "bundles")
    version = store.current_version()
    assert version is not None and f"live bundle: {version}" in output
    with duckdb.connect(str(store.root / version / "catalog.duckdb"), read_only=True) as cat:
        rows = dict(cat.execute("SELECT item_id, summary FROM items").fetchall())
    assert set(rows) == {f"B07PARENT{i}" for i in range(1, 7)}
    assert rows["B07PARENT5"] == (
        "Haunted Harbor | Subtitles: English, Spanish | A fishing town's ghost story. restored in 4K"
        " | Movies & TV > Horror | Shout! Factory"
    )
    with duckdb.connect(str(home / "amazon-movies" / "warehouse.duckdb"), read_only=True) as con:
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
    assert quarantined == 4
