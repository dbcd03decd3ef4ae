"""The simulated reader's decisions and the A/B arithmetic, without a service (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.ab import arm_metrics, compare, parse_arm
from tasks.personas import Persona
from tasks.simulate import (
    Action,
    Memory,
    ReaderConfig,
    SimulationResult,
    Visit,
    decide,
    drifted,
    stable_arm,
)

SPORTS_FAN = Persona(
    user_id="persona-0000",
    taste={"sports": 0.9, "politics": 0.05, "science": 0.05},
    keywords=("league",),
    visits_per_day=2.0,
    click_bias=-1.0,
    reading_s=40.0,
)
NOW = 1_795_420_800.0


def slate(topics: list[str]) -> list[dict[str, str]]:
    return [
        {
            "item_id": f"s{i}",
            "title": f"{t} story {i}",
            "summary": "",
            "topic": t,
            "published": "2026-11-23T05:00:00Z",
        }
        for i, t in enumerate(topics)
    ]


def test_decisions_follow_the_seed_and_the_reader_never_reads_a_story_twice() -> None:
    items = slate(["sports", "politics", "sports", "science", "sports", "politics"] * 2)
    first = decide(SPORTS_FAN, SPORTS_FAN.taste, items, NOW, np.random.default_rng(1), ReaderConfig())
    again = decide(SPORTS_FAN, SPORTS_FAN.taste, items, NOW, np.random.default_rng(1), ReaderConfig())
    assert first == again

    memory = Memory()
    clicked: set[str] = set()
    for n in range(30):
        actions = decide(
            SPORTS_FAN, SPORTS_FAN.taste, items, NOW, np.random.default_rng(n), ReaderConfig(), memory
        )
        now_clicked = {a.item_id for a in actions if a.event == "click"}
        assert not now_clicked & clicked  # read once, never clicked again
        clicked |= now_clicked
    assert memory.read == clicked and clicked


def test_taste_and_position_shape_the_clicks() -> None:
    config = ReaderConfig(position_bias=0.0, fatigue=0.0)
    items = slate(["sports"] * 10 + ["politics"] * 10)
    clicks = {"sports": 0, "politics": 0}
    for n in range(200):
        for a in decide(SPORTS_FAN, SPORTS_FAN.taste, items, NOW, np.random.default_rng(n), config):
            if a.event == "click":
                clicks[items[a.position]["topic"]] += 1
    assert clicks["sports"] > 3 * clicks["politics"]

    biased = ReaderConfig(position_bias=1.5, fatigue=0.0)
    top = bottom = 0
    for n in range(300):
        for a in decide(
            SPORTS_FAN, SPORTS_FAN.taste, slate(["sports"] * 10), NOW, np.random.default_rng(n), biased
        ):
            top += a.event == "click" and a.position < 2
            bottom += a.event == "click" and a.position >= 8
    assert top > 3 * bottom


def test_tastes_drift_but_stay_a_distribution() -> None:
    taste = SPORTS_FAN.taste
    moved = drifted(taste, 0.3, np.random.default_rng(0), 0.3)
    assert moved.keys() == taste.keys() and abs(sum(moved.values()) - 1.0) < 1e-9
    assert moved != taste and drifted(taste, 0.0, np.random.default_rng(0), 0.3) == pytest.approx(taste)


def test_the_split_is_a_stable_hash_of_the_session() -> None:
    sessions = [f"sim-x-persona-{i:04d}" for i in range(400)]
    arms = [stable_arm(s) for s in sessions]
    assert arms == [stable_arm(s) for s in sessions]
    assert 150 < arms.count("a") < 250


def test_arm_specs_parse_and_bad_ones_are_named() -> None:
    arm = parse_arm("control:serving.update_mode=none,serving.mmr_lambda=0.5", "b")
    assert arm.name == "control"
    assert arm.overrides == {"serving": {"update_mode": "none", "mmr_lambda": 0.5}}
    assert parse_arm("v1:bundle=20261127T024459-000", "a").overrides == {
        "serving": {"bundle_version": "20261127T024459-000"}
    }
    assert parse_arm("", "a").overrides == {} and parse_arm("", "a").name == "a"
    assert parse_arm("serving.exploration=false", "b") == parse_arm("b:serving.exploration=false", "x")
    with pytest.raises(ValueError, match=r"'serving\.update_mode' is not key=value"):
        parse_arm("serving.update_mode", "a")
    with pytest.raises(ValueError, match="reader config"):
        ReaderConfig(drift=2.0)


def _visits(arm: str, sessions: int, clicks_per_visit: int) -> list[Visit]:
    out = []
    for s in range(sessions):
        shown = tuple(f"{arm}{s}-{i}" for i in range(10))
        actions = tuple(Action(shown[i], i, "click") for i in range(clicks_per_visit))
        out.append(Visit(0, f"p{s}", f"{arm}-{s}", arm, None, shown, (1.0,) * 10, actions))
    return out


def test_metrics_carry_intervals_and_separate_a_clearly_worse_arm() -> None:
    result = SimulationResult(seed=0, personas=60, days=1, visits=_visits("a", 30, 3) + _visits("b", 30, 1))
    comparison = compare(result, ("a", "b"), catalogue_size=1000, seed=0)
    a, b = comparison["arms"]["a"], comparison["arms"]["b"]
    assert a["ctr"]["value"] == pytest.approx(0.3) and b["ctr"]["value"] == pytest.approx(0.1)
    assert comparison["ctr_lift"] == pytest.approx(-2 / 3, abs=1e-3)
    assert not comparison["ctr_intervals_overlap"]
    assert a["coverage"]["value"] == pytest.approx(0.3) and a["clicked_age_h"]["value"] == pytest.approx(1.0)
    # Every session lists its own ten stories: a resample of the 30 repeats some and misses
    # about a third, so raw percentiles would all lie below 0.3; the interval is bias-corrected.
    lo, hi = a["coverage"]["ci95"]
    assert lo < 0.3 < hi and hi - lo < 0.15
    assert arm_metrics([], 10, 0)["sessions"] == 0


def test_click_through_by_visit_counts_each_readers_visits_in_order() -> None:
    """A reader's first visit lands in bucket 1, the fourth and later ones in 4+; the other arm
    and its readers are counted apart."""
    first = _visits("a", 4, 0)  # four readers' first visits, no clicks
    again = [v for v in _visits("a", 4, 2) for _ in range(4)]  # each reader 4 more visits, 2 clicks
    other = _visits("b", 2, 5)
    result = SimulationResult(seed=0, personas=6, days=1, visits=first + other + again)
    by_visit = compare(result, ("a", "b"), catalogue_size=1000, seed=0)["ctr_by_visit"]
    assert by_visit["a"]["1"] == {"listed": 40.0, "ctr": 0.0}
    assert by_visit["a"]["2"]["ctr"] == pytest.approx(0.2) and by_visit["a"]["3"]["listed"] == 40.0
    assert by_visit["a"]["4+"] == {"listed": 80.0, "ctr": 0.2}
    assert by_visit["b"]["1"] == {"listed": 20.0, "ctr": 0.5} and by_visit["b"]["2"]["listed"] == 0.0
