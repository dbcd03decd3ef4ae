"""Books source (Goodbooks-10k layout and a generic books CSV) and its side features, on
hand-written files in the real layouts, through the real warehouse and the two-tower."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from models.registry import build_model, load_model
from models.side_features import build_side_features, numeric_column, top_k_multi_hot, user_aggregates
from models.two_tower import TwoTowerModel
from storage.settings import Settings, SourceSettings
from storage.warehouse import open_warehouse
from tasks.eval_report import report_for_models
from tasks.features import load_item_features
from tasks.load import load_source
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, kcore_filter, make_splits
from tasks.side_diagnostics import category_cohesion, pearson
from tasks.sources import read_source
from tasks.sources.books import split_authors
from tasks.training import SplitData, load_split_data
from tests.nightly_cli import run_nightly_cli

FIXTURES = Path(__file__).parent / "fixtures" / "books"
GOODBOOKS = FIXTURES / "goodbooks"
GENERIC = FIXTURES / "generic"


def test_goodbooks_layout_maps_books_tags_and_ratings() -> None:
    data = read_source(SourceSettings(kind="books", path=GOODBOOKS / "ratings.csv"))
    assert data.files == {"interactions": GOODBOOKS / "ratings.csv", "items": GOODBOOKS / "books.csv"}
    items = data.items.set_index("item_id")
    # the line with too few fields is a parse reject; the one without a title stays for the
    # expectations to quarantine
    assert list(items.index) == [str(i) for i in range(1, 16)]
    hp = items.loc["2"]
    assert hp["title"] == "Harry Potter and the Sorcerer's Stone (Harry Potter, #1)"
    assert hp["year"] == 1997
    assert hp["url"] == "https://www.goodreads.com/book/show/3"
    # the most-used tags, shelves (to-read, favorites) left out
    assert list(hp["categories"]) == ["fantasy", "magic", "young-adult"]
    assert hp["description"].startswith(
        "Harry Potter and the Sorcerer's Stone (Harry Potter, #1) by J.K. Rowling, Mary GrandPré; "
        "tags: fantasy, magic, young-adult"
    )
    attrs = data.item_attributes
    assert attrs is not None
    hp_attrs = attrs.set_index("item_id").loc["2", "attributes"]
    assert hp_attrs["authors"] == ["J.K. Rowling", "Mary GrandPré"]
    assert hp_attrs["numeric"]["average_rating"] == 4.44 and hp_attrs["numeric"]["ratings_5"] == 3011543
    assert "isbn13" not in hp_attrs["numeric"] and "goodreads_book_id" not in hp_attrs["numeric"]
    inter = data.interactions
    assert (inter["ts"] == 0).all() and list(inter["seq"]) == sorted(inter["seq"])
    assert inter.iloc[0][["user_id", "item_id", "value"]].tolist() == ["1", "11", 5.0]
    rejects = sorted(
        zip(data.rejects["table"], data.rejects["row_number"], data.rejects["rule"], strict=True)
    )
    assert rejects == [
        ("interactions", 10, "parse:not-a-number(rating)"),
        ("interactions", 21, "parse:TOO MANY COLUMNS"),
        ("items", 17, "parse:MISSING COLUMNS"),
    ]


def test_generic_books_csv_reads_its_columns() -> None:
    data = read_source(
        SourceSettings(kind="books", path=GENERIC / "ratings.csv", items_path=GENERIC / "books.csv")
    )
    items = data.items.set_index("item_id")
    assert list(items.loc["b-jane", "categories"]) == ["Classics", "Romance", "Gothic"]
    assert items.loc["b-jane", "year"] == 1847
    assert items.loc["b-dune", "description"].startswith("A desert planet")
    attrs = data.item_attributes
    assert attrs is not None
    left = attrs.set_index("item_id").loc["b-left", "attributes"]
    # numeric columns are found by their values; ISBNs and ids are not features; an empty
    # price is unknown
    assert left == {
        "authors": ["Ursula K. Le Guin"],
        "numeric": {"year": 1969.0, "pages": 304.0, "average_rating": 4.09, "price": None},
    }
    inter = data.interactions
    assert inter.loc[0, "ts"] == 1_600_003_600 and inter.loc[0, "user_id"] == "reader1"
    assert inter["ts"].isna().sum() == 1  # "not-a-time": the expectations quarantine it


def test_bad_input_names_the_file_and_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.csv.*user_id,book_id,rating"):
        read_source(SourceSettings(kind="books", path=tmp_path / "nope.csv"))
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user_id,book_id,rating\n1,1,5\n")
    with pytest.raises(ValueError, match=r"books\.csv does not exist.*ITEMS_PATH"):
        read_source(SourceSettings(kind="books", path=ratings))
    (tmp_path / "books.csv").write_text("isbn,name\n1,x\n")
    with pytest.raises(ValueError, match=r"no book id column; expected book_id \(or item_id\)"):
        read_source(SourceSettings(kind="books", path=ratings))


def test_side_feature_building_blocks() -> None:
    assert split_authors("J.K. Rowling, Mary GrandPré") == ["J.K. Rowling", "Mary GrandPré"]
    assert split_authors("A|B, C") == ["A", "B, C"] and split_authors(None) == []
    name, z = numeric_column("ratings_count", np.array([10.0, 100_000.0, np.nan, 1000.0]))
    assert name == "num:log:ratings_count"  # four orders of magnitude: log1p first
    assert z[2] == 0.0 and abs(float(z[[0, 1, 3]].mean())) < 1e-6 and z[1] > z[3] > z[0]
    assert numeric_column("average_rating", np.array([3.0, 4.0, 5.0]))[0] == "num:average_rating"
    names, hot = top_k_multi_hot("author", [["A", "B"], ["A"], ["C"], []], 1)
    assert names == ["author:A", "author:other"]
    assert hot.tolist() == [[1, 0], [1, 0], [0, 1], [0, 0]]
    side = build_side_features(
        ["Dune", "The Name of the Wind (The Kingkiller Chronicle, #1)", "Dune: Messiah"],
        [["sf"], ["fantasy"], ["sf"]],
        [["Herbert"], ["Rothfuss"], ["Herbert"]],
        {"pages": np.array([600.0, 660.0, 330.0]), "constant": np.array([1.0, 1.0, 1.0])},
        top_authors=5,
        top_categories=5,
    )
    assert side.names == [
        "num:pages",  # the constant column carries nothing and is left out
        "title:log_chars",
        "title:words",
        "title:series",
        "title:subtitle",
        "title:digits",
        "author:Herbert",
        "author:Rothfuss",
        "category:sf",
        "category:fantasy",
    ]
    assert side.values[:, side.names.index("title:series")].tolist() == [0, 1, 0]
    assert side.values[:, side.names.index("title:subtitle")].tolist() == [0, 0, 1]
    agg = user_aggregates(side.values, [np.array([0, 2]), np.array([], np.int64)], max_len=20)
    assert np.allclose(agg[0, :-1], side.values[[0, 2]].mean(axis=0)) and agg[1].tolist() == [0.0] * 11
    assert np.isclose(agg[0, -1], np.log1p(2) / np.log1p(20))


@pytest.fixture(scope="module")
def goodbooks_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[SplitData, Path]:
    home = tmp_path_factory.mktemp("books")
    settings = Settings(
        home=home,
        catalogue="goodbooks",
        source={"kind": "books", "path": str(GOODBOOKS / "ratings.csv")},
        validation={"max_failure_share": 0.2},
    )
    with open_warehouse(settings.warehouse_path) as con:
        load_source(con, settings)
        kcore_filter(con, 0, 0)
        make_splits(con, KCORE_TABLE, settings.eval.temporal_cut_quantile)
        data = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE)
        data.item_features = load_item_features(con, data, None, side=settings.source.books)
    return data, settings.warehouse_path


@pytest.mark.slow  # the warehouse load takes ~15 s
def test_warehouse_keeps_attributes_of_clean_items_only(goodbooks_split: tuple[SplitData, Path]) -> None:
    _, warehouse = goodbooks_split
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = dict(con.execute("SELECT item_id, attributes FROM item_attributes").fetchall())
        quarantined = con.execute("SELECT table_name, row_number FROM quarantine ORDER BY 1, 2").fetchall()
    assert set(rows) == {str(i) for i in range(1, 15)}  # book 15 (no title) was quarantined
    assert json.loads(rows["12"])["authors"] == ["Patrick Rothfuss"]
    assert quarantined == [
        ("interactions", 10),  # rating "five"
        ("interactions", 21),  # an extra field
        ("interactions", 32),  # book 999 is in no books.csv
        ("interactions", 46),  # rating 9 on a 0-5 scale
        ("items", 16),  # no title
        ("items", 17),  # too few fields
    ]


@pytest.mark.slow
def test_two_tower_trains_and_serves_with_side_features(
    goodbooks_split: tuple[SplitData, Path], tmp_path: Path
) -> None:
    data, _ = goodbooks_split
    features = data.item_features
    assert features is not None and features.side is not None
    assert features.side.shape == (data.n_items, len(features.side_names))
    assert "num:average_rating" in features.side_names and "category:fantasy" in features.side_names
    assert "author:J.K. Rowling" in features.side_names and "title:series" in features.side_names
    model = TwoTowerModel(epochs=3, dim=16, progress=False, threads=1)
    model.set_item_features(features)
    model.fit(data.matrix(("train",)), data.train)
    assert model.net is not None and model.net.items.side_dim == len(features.side_names)
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    histories = [data.train[u] for u in range(4)]
    assert np.allclose(loaded.score(histories), model.score(histories), atol=1e-5)
    # the side features reach the item vectors: other features, other vectors
    assert loaded.net is not None
    loaded.net.items.side.mul_(0.0)
    assert not np.allclose(loaded.encode_items(), model.encode_items(), atol=1e-4)
    # and the same catalogue trains without them (use_side off) into the plain towers
    plain = TwoTowerModel(epochs=1, dim=16, progress=False, threads=1, use_side=False)
    plain.set_item_features(features)
    plain.fit(data.matrix(("train",)), data.train)
    assert plain.net is not None and plain.net.items.side_dim == 0 and not hasattr(plain.net, "user_side")


def test_cohesion_and_pearson_on_crafted_spaces() -> None:
    # two clusters, each one category: every neighbour shares it, half the pairs do not
    vectors = np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0, 1], [0.1, 0.9], [0.05, 0.95]])
    cats = np.array([[1, 0]] * 3 + [[0, 1]] * 3, dtype=np.float32)
    cohesion = category_cohesion(vectors, cats, k=2)
    assert cohesion == {"k": 2.0, "neighbours": 1.0, "random_pairs": pytest.approx(0.4)}
    mixed = category_cohesion(vectors, cats[[0, 3, 1, 4, 2, 5]], k=2)  # categories across clusters
    assert mixed is not None and mixed["neighbours"] < 0.7
    r, p = pearson(np.arange(10.0), 2 * np.arange(10.0) + 1) or (0.0, 1.0)
    assert r == pytest.approx(1.0) and p < 1e-6
    assert pearson(np.ones(5), np.arange(5.0)) is None


@pytest.mark.slow
def test_report_shows_side_feature_diagnostics(
    goodbooks_split: tuple[SplitData, Path], tmp_path: Path
) -> None:
    data, _ = goodbooks_split
    tower = TwoTowerModel(epochs=3, dim=16, progress=False, threads=1)
    tower.set_item_features(data.item_features)  # type: ignore[arg-type]
    tower.fit(data.matrix(("train",)), data.train)
    knn = build_model("itemknn")
    knn.fit(data.matrix(("train",)), data.train)
    results = {"dataset": "goodbooks", "models": {"two-tower": {"ndcg@10": 0.5}, "itemknn": {"ndcg@10": 0.4}}}
    report = report_for_models(results, data, {"two-tower": tower, "itemknn": knn}, tmp_path, k=5)
    diagnostics = json.loads((tmp_path / "diagnostics.json").read_text())
    assert tmp_path / "diagnostics.json" in report.files
    tt = diagnostics["two-tower"]
    assert tt["norms"]["min"] > 0 and -1 <= tt["norms"]["r_log_popularity"] <= 1
    assert 0 <= tt["cohesion"]["neighbours"] <= 1 and 0 < tt["cohesion"]["random_pairs"] < 1
    features = {c["feature"]: c for c in tt["score_feature_pearson"]}
    assert "num:average_rating" in features and "title:log_chars" in features
    assert all(-1 <= c["r"] <= 1 and 0 <= c["p"] <= 1 for c in features.values())
    # the same r computed here from the model's scores
    users = [u for u in range(data.n_users) if len(data.test[u]) and len(data.train[u])]
    assert data.item_features is not None and data.item_features.side is not None
    column = data.item_features.side[:, data.item_features.side_names.index("num:average_rating")]
    expected = pearson(tower.score([data.train[u] for u in users]).mean(axis=0), column)
    assert expected is not None and features["num:average_rating"]["r"] == pytest.approx(
        expected[0], abs=1e-6
    )
    assert "norms" not in diagnostics["itemknn"] and diagnostics["itemknn"]["score_feature_pearson"]
    text = (tmp_path / "report.md").read_text()
    assert "## Side-feature diagnostics" in text and "category cohesion of the" in text
    assert "| `num:average_rating` |" in text


@pytest.mark.slow
def test_recflow_run_nightly_publishes_a_books_bundle_with_side_features(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.artifacts import ArtifactStore

    home = tmp_path / "var"
    output = run_nightly_cli(
        {
            "RECFLOW_HOME": str(home),
            "RECFLOW_CATALOGUE": "goodbooks",
            "RECFLOW_SOURCE__KIND": "books",
            "RECFLOW_SOURCE__PATH": str(GOODBOOKS / "ratings.csv"),
            "RECFLOW_SOURCE__ITEMS_PATH": str(GOODBOOKS / "books.csv"),
            # 6 broken lines of 104: over the 5 % default
            "RECFLOW_VALIDATION__MAX_FAILURE_SHARE": "0.2",
            "RECFLOW_MODEL__NAME": "two-tower",
            "RECFLOW_TWO_TOWER__EPOCHS": "2",
            "RECFLOW_TWO_TOWER__DIM": "16",
        },
        tmp_path,
        monkeypatch,
    )
    store = ArtifactStore(home / "goodbooks" / "bundles")
    version = store.current_version()
    assert version is not None and f"live bundle: {version}" in output
    bundle = store.root / version
    with duckdb.connect(str(bundle / "catalog.duckdb"), read_only=True) as cat:
        titles = dict(cat.execute("SELECT item_id, title FROM items").fetchall())
    assert titles["12"] == "The Name of the Wind (The Kingkiller Chronicle, #1)" and len(titles) == 14
    model = load_model(bundle / "model")
    assert isinstance(model, TwoTowerModel) and model.net is not None
    assert model.net.items.side_dim > 0 and model.net.items.text_dim == 384
    history = [np.array([0, 1, 2])]
    assert np.allclose(model.encode_users(history) @ model.encode_items().T, model.score(history), atol=1e-4)
    # the bundle's evaluation report carries the side-feature diagnostics
    assert "## Side-feature diagnostics" in (bundle / "report" / "report.md").read_text()
    diagnostics = json.loads((bundle / "report" / "diagnostics.json").read_text())
    assert diagnostics["two-tower"]["cohesion"]["neighbours"] >= 0
