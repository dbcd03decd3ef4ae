"""NRMS through ``train-models`` on a real Prefect API: a news catalogue whose warehouse holds
an impression log (demo stories read by simulated personas, loaded as a MIND split) trains
NRMS on clicked-versus-shown, publishes it with every story's news vector precomputed, and
the next run warm-starts from the live bundle's checkpoint. Stories scraped after the training
reach the feed through a freshness delta carrying their NRMS vectors, encoded at publish."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from models import news_ranker
from models.nrms import NRMSModel
from models.registry import load_model
from serving.bundle import load_bundle
from storage.artifacts import ArtifactStore
from storage.deltas import latest_seq, read_delta
from storage.settings import Settings
from storage.warehouse import connect, open_warehouse
from tasks.freshness import publish_delta
from tasks.load import load_source, upsert_items
from tasks.sources import read_source
from tasks.train_models import recorded_config
from tests.serving_fixtures import serve

pytestmark = pytest.mark.slow  # trains NRMS inside the flow

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def write_mind_split(directory: Path, items: pd.DataFrame, log: pd.DataFrame) -> None:
    """The persona log in MIND's layout (news.tsv + behaviors.tsv), as a MIND source reads it."""
    directory.mkdir(parents=True)
    news = [
        f"{r.item_id}\t{r.topic}\t{r.topic}\t{r.title}\t{r.text}\thttps://news.example/{r.item_id}\t[]\t[]"
        for r in items.itertuples()
    ]
    (directory / "news.tsv").write_text("\n".join(news) + "\n")
    lines = []
    for n, row in enumerate(log.itertuples(), start=1):
        when = datetime.fromtimestamp(int(row.ts), UTC).strftime("%m/%d/%Y %I:%M:%S %p").lstrip("0")
        shown = " ".join(f"{s}-{int(c)}" for s, c in zip(row.shown, row.clicked, strict=True))
        lines.append(f"{n}\t{row.user_id}\t{when}\t{' '.join(row.history)}\t{shown}")
    (directory / "behaviors.tsv").write_text("\n".join(lines) + "\n")


def items_of(bundle: Path) -> list[str]:
    """The bundle's item ids in model order."""
    with duckdb.connect(str(bundle / "catalog.duckdb"), read_only=True) as con:
        return [str(r[0]) for r in con.execute("SELECT item_id FROM items ORDER BY item_idx").fetchall()]


def seed_fresh_stories(settings: Settings, originals: pd.DataFrame) -> list[str]:
    """Store copies of ``originals`` as just-scraped stories and publish the delta; their ids."""
    ids = [f"fresh-{i}" for i in originals.index]
    with connect(settings.warehouse_path) as con:
        upsert_items(
            con,
            pd.DataFrame(
                {
                    "item_id": ids,
                    "title": originals["title"].tolist(),
                    "categories": [[t, t] for t in originals["topic"]],
                    "year": pd.array([None] * len(ids), dtype="Int64"),
                    "description": originals["text"].tolist(),
                    "url": [f"https://news.example/{i}" for i in ids],
                    "row_number": range(len(ids)),
                }
            ),
            "news-sim",
        )
        now = int(datetime.now(UTC).timestamp())
        for item_id in ids:
            con.execute("UPDATE items SET published_ts = ? WHERE item_id = ?", [now - 60, item_id])
        summary = publish_delta(
            con, ArtifactStore(settings.bundles_dir), settings.embedding, settings.harvest.window_hours
        )
    assert summary.items == len(ids), summary
    return ids


def sports_in(feed: dict, topic_of: dict[str, str]) -> int:
    return sum(topic_of.get(item["item_id"]) == "sports" for item in feed["items"])


def test_train_models_trains_nrms_ranks_the_feed_and_the_session_survives_a_training(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train_models
    from tasks.news_eval import demo_items
    from tasks.personas import PersonaConfig, simulate_impressions

    items = demo_items(seed=7, now=NOW)
    items = items[items["published"] >= NOW - timedelta(days=1)].reset_index(drop=True)
    log = simulate_impressions(items, config=PersonaConfig(personas=40, seed=5), progress=False)
    write_mind_split(tmp_path / "sim", items, log)
    overrides = {
        "home": str(tmp_path / "var"),
        "source": {"kind": "mind", "path": str(tmp_path / "sim")},
        "kcore": {"user_k": 2, "item_k": 0},
    }
    config = {"nrms": {"epochs": 1, "batch_size": 64, "progress": False, "device": "cpu"}}
    settings = Settings(catalogue="news-sim", **overrides)
    with open_warehouse(settings.warehouse_path) as con:
        load_source(con, settings, read_source(settings.source))
    first = train_models(catalogue="news-sim", models=["nrms"], config=config, overrides=overrides)
    assert first.live is not None

    store = ArtifactStore(settings.bundles_dir)
    bundle = store.root / str(first.live)
    model = load_model(bundle / "model")
    assert isinstance(model, NRMSModel)
    with connect(settings.warehouse_path) as con:
        n_items = con.execute("SELECT count(*) FROM items").fetchall()[0][0]
        n_impressions = con.execute("SELECT count(*) FROM impressions").fetchall()[0][0]
    assert n_impressions == len(log)
    # Every story's vector is in the bundle: serving encodes no story.
    vectors = np.load(bundle / "model" / "news_vectors.npy")
    assert vectors.shape == (n_items, model.dim)
    assert np.isfinite(vectors).all() and np.abs(vectors).sum(axis=1).min() > 0
    meta = json.loads((bundle / "model" / "model.json").read_text())
    assert meta["topics"], "the stories' topics reach the news encoder"
    assert meta["item_text_shape"] == [n_items, 384], "MiniLM vectors of title + summary"
    # The rank stage was trained on the impressions, one head per logged event.
    ranker = json.loads((bundle / "ranker" / "ranker.json").read_text())
    assert ranker["trained_events"] == ["click", "skip"], "MIND logs no likes and no dwell"
    assert ranker["params"]["weights"] == settings.serving.rank_weights
    assert "reshown" in ranker["features"], "what a reader scrolled past is a learned feature"
    # A ranker saved before a feature was added does not stop the bundle from serving: the
    # model's own order stands in until the next training.
    with monkeypatch.context() as m:
        m.setattr(news_ranker, "FEATURES", (*news_ranker.FEATURES, "a-later-feature"))
        older = load_bundle(store, str(first.live))
    assert older.ranker_name == "model:nrms", older.ranker_name

    # A reader clicks four sports stories: the feed (NRMS + ranker) turns to sports.
    topic_of = dict(zip(items["item_id"], items["topic"], strict=True))
    sports = [
        i for i in items.sort_values("published", ascending=False)["item_id"] if topic_of[i] == "sports"
    ]
    session = "sports-reader"
    with serve(settings) as (_app, client):
        for item in sports[:4]:
            answer = client.post("/interact", json={"item_id": item, "event": "click", "session": session})
            assert answer.status_code == 200, answer.text
        before = client.get("/feed", params={"k": 10, "session": session}).json()
        assert before["bundle_version"] == first.live
        assert before["strategy"] == "personalized"
        assert "ranker:news-ranker" in before["cascade"]["pipeline"], before["cascade"]
        assert sports_in(before, topic_of) >= 6, [topic_of.get(i["item_id"]) for i in before["items"]]
        # What the feed listed counts for this reader's next request (the ranker's ``reshown``).
        listed = _app.state.exposure.counts(f"session:{session}")
        assert listed == {i["item_id"]: 1 for i in before["items"]}

        # Two stories scraped after the training (a sports one and another, word for word like
        # two trained ones): the freshness update encodes them with the bundle's NRMS, and the
        # fresh slot ranks them for this reader with the ranker over their NRMS scores.
        originals = [sports[-1], next(i for i in items["item_id"] if topic_of[i] != "sports")]
        fresh = seed_fresh_stories(settings, items.set_index("item_id").loc[originals])
        seq = latest_seq(store, str(first.live))
        assert seq is not None
        delta = read_delta(store, str(first.live), seq)
        order = [it["item_id"] for it in delta.items]
        assert delta.nrms_vectors is not None and sorted(order) == sorted(fresh)
        position = {str(i): n for n, i in enumerate(items_of(bundle))}
        original_of = dict(zip(fresh, originals, strict=True))
        trained_rows = model.encode_items()[[position[original_of[i]] for i in order]]
        assert np.allclose(delta.nrms_vectors, trained_rows, atol=1e-4), "encoded as in training"
        client.post("/admin/reload")
        live = _app.state.holder.bundle
        assert live.delta_seq == seq and live.fresh_stage is not None
        assert np.array_equal(live.fresh_stage.nrms.encode_items()[-2:], delta.nrms_vectors)
        slot = [
            i["item_id"]
            for i in client.get("/feed", params={"k": 10, "session": session}).json()["items"]
            if i["stage"] == "fresh"
        ]
        rows = live.indices_of(order)
        reads = live.indices_of(sports[:4])
        scores = live.fresh_stage.score(reads, rows)
        nrms_scores = live.fresh_stage.nrms.score([reads], rows)[0]
        expected = [order[i] for i in np.argsort(-scores, kind="stable")]
        assert slot == expected, (slot, scores, nrms_scores)

        # The next training (warm from the live checkpoint) publishes; the session's clicks
        # still steer the feed of the new bundle.
        second = train_models(
            catalogue="news-sim", models=["nrms"], config=config, overrides=overrides, warm_start=True
        )
        with connect(settings.warehouse_path) as con:
            recorded = recorded_config(con, second.runs["nrms"])
        assert recorded["warm_start"]["bundle"] == first.live, (
            "the evaluated fit starts from the live checkpoint"
        )
        assert second.live is not None
        client.post("/admin/reload")
        after = client.get("/feed", params={"k": 10, "session": session}).json()
        assert after["bundle_version"] == second.live
        assert sports_in(after, topic_of) >= 6, [topic_of.get(i["item_id"]) for i in after["items"]]
