"""``serving.rank_stage = "text-similarity"``: the same bundle served by text similarity alone
(the baseline arm of ``make eval-news``'s A/B), through a real uvicorn server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.bundle import TextSimilarityRanker
from storage.settings import Settings
from tests.serving_fixtures import build_catalogue, serve


def test_text_similarity_ranker_is_the_cosine_to_the_mean_of_the_history() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    ranker = TextSimilarityRanker(vectors)
    scores = ranker.score(np.array([0, 0, 2]), np.array([1, 2, 3, 7]))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    profile = unit[[0, 0, 2]].mean(axis=0)
    assert np.allclose(scores[:3], unit[[1, 2, 3]] @ profile)
    assert scores[3] == 0.0, "a row beyond the bundle's vectors (a delta story) scores 0"
    assert not ranker.score(np.array([], dtype=np.int64), np.array([1, 2])).any()


def test_rank_stage_setting_rejects_an_unknown_stage() -> None:
    with pytest.raises(ValueError, match="rank_stage"):
        Settings(serving={"rank_stage": "nrms"})


def test_the_service_ranks_by_text_similarity_when_told(tmp_path: Path) -> None:
    catalogue = build_catalogue(tmp_path, serving={"rank_stage": "text-similarity"})
    data = catalogue.data
    user = data.user_ids.tolist().index("u0")
    history = data.histories(("train", "valid", "test"))[user]
    unit = catalogue.vectors / np.linalg.norm(catalogue.vectors, axis=1, keepdims=True)
    cosine = unit @ unit[history].mean(axis=0)
    unseen = [i for i in np.argsort(-cosine, kind="stable") if i not in set(history.tolist())]
    expected = [str(data.item_ids[i]) for i in unseen]
    with serve(catalogue.settings) as (_app, client):
        body = client.get("/recommend/u0", params={"k": 6, "mmr_lambda": 1.0, "explore": False}).json()
    assert body["cascade"]["pipeline"][:2] == ["retrieval:text", "ranker:text-similarity"], body["cascade"]
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 6
    assert ids[0] == expected[0], (ids, expected[:8])
    assert ids == [i for i in expected if i in ids], "listed in the order of the cosine to the history"


def test_the_ab_plot_takes_an_interval_that_misses_its_point(tmp_path: Path) -> None:
    """A/B coverage: every bootstrap resample lists fewer stories than all sessions did, so the
    interval can lie below the point estimate; the report's plot must still draw."""
    from tasks.ab import METRICS, Arm, plot_arms

    def arm(value: float) -> dict:
        return {key: {"value": value, "ci95": [value - 0.02, value - 0.01]} for key in METRICS}

    comparison = {"arms": {"a": arm(0.5), "b": arm(0.4)}}
    path = plot_arms(comparison, [Arm("a", {}), Arm("b", {})], tmp_path / "report.png")
    assert path.stat().st_size > 0
