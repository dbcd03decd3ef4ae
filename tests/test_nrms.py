"""NRMS learns what simulated readers click, beats popularity on later impressions, and
round-trips through save/load with the shapes contract C4 promises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.base import histories_to_csr
from models.nrms import NRMSModel
from models.registry import build_model, load_model
from tasks.news_eval import (
    ItemIndex,
    click_histories,
    evaluate_scores,
    item_texts,
    log_to_impressions,
    popularity_counts,
    score_popularity,
)
from tasks.personas import PersonaConfig, simulate_impressions, split_by_time

pytestmark = pytest.mark.slow  # trains NRMS on simulated impressions

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def news_world() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Three days of demo stories (about 1,000) read by 200 personas; last quarter held out."""
    from tasks.news_eval import demo_items

    items = demo_items(seed=7, now=NOW)
    items = items[items["published"] >= NOW - timedelta(days=3)].reset_index(drop=True)
    log = simulate_impressions(items, config=PersonaConfig(personas=200, seed=3), progress=False)
    train, test = split_by_time(log, 0.25)
    return items, train, test


@pytest.fixture(scope="module")
def trained(news_world: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> NRMSModel:
    torch.set_num_threads(1)
    items, train, _ = news_world
    index = ItemIndex.from_ids(items["item_id"].tolist())
    histories, _ = click_histories(train, index)
    model = NRMSModel(epochs=3, batch_size=128, progress=False, device="cpu")
    model.set_item_topics(items["topic"].tolist())
    model.fit(
        histories_to_csr(histories, len(index)),
        histories,
        item_texts=item_texts(items),
        impressions=log_to_impressions(train, index),
    )
    return model


def test_nrms_beats_popularity_on_held_out_impressions(
    news_world: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], trained: NRMSModel
) -> None:
    items, train, test = news_world
    index = ItemIndex.from_ids(items["item_id"].tolist())
    held_out = log_to_impressions(test, index)
    popularity = evaluate_scores(held_out, score_popularity(popularity_counts(train, index), held_out))
    nrms = trained.evaluate(held_out)
    assert nrms["impressions"] == popularity["impressions"] > 100
    assert nrms["AUC"] > popularity["AUC"] + 0.05
    assert nrms["nDCG@10"] > popularity["nDCG@10"]
    curve = trained.training_curve()
    assert [c["epoch"] for c in curve] == [1, 2, 3]
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert all(set(c) >= {"epoch", "loss", "val_ndcg10", "seconds"} for c in curve)


def test_encode_and_score_shapes(news_world: tuple[pd.DataFrame, ...], trained: NRMSModel) -> None:
    n_items = len(news_world[0])
    news = trained.encode_items()
    assert news.shape == (n_items, 128) and news.dtype == np.float32
    histories = [np.array([0, 5, 9]), np.array([], dtype=np.int64), np.array([3])]
    users = trained.encode_users(histories)
    assert users.shape == (3, 128) and users.dtype == np.float32
    full = trained.score(histories)
    assert full.shape == (3, n_items)
    np.testing.assert_allclose(full, users @ news.T, rtol=1e-5, atol=1e-5)
    some = np.array([7, 2, 11])
    np.testing.assert_allclose(trained.score(histories, some), full[:, some], rtol=1e-5, atol=1e-5)
    assert trained.id_tables() == {}


def test_save_load_roundtrip(tmp_path: Path, trained: NRMSModel) -> None:
    trained.save(tmp_path / "nrms")
    assert {p.name for p in (tmp_path / "nrms").iterdir()} >= {"model.json", "state.pt", "news_vectors.npy"}
    loaded = load_model(tmp_path / "nrms")
    assert isinstance(loaded, NRMSModel)
    assert loaded.params() == trained.params()
    histories = [np.array([1, 2, 3]), np.array([4])]
    np.testing.assert_allclose(loaded.score(histories), trained.score(histories), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(loaded.encode_items(), trained.encode_items())
    assert loaded.training_curve() == trained.training_curve()


def test_history_only_fit_and_warm_start(trained: NRMSModel) -> None:
    """Without impressions NRMS trains on next-click over histories; a warm start loads the
    tensors whose shapes match (the encoders), whatever the catalogue."""
    texts = [
        f"{topic} story number {i} about {topic}"
        for topic in ("football", "markets", "vaccines")
        for i in range(10)
    ]
    histories = [np.array([0, 1, 2, 3, 4]), np.array([10, 11, 12, 13]), np.array([20, 21, 22, 23, 24])]
    model = build_model("nrms", epochs=1, batch_size=8, progress=False, device="cpu")
    assert isinstance(model, NRMSModel)
    model.set_initial_state(trained.net.state_dict())  # type: ignore[union-attr]
    model.fit(histories_to_csr(histories, len(texts)), histories, item_texts=texts)
    assert model.encode_items().shape == (30, 128)
    warm = model.net.user.attention.qkv.weight  # type: ignore[union-attr]
    assert torch.allclose(warm.cpu(), trained.net.user.attention.qkv.weight.cpu(), atol=0.01)  # type: ignore[union-attr]


def test_fit_needs_texts() -> None:
    model = NRMSModel(progress=False)
    with pytest.raises(ValueError, match="item texts are missing"):
        model.fit(histories_to_csr([np.array([0, 1])], 2), [np.array([0, 1])])
    with pytest.raises(ValueError, match="train has 2 item columns but 3 item texts"):
        model.fit(histories_to_csr([np.array([0, 1])], 2), [np.array([0, 1])], item_texts=["a", "b", "c"])


def test_stories_published_after_training_are_encoded_like_trained_ones(
    news_world: tuple[pd.DataFrame, ...], trained: NRMSModel
) -> None:
    """The freshness path: a story's vector from its text alone equals the one computed at
    training; an unseen topic or word does not fail."""
    items = news_world[0]
    texts = item_texts(items)[:5]
    again = trained.encode_stories(texts, topics=items["topic"].tolist()[:5])
    assert np.allclose(again, trained.encode_items()[:5], atol=1e-4)
    new = trained.encode_stories(["Zyxwv qqq breaking"], topics=["astrology"])
    assert new.shape == (1, trained.dim) and np.isfinite(new).all()
