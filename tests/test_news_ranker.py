"""The news rank stage: features mean what they say, every logged event trains a head, the
weighted score follows the settings' weights, and the stage ranks by the session's topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.impression_metrics import impression_metrics
from models.news_ranker import (
    FEATURES,
    CandidateContext,
    ItemFacts,
    NewsRanker,
    NewsRankStage,
    appeal_scores,
    candidate_features,
    expected_clicks,
    history_depth,
    rank_labels,
    topic_affinity,
    topic_shares,
)


def synthetic(
    n_impressions: int = 400, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], list[np.ndarray]]:
    """Impressions of 10 stories whose clicks follow topic match, freshness and popularity, and
    fall for a story already shown to the reader."""
    rng = np.random.default_rng(seed)
    blocks, clicks, dwell, groups = [], [], [], []
    for n in range(n_impressions):
        topics = rng.integers(1, 5, size=10)
        history = rng.integers(1, 5, size=6)
        x = candidate_features(
            retrieval=rng.normal(0.3, 0.1, 10),
            nrms=rng.normal(0, 1, 10),
            age_hours=rng.uniform(0, 48, 10),
            clicks=rng.integers(0, 50, 10).astype(float),
            impressions=rng.integers(50, 200, 10).astype(float),
            candidate_topics=topics,
            context=CandidateContext(history, history[-3:]),
            reshown=rng.integers(0, 3, 10) * (rng.random(10) < 0.5),
        )
        logit = (
            -2.0
            + 4.0 * x[:, FEATURES.index("session")]
            - 0.6 * x[:, FEATURES.index("age")]
            + x[:, 4] * 10
            - 2.0 * x[:, FEATURES.index("reshown")]
        )
        clicked = rng.random(10) < 1 / (1 + np.exp(-logit))
        blocks.append(x)
        clicks.append(clicked)
        dwell.append(np.where(clicked, rng.uniform(5, 90, 10), 0.0))
        groups.append(np.arange(n * 10, n * 10 + 10))
    labels: dict[str, list[np.ndarray]] = {}
    for c, d in zip(clicks, dwell, strict=True):
        for event, y in rank_labels(c, d, None, 30.0).items():
            labels.setdefault(event, []).append(y)
    return np.concatenate(blocks), {e: np.concatenate(v) for e, v in labels.items()}, groups


def test_features_are_named_columns() -> None:
    x = candidate_features(
        retrieval=np.array([0.5, 0.1]),
        nrms=None,
        age_hours=np.array([0.0, 23.0]),
        clicks=np.array([3.0, 0.0]),
        impressions=np.array([10.0, 0.0]),
        candidate_topics=np.array([2, 3]),
        context=CandidateContext(np.array([2, 2, 3, 1]), np.array([2])),
        reshown=np.array([0.0, 2.0]),
    )
    col = {f: x[:, i] for i, f in enumerate(FEATURES)}
    assert np.allclose(col["retrieval"], [0.5, 0.1]) and np.allclose(col["nrms"], 0.0)
    assert np.allclose(col["age"], np.log1p([0.0, 23.0]))
    assert np.allclose(col["popularity"], np.log1p([3.0, 0.0]))
    assert np.allclose(col["ctr"], [4 / 20, 1 / 10])
    assert np.allclose(col["topic"], [0.5, 0.25]) and np.allclose(col["session"], [1.0, 0.0])
    assert np.allclose(col["history"], 1.0)
    assert np.allclose(col["reshown"], np.log1p([0.0, 2.0]))
    assert np.allclose(col["position"], 0.0), "serving scores every candidate as if on top"
    assert np.allclose(col["depth"], np.array([0.5, 0.1]) * np.log1p(4) / np.log1p(10)), "4 clicks"
    assert history_depth(0) == 0.0 and history_depth(10) == history_depth(50) == 1.0
    assert np.allclose(topic_shares(np.zeros(0, np.int64), np.array([1, 2])), 0.0)
    # 2 of 4 clicks in topic 2, 1 in topic 3, with 3 pseudo-clicks at a tenth each.
    assert np.allclose(col["affinity"], np.log([2.3 / 7, 1.3 / 7]))
    cold = topic_affinity(np.zeros(0, np.int64), np.array([1, 2, 5]))
    assert np.allclose(cold, np.log(0.1)), "no history: every topic alike"
    once, never = topic_affinity(np.array([1] * 19 + [2]), np.array([2, 3]))
    assert once - never > 1.0, "a topic read once in twenty is far from one never read"
    with pytest.raises(ValueError, match="retrieval has 1 values for 2 candidates"):
        candidate_features(
            retrieval=np.array([0.5]),
            nrms=None,
            age_hours=np.zeros(2),
            clicks=np.zeros(2),
            impressions=np.zeros(2),
            candidate_topics=np.array([1, 2]),
            context=CandidateContext(np.zeros(0, np.int64), np.zeros(0, np.int64)),
        )


def test_heads_learn_the_events_and_the_score_ranks_clicks(tmp_path: Path) -> None:
    x, y, _ = synthetic(seed=1)
    ranker = NewsRanker(epochs=40).fit(x, y)
    assert ranker.trained_events == ["click", "skip", "dwell"], "no like was logged: that head weighs zero"
    test_x, test_y, groups = synthetic(200, seed=2)
    scores = ranker.score(test_x)
    auc = impression_metrics([test_y["click"][g] > 0 for g in groups], [scores[g] for g in groups]).as_dict()[
        "AUC"
    ]
    assert auc > 0.75
    probs = ranker.head_probabilities(test_x)
    assert np.corrcoef(probs["click"], probs["skip"])[0, 1] < -0.9
    ranker.save(tmp_path / "r")
    again = NewsRanker.load(tmp_path / "r")
    assert np.allclose(again.score(test_x), scores, atol=1e-6)
    assert again.weights == ranker.weights


def test_linear_heads_by_default_and_an_mlp_body_when_asked(tmp_path: Path) -> None:
    """The default ranker is linear in the features: scaling a feature that raises clicks
    raises every candidate's score in step, whatever the other features are. A ranker with an
    MLP body (``serving.ranker_hidden`` > 0, or one saved before linear was the default) keeps
    its width through save and load."""
    x, y, _ = synthetic(seed=3)
    linear = NewsRanker(epochs=40).fit(x, y)
    assert linear.hidden == 0
    p = linear.head_probabilities(x)["click"]
    logits = np.log(p / (1 - p))
    session = FEATURES.index("session")
    bumped = x.copy()
    bumped[:, session] += 0.5
    raised = linear.head_probabilities(bumped)["click"]
    shift = np.log(raised / (1 - raised)) - logits
    assert np.allclose(shift, shift[0], atol=1e-4) and shift[0] > 0, "one slope per feature: linear"
    deep = NewsRanker(hidden=16, epochs=20).fit(x, y)
    deep.save(tmp_path / "deep")
    again = NewsRanker.load(tmp_path / "deep")
    assert again.hidden == 16
    assert np.allclose(again.score(x), deep.score(x), atol=1e-6)


@pytest.mark.parametrize("hidden", [0, 16])
def test_a_feature_constant_in_training_does_not_move_the_score(hidden: int) -> None:
    """A log where every reader had history (``history`` always 1) says nothing about a reader
    without: the score must not change with it, rather than follow weights left at random."""
    x, y, _ = synthetic(seed=4)
    assert np.allclose(x[:, FEATURES.index("history")], 1.0)
    ranker = NewsRanker(hidden=hidden, epochs=20).fit(x, y)
    without = x.copy()
    without[:, FEATURES.index("history")] = 0.0
    assert np.allclose(ranker.score(without), ranker.score(x), atol=1e-6)


def test_the_l2_penalty_shares_a_signal_between_copies_and_shrinks_the_weights() -> None:
    """Two near-copies of one signal (text match and ``depth`` for a reader with a long
    history) get about equal weights under the penalty, instead of any split that sums to the
    signal; and every weight is smaller than unpenalised."""
    x, y, _ = synthetic(seed=5)
    rng = np.random.default_rng(5)
    retrieval, depth, session = (FEATURES.index(f) for f in ("retrieval", "depth", "session"))
    x[:, depth] = x[:, retrieval] + rng.normal(0, 1e-3, len(x))
    logit = -2.0 + 8.0 * (x[:, retrieval] - 0.3) + 4.0 * x[:, session]
    y = rank_labels(rng.random(len(x)) < 1 / (1 + np.exp(-logit)), None, None, 30.0)

    def click_weights(ranker: NewsRanker) -> np.ndarray:
        net = ranker.net
        assert net is not None
        return net.linear.weight.detach().numpy()[0]

    free = click_weights(NewsRanker(l2=0.0, epochs=150).fit(x, y))
    held = click_weights(NewsRanker(l2=300.0, epochs=150).fit(x, y))
    pair = held[[retrieval, depth]]
    assert pair.min() > 0 and abs(pair[0] - pair[1]) < 0.25 * pair.sum(), pair
    assert np.linalg.norm(held) < np.linalg.norm(free)
    with pytest.raises(ValueError, match="l2"):
        NewsRanker(l2=-1.0)


def test_the_l2_setting_reaches_the_ranker_and_names_a_bad_value(tmp_path: Path) -> None:
    from storage.settings import Settings

    assert Settings().serving.ranker_l2 == 300.0
    with pytest.raises(ValueError, match="ranker_l2"):
        Settings(serving={"ranker_l2": -1})  # type: ignore[arg-type]
    x, y, _ = synthetic(seed=6, n_impressions=50)
    ranker = NewsRanker(l2=42.0, epochs=5).fit(x, y)
    ranker.save(tmp_path / "r")
    assert NewsRanker.load(tmp_path / "r").l2 == 42.0


def test_a_changed_rank_stage_setting_changes_the_nightlys_fingerprint() -> None:
    """The nightly trains the ranker, so a new ``ranker_l2`` (or width, or event weights) must
    not read as "data and settings unchanged: nothing to publish"."""
    from flows.nightly import candidate_params, fingerprint_settings
    from storage.settings import Settings

    base = Settings()
    inputs = fingerprint_settings(base, candidate_params(base))
    assert fingerprint_settings(Settings(), candidate_params(base)) == inputs
    for change in ({"ranker_l2": 30.0}, {"ranker_hidden": 8}, {"rank_weights": {"click": 1.0}}):
        other = Settings(serving=change)  # type: ignore[arg-type]
        assert fingerprint_settings(other, candidate_params(other)) != inputs, change
    # a release whose ranker reads other features: the old bundle's ranker cannot be served
    assert inputs["ranker"]["features"] == list(FEATURES)


def test_the_width_setting_defaults_to_linear_and_names_a_bad_value() -> None:
    from storage.settings import Settings

    assert Settings().serving.ranker_hidden == 0
    with pytest.raises(ValueError, match="ranker_hidden"):
        Settings(serving={"ranker_hidden": -1})  # type: ignore[arg-type]


def test_weights_come_from_the_caller_and_bad_input_is_named() -> None:
    x, y, _ = synthetic(100, seed=3)
    clicks_only = NewsRanker(weights={"click": 1.0}, epochs=5).fit(x, y)
    probs = clicks_only.head_probabilities(x)
    assert np.allclose(clicks_only.score(x), probs["click"])
    with pytest.raises(ValueError, match="unknown events \\['share'\\]"):
        NewsRanker(weights={"share": 1.0})
    with pytest.raises(ValueError, match=rf"features must be \(n, {len(FEATURES)}\)"):
        NewsRanker().fit(x[:, :3], y)
    with pytest.raises(ValueError, match="both clicked and not-clicked"):
        NewsRanker().fit(x, {"click": np.zeros(len(x))})


def test_rank_stage_follows_the_session_topic(tmp_path: Path) -> None:
    x, y, _ = synthetic(seed=4)
    ranker = NewsRanker(epochs=40).fit(x, y)
    n = 40
    topics = np.array([1 + i % 4 for i in range(n)])  # topic 2 is "sports"
    facts = ItemFacts(None, np.full(n, 1_000_000.0), topics)
    stage = NewsRankStage(ranker, facts, None, np.zeros(n), np.zeros(n))
    sports_reads = np.array([1, 5, 9, 13])  # four sports stories
    candidates = np.arange(16, 40)
    scores = stage.score(sports_reads, candidates)
    top10 = candidates[np.argsort(-scores)[:10]]
    assert (topics[top10] == 2).sum() >= 6


def test_settings_name_a_bad_rank_weight() -> None:
    from pydantic import ValidationError

    from storage.settings import Settings

    assert (
        Settings(serving={"rank_weights": {"click": 1.0, "skip": -1.0}}).serving.rank_weights["skip"] == -1.0
    )
    with pytest.raises(ValidationError, match=r"rank_weights: \['share'\] are not ranker events"):
        Settings(serving={"rank_weights": {"click": 1.0, "share": 0.5}})
    with pytest.raises(ValidationError, match="'click' needs a non-zero weight"):
        Settings(serving={"rank_weights": {"skip": -1.0}})


def _pool_bundle(ranker: NewsRanker) -> tuple[Any, Any]:
    """Twelve same-topic stories in today's pool, served by ``ranker`` (click-through differing
    per story), and cascade parameters that keep the pool's order visible (no MMR, no
    exploration)."""
    from serving.cascade import CascadeParams
    from tests.serving_fixtures import pool_bundle

    n = 12
    published = np.full(n, 1_000_000.0)
    facts = ItemFacts(None, published, np.ones(n, np.int64))
    shown = np.full(n, 100.0)
    clicks = np.array([2, 30, 5, 45, 0, 12, 25, 1, 8, 40, 3, 18], dtype=np.float64)
    stage = NewsRankStage(ranker, facts, None, clicks, shown)
    ids = [f"s{i}" for i in range(n)]
    vectors = np.eye(n, dtype=np.float32)
    bundle = pool_bundle(
        ids,
        vectors,
        [["sports"]] * n,
        published,
        np.arange(n),
        "nrms",
        ranker=stage,
        ranker_name="news-ranker",
    )
    params = CascadeParams(
        k=5,
        candidates=12,
        mmr_lambda=1.0,
        retrieval_weight=0.0,
        duplicate_threshold=1.0,
        explore=False,
        seed=0,
    )
    return bundle, params


def test_a_new_reader_gets_the_pool_ranked_by_the_learned_stage() -> None:
    """Below ``min_interactions`` the feed falls back to today's pool: a bundle served by the
    news ranker orders it (with the reader's first clicks, when there are some) by the ranker's score for a reader without history (click-through,
    freshness, popularity as learned), a text-similarity view by the fixed fresh-and-popular rule."""
    import dataclasses

    x, y, _ = synthetic(seed=5)  # clicks follow click-through (×10 in the logit), topic, age
    ranker = NewsRanker(epochs=40).fit(x, y)
    bundle, params = _pool_bundle(ranker)
    n, published, shown = 12, bundle.published_s, np.full(12, 100.0)
    cold = bundle.recommend_for(
        "session 'new'", np.zeros(0, np.int64), params, min_interactions=3, use_pool=True
    )
    assert cold.strategy == "fresh_popular_fallback" and "ranker:news-ranker" in cold.pipeline
    assert "ranked by the news ranker" in (cold.reason or "")
    assert cold.indices == [3, 9, 1, 6, 11], "highest click-through first"
    # One click (below min_interactions): still the pool, ranked with that click as a feature
    # (every story here shares its topic, so the order is the same).
    one = bundle.recommend_for("session 'one'", np.array([0]), params, min_interactions=3, use_pool=True)
    assert one.indices == [3, 9, 1, 6, 11]
    assert "from the reader's first clicks" in (one.reason or "")
    # Two clicks on topic 2: the learned stage puts the pool's topic-2 stories first.
    topics = np.array([2 if i % 3 == 0 else 1 for i in range(n)])
    by_topic = dataclasses.replace(
        bundle,
        ranker=NewsRankStage(ranker, ItemFacts(None, published, topics), None, np.full(n, 20.0), shown),
    )
    two = by_topic.recommend_for("session 'two'", np.array([0, 3]), params, min_interactions=3, use_pool=True)
    assert two.strategy == "fresh_popular_fallback" and set(two.indices[:2]) == {6, 9}, two.indices

    baseline = text_view(bundle)
    fixed = baseline.recommend_for(
        "session 'new'", np.zeros(0, np.int64), params, min_interactions=3, use_pool=True
    )
    assert fixed.indices == [0, 1, 2, 3, 4], "pool order: the fixed rule (no popularity here)"
    assert "fresh and popular first" in (fixed.reason or "")


def text_view(bundle: Any) -> Any:
    """The text-similarity view of ``bundle`` without building an index (the fallback needs none)."""
    import dataclasses

    from serving.bundle import TextSimilarityRanker

    return dataclasses.replace(
        bundle, ranker=TextSimilarityRanker(bundle.vectors), ranker_name="text-similarity"
    )


def test_training_rows_count_what_each_reader_passed_over() -> None:
    """``reshown`` of a logged row: earlier impressions of the same reader that showed the story
    without a click (a click does not count, another reader's impressions do not count)."""
    from models.nrms import Impression
    from tasks.features import LoggedImpression
    from tasks.news_ranking import training_rows

    def logged(user: str, ts: float, shown: list[int], clicked: list[bool]) -> LoggedImpression:
        imp = Impression(np.zeros(0, np.int64), np.asarray(shown, np.int64), np.asarray(clicked, bool))
        return LoggedImpression(user, ts, imp, np.zeros(len(shown)))

    log = [
        logged("session:a", 1.0, [0, 1, 2], [True, False, False]),
        logged("session:b", 2.0, [1, 2], [False, False]),
        logged("session:a", 3.0, [1, 2, 0, 3], [False, False, False, True]),
        logged("session:a", 4.0, [1, 3], [True, False]),
    ]
    facts = ItemFacts(None, np.full(4, 0.0), np.ones(4, np.int64))
    x, labels, clicks, shown, _ = training_rows(log, facts, None, 4, 30.0)
    reshown = np.expm1(x[:, FEATURES.index("reshown")])
    assert np.allclose(reshown, [0, 0, 0, 0, 0, 1, 1, 0, 0, 2, 0])
    slots = np.expm1(x[:, FEATURES.index("position")])
    assert np.allclose(slots, [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1]), "each row's slot in its listing"
    assert labels["click"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert clicks.tolist() == [1, 1, 0, 1] and shown.tolist() == [2, 4, 3, 2]
    # Rows only of some impressions: the earlier ones still count as shown.
    x_late, _, _, _, _ = training_rows(log, facts, None, 4, 30.0, rows_from={3})
    assert np.allclose(np.expm1(x_late[:, FEATURES.index("reshown")]), [2, 0])


def test_a_story_shown_before_is_demoted_as_the_log_taught() -> None:
    """The stage bound to what a reader was already listed scores those stories lower (the
    synthetic log clicks them less) and leaves the others; the feed's fallback ranks with it."""
    x, y, _ = synthetic(seed=5)
    ranker = NewsRanker(epochs=40).fit(x, y)
    n = 12
    facts = ItemFacts(None, np.full(n, 1_000_000.0), np.ones(n, np.int64))
    clicks = np.array([2, 30, 5, 45, 0, 12, 25, 1, 8, 40, 3, 18], dtype=np.float64)
    stage = NewsRankStage(ranker, facts, None, clicks, np.full(n, 100.0))
    candidates = np.arange(n)
    plain = stage.score(np.array([0]), candidates)
    bound = stage.for_reader(np.array([9, 3]), np.array([3.0, 1.0]))
    again = bound.score(np.array([0]), candidates)
    assert again[9] < plain[9] and again[3] < plain[3]
    assert plain[3] - again[3] < plain[9] - again[9], "shown three times weighs more than once"
    others = np.setdiff1d(candidates, [3, 9])
    assert np.allclose(again[others], plain[others])
    assert stage.reshown(candidates) is None, "the shared stage is not changed by a request"


def test_the_feed_fallback_demotes_what_the_reader_scrolled_past() -> None:

    x, y, _ = synthetic(seed=5)
    ranker = NewsRanker(epochs=40).fit(x, y)
    bundle, params = _pool_bundle(ranker)
    first = bundle.recommend_for(
        "session 's'", np.zeros(0, np.int64), params, min_interactions=3, use_pool=True
    )
    assert first.indices[:2] == [3, 9]
    shown = {"s3": 3, "s9": 3, "unknown-story": 5}
    second = bundle.recommend_for(
        "session 's'", np.zeros(0, np.int64), params, min_interactions=3, use_pool=True, reader_shown=shown
    )
    assert second.indices[:2] == [1, 6], second.indices
    assert set(second.indices[2:]) >= {11}
    # With exploration on, the learned stage fills the slot with its best remaining story.
    import dataclasses

    explored = bundle.recommend_for(
        "session 's'",
        np.zeros(0, np.int64),
        dataclasses.replace(params, explore=True, seed=7),
        min_interactions=3,
        use_pool=True,
    )
    assert explored.stages[-1] == "exploration" and explored.indices == first.indices, explored.indices


def test_reader_exposure_counts_per_reader_within_its_bounds() -> None:
    from serving.impressions import ReaderExposure

    exposure = ReaderExposure(max_readers=2, max_items=3)
    assert exposure.reader(None, "abc") == "session:abc" and exposure.reader("u1", "abc") == "u1"
    assert exposure.reader(None, None) is None
    exposure.add("r1", ["a", "b"])
    exposure.add("r1", ["b", "c"])
    assert exposure.counts("r1") == {"a": 1, "b": 2, "c": 1}
    exposure.add("r1", ["d"])  # a fourth story: the one listed longest ago goes
    assert exposure.counts("r1") == {"b": 2, "c": 1, "d": 1}
    exposure.add("r2", ["a"])
    exposure.add("r1", ["a"])  # r1 served last: r2 is the least recent
    exposure.add("r3", ["a"])
    assert len(exposure) == 2 and exposure.counts("r2") == {} and exposure.counts("r1")["a"] == 1
    assert exposure.counts(None) == {}
    with pytest.raises(ValueError, match="max_readers"):
        ReaderExposure(max_readers=0)


def test_position_keeps_the_top_slot_from_passing_for_a_liked_story() -> None:
    """A log where stories listed again sit on top (a stable ranking does that) and top slots
    get clicked more: counted naively, "shown before" goes with more clicks. With the slot as
    a feature the ranker learns the demotion the readers apply, scored as if on top."""
    rng = np.random.default_rng(11)
    blocks, clicked = [], []
    for _ in range(1500):
        positions = np.arange(10)
        listed_before = rng.random(10) < np.where(positions < 3, 0.7, 0.1)  # re-listed stories on top
        reshown = np.where(listed_before, rng.integers(1, 3, 10), 0).astype(float)
        x = candidate_features(
            retrieval=np.full(10, 0.3),
            nrms=None,
            age_hours=np.full(10, 5.0),
            clicks=np.full(10, 10.0),
            impressions=np.full(10, 100.0),
            candidate_topics=np.ones(10, np.int64),
            context=CandidateContext(np.ones(3, np.int64), np.ones(1, np.int64)),
            reshown=reshown,
            positions=positions,
        )
        logit = -0.5 - 1.2 * np.log1p(positions) - 0.7 * reshown
        clicked.append(rng.random(10) < 1 / (1 + np.exp(-logit)))
        blocks.append(x)
    x = np.concatenate(blocks)
    y = np.concatenate(clicked)
    naive = x[:, FEATURES.index("reshown")] > 0
    assert y[naive].mean() > y[~naive].mean(), "the confound the position feature is for"
    ranker = NewsRanker(weights={"click": 1.0}, epochs=30).fit(x, {"click": y.astype(np.float32)})
    top = candidate_features(
        retrieval=np.full(3, 0.3),
        nrms=None,
        age_hours=np.full(3, 5.0),
        clicks=np.full(3, 10.0),
        impressions=np.full(3, 100.0),
        candidate_topics=np.ones(3, np.int64),
        context=CandidateContext(np.ones(3, np.int64), np.ones(1, np.int64)),
        reshown=np.array([0.0, 1.0, 2.0]),
    )
    scores = ranker.score(top)
    assert np.all(np.diff(scores) < 0), scores


def test_appeal_compares_a_storys_clicks_with_what_its_slots_and_readers_would_give_any_story() -> None:
    """Readers click the top slot more and stories in their topic more, whatever the story: a
    story mostly listed on top has more clicks than the ones listed lower, yet the same appeal;
    a story that draws more clicks than its slots and readers explain has more."""
    rng = np.random.default_rng(3)
    listings, stories = [], []
    for _ in range(3000):
        fan = rng.random() < 0.5
        history = np.array([1, 1, 1]) if fan else np.array([2, 2])
        order = rng.permutation(6)
        if rng.random() < 0.8:  # story 0 (topic 1) is mostly listed on top
            order = np.concatenate([[0], order[order != 0]])
        shown_topics = np.where(order == 0, 1, 2)
        logit = -2.0 - 0.4 * np.arange(6) + np.where(shown_topics == history[0], 1.5, -1.0)
        logit[order == 5] += 1.0  # story 5 is the appealing one
        clicked_at = rng.random(6) < 1.0 / (1.0 + np.exp(-logit))
        listings.append((history, shown_topics, clicked_at))
        stories.append(order)
    p = expected_clicks(listings)
    assert len(p) == len(listings) and all(len(x) == 6 for x in p)
    clicks, expected = np.zeros(6), np.zeros(6)
    for order, (_, _, clicked_at), p_at in zip(stories, listings, p, strict=True):
        np.add.at(clicks, order, clicked_at.astype(float))
        np.add.at(expected, order, p_at)
    raw_ctr = clicks / len(listings)
    appeal = appeal_scores(clicks, expected)
    assert raw_ctr[0] > 1.5 * raw_ctr[1:5].mean(), "the top slot flatters story 0's click-through"
    assert abs(float(appeal[0] - appeal[1:5].mean())) < 0.15, "…but not its appeal"
    assert appeal[5] > appeal[1:5].max() + 0.3, "the story that draws more clicks has more appeal"
    assert appeal_scores(np.zeros(2), np.zeros(2)).tolist() == [0.0, 0.0], "unseen: neutral"


def test_training_rows_count_appeal_over_earlier_impressions_only() -> None:
    """A row's appeal comes from the impressions before it, as its click-through does: the
    first listing of a story reads 0 and a click moves only the later rows."""
    from models.nrms import Impression
    from tasks.features import LoggedImpression
    from tasks.news_ranking import training_rows

    def logged(ts: float, shown: list[int], clicked: list[bool]) -> LoggedImpression:
        imp = Impression(np.zeros(0, np.int64), np.asarray(shown, np.int64), np.asarray(clicked, bool))
        return LoggedImpression(f"u{ts}", ts, imp, np.zeros(len(shown)))

    log = [logged(1.0, [0, 1], [True, False]), logged(2.0, [0, 1], [False, False])]
    facts = ItemFacts(None, np.full(2, 0.0), np.ones(2, np.int64))
    x, _, clicks, _, expected = training_rows(log, facts, None, 2, 30.0)
    appeal = x[:, FEATURES.index("appeal")]
    assert appeal[:2].tolist() == [0.0, 0.0]
    assert appeal[2] > 0 > appeal[3], "story 0 was clicked above its expectation, story 1 below"
    none, topics = np.zeros(0, np.int64), np.ones(2, np.int64)
    first = expected_clicks(
        [(none, topics, np.array([True, False])), (none, topics, np.array([False, False]))]
    )[0]
    assert np.allclose(appeal[2:], appeal_scores(np.array([1.0, 0.0]), first), atol=1e-6)
    assert clicks.tolist() == [1.0, 0.0] and (expected > 0).all()


def test_training_rows_read_the_nrms_score_only_where_it_is_out_of_sample() -> None:
    """Every impression gives rows, but the NRMS score of an impression its fit learned from
    is replaced by the mean of the held-out ones: it carries no in-sample signal."""
    from models.nrms import Impression
    from tasks.features import LoggedImpression
    from tasks.news_ranking import training_rows

    class ItemScores:
        """Scores each candidate by its index, whatever the history (the NRMS interface)."""

        def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> list[np.ndarray]:
            return [np.asarray(candidates, dtype=np.float32) for _ in histories]

    def logged(ts: float, shown: list[int]) -> LoggedImpression:
        imp = Impression(np.zeros(0, np.int64), np.asarray(shown, np.int64), np.zeros(len(shown), bool))
        imp.clicked[0] = True
        return LoggedImpression(f"u{ts}", ts, imp, np.zeros(len(shown)))

    log = [logged(1.0, [0, 1]), logged(2.0, [2, 3]), logged(3.0, [4, 6])]
    facts = ItemFacts(None, np.zeros(7), np.ones(7, np.int64))
    x, labels, *_ = training_rows(log, facts, ItemScores(), 7, 30.0, nrms_from={2})
    column = x[:, FEATURES.index("nrms")]
    assert len(x) == 6 and len(labels["click"]) == 6, "every impression gives rows"
    assert column.tolist() == [5.0, 5.0, 5.0, 5.0, 4.0, 6.0]
    x_all, *_ = training_rows(log, facts, ItemScores(), 7, 30.0)
    assert x_all[:, FEATURES.index("nrms")].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 6.0]
