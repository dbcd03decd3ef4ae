"""Simulated readers through the real service, and the A/B harness (issue 15, items 1 and 5).

One news home built the real way (demo outlets on 127.0.0.1 → scrape → morning harvest →
nightly), then: readers over HTTP land in the event log and the impression log and a
nightly ingests them; a seed gives the same decisions when the service answers the same;
the ``ab-test`` flow reports both arms with intervals, splits by session hash, and tells a
service that learns from the session from one that does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.feeds import FEED_UPDATE_SECONDS, DemoFeedServer
from serving.events import read_events
from storage.artifacts import ArtifactStore
from storage.settings import catalogue_settings
from storage.warehouse import connect
from tasks.ab import ServiceThread, parse_arm
from tasks.simulate import (
    ReaderConfig,
    personas_for,
    simulate,
    stable_arm,
    warehouse_items,
)

pytestmark = pytest.mark.slow  # flows on a Prefect API, nightlies, servers


@pytest.fixture(scope="module")
def news(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A news home with a first bundle; the demo outlets keep running on a clock the test moves."""
    from flows.harvest import morning_harvest
    from flows.nightly import nightly_refresh
    from flows.scrape import scrape_feeds

    home = tmp_path_factory.mktemp("news-home")
    clock = [datetime.now(UTC) - timedelta(days=1)]
    with DemoFeedServer(port=0, days=1, clock=lambda: clock[0]) as srv:
        overrides: dict[str, Any] = {
            "home": str(home),
            "feeds": {"feeds": srv.feed_configs(), "allow_hosts": ["127.0.0.1"]},
            "harvest": {"pool_size": 40},
            "model": {"name": "itemknn-recency"},  # one cheap model: training is not the point
            "serving": {"reload_check_s": 0.1},
        }
        scrape_feeds(catalogue="news", overrides=overrides)
        morning_harvest(catalogue="news", overrides=overrides)
        nightly_refresh(catalogue="news", overrides=overrides)
        yield {"overrides": overrides, "clock": clock}


def test_simulated_readers_reach_the_event_log_the_impressions_and_the_nightly(news: dict[str, Any]) -> None:
    from flows.ab import between_days

    overrides, clock = news["overrides"], news["clock"]
    settings = catalogue_settings("news", overrides)
    crowd = personas_for(warehouse_items(settings), 8, seed=11, config=ReaderConfig().persona)
    with connect(settings.warehouse_path, read_only=True) as con:
        before = con.execute("SELECT count(*) FROM items").fetchone()
    assert before is not None

    def publish(day: int) -> None:  # the outlets' next batches, then the scrape and a nightly
        clock[0] += timedelta(seconds=4 * FEED_UPDATE_SECONDS)

    with ServiceThread(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        result = simulate(
            lambda _s: ("live", client),
            crowd,
            days=2,
            seed=11,
            run="log",
            between_days=between_days("news", overrides, nightly_every=1, before=publish),
            progress=False,
        )
        health = client.get("/health").json()

    summary = result.summary()
    assert [d.day for d in summary] == [0, 1] and all(d.visits > 0 for d in summary)
    actions = [(v.session, a) for v in result.visits for a in v.actions]
    assert {a.event for _, a in actions} >= {"click", "dwell", "skip"}
    assert sum(d.clicks for d in summary) > 0

    # Every decision is one event in the log, under the persona's session.
    logged = [e for e in read_events(settings.events_dir) if e.session.startswith("sim-log-")]
    assert sorted((e.session, e.item_id, e.event) for e in logged) == sorted(
        (s, a.item_id, a.event) for s, a in actions
    )
    assert all(e.dwell_s and e.dwell_s > 0 for e in logged if e.event == "dwell")

    # Between the days: new stories were scraped, and the nightly built a bundle from the log.
    with connect(settings.warehouse_path, read_only=True) as con:
        after = con.execute("SELECT count(*) FROM items").fetchone()
        interactions = con.execute(
            "SELECT event_type, label FROM interactions WHERE session_id LIKE 'sim-log-%'"
        ).fetchall()
        served = {
            r[0]: r[1] for r in con.execute("SELECT request_id, item_ids FROM served_impressions").fetchall()
        }
    assert after is not None and after[0] > before[0]
    day_one = [v for v in result.visits if v.day == 0]
    assert len(interactions) == sum(len(v.actions) for v in day_one)  # the nightly after day 1 ingested them
    assert all(label != "positive" for event, label in interactions if event == "skip")
    for visit in day_one:  # each visit's /feed answer is an impression the nightly ingested
        assert visit.request_id is not None and list(served[visit.request_id]) == list(visit.shown)
    assert health["status"] == "ok"


def test_a_seed_gives_the_same_decisions_for_the_same_answers(news: dict[str, Any]) -> None:
    """With session state off and no exploration the service answers every new session the
    same: two runs of one seed (other session names) decide the same; another seed does not."""
    overrides = {
        **news["overrides"],
        "serving": {"reload_check_s": 0.1, "update_mode": "none", "exploration": False},
    }
    settings = catalogue_settings("news", overrides)
    items = warehouse_items(settings)
    with ServiceThread(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def run(seed: int, name: str) -> list[tuple[int, str, str, int, str]]:
            crowd = personas_for(items, 6, seed=seed, config=ReaderConfig().persona)
            out = simulate(lambda _s: ("live", client), crowd, days=1, seed=seed, run=name, progress=False)
            return out.decisions()

        first, again, other = run(5, "det-a"), run(5, "det-b"), run(6, "det-c")
    assert first and first == again
    assert other != first


def test_ab_reports_both_arms_split_by_session_and_tells_a_worse_arm(
    news: dict[str, Any], tmp_path: Path
) -> None:
    from flows.ab import ab_test

    outcome = ab_test(
        catalogue="news",
        a="learns:serving.exploration=false",
        b="frozen:serving.update_mode=none,serving.exploration=false",
        personas=40,
        days=2,
        seed=3,
        run="abtest",
        scrape=False,
        overrides=news["overrides"],
    )
    assert outcome.arms == ["learns", "frozen"]
    per = outcome.comparison["arms"]
    for arm in outcome.arms:
        assert per[arm]["sessions"] > 0 and per[arm]["visits"] > 0
        for metric in ("ctr", "like_rate", "skip_rate", "dwell_s", "coverage", "clicked_age_h"):
            lo, hi = per[arm][metric]["ci95"]
            assert lo <= per[arm][metric]["value"] <= hi, (arm, metric)
    visiting = per["learns"]["sessions"] + per["frozen"]["sessions"]
    assert 30 <= visiting <= 40  # a persona may not visit at all (Poisson visits)

    # The arms differ only in learning from the session (exploration's random picks would make
    # the sign of the lift a draw at 40 readers). The frozen arm lists the same stories to
    # everyone, visit after visit: readers click less and it covers a small, clearly separate
    # part of the catalogue.
    assert outcome.comparison["ctr_lift"] < 0
    assert per["frozen"]["coverage"]["ci95"][1] < per["learns"]["coverage"]["ci95"][0]

    report = Path(outcome.report_dir)
    assert report.parent == Path(news["overrides"]["home"]) / "news" / "ab"
    assert (report / "report.png").stat().st_size > 0
    text = (report / "report.md").read_text()
    assert "| click-through (clicks / listed) |" in text and "frozen" in text
    saved = json.loads((report / "result.json").read_text())
    assert saved["arms"] == per

    # The split: every session met only the arm its hash names, and that arm answered it
    # (the learning arm applied the session's events, the frozen one never did).
    assert len(outcome.sessions) == visiting and saved["sessions"] == outcome.sessions
    for session, row in outcome.sessions.items():
        assert row["arm"] == stable_arm(session, ("learns", "frozen"))
    assert all(r["session_events"] == 0 for r in outcome.sessions.values() if r["arm"] == "frozen")
    assert any(r["session_events"] > 0 for r in outcome.sessions.values() if r["arm"] == "learns")
    settings = catalogue_settings("news", news["overrides"])
    logged = set()
    for path in settings.impressions_dir.glob("*.jsonl"):
        logged |= {json.loads(line)["session"] for line in path.read_text().splitlines() if line}
    assert set(outcome.sessions) <= logged  # both arms logged their impressions
    assert parse_arm("x:serving.update_mode=none", "a").overrides == {"serving": {"update_mode": "none"}}


def test_a_returning_readers_feed_reaches_beyond_the_pool(news: dict[str, Any]) -> None:
    """Three clicks make a reader personal: their feed ranks today's pool together with their
    best text matches among the catalogue's other recent stories (``serving.feed_reach``);
    with it at 0, the pool alone. Through ``/feed`` and ``/interact`` over HTTP."""
    settings = catalogue_settings("news", news["overrides"])
    with connect(settings.warehouse_path, read_only=True) as con:
        pool = {str(r[0]) for r in con.execute("SELECT item_id FROM daily_pool").fetchall()}
        catalogue = {str(r[0]) for r in con.execute("SELECT item_id FROM items").fetchall()}
    assert len(catalogue) > len(pool) + 20

    def feed_after_three_clicks(overrides: dict[str, Any], session: str) -> dict[str, Any]:
        arm = catalogue_settings("news", overrides)
        with ServiceThread(arm) as url, httpx.Client(base_url=url, timeout=60) as client:
            first = client.get("/feed", params={"k": 10, "session": session}).json()
            for item in first["items"][:3]:
                answer = client.post(
                    "/interact", json={"item_id": item["item_id"], "event": "click", "session": session}
                )
                assert answer.status_code == 200, answer.text
            return client.get("/feed", params={"k": 20, "session": session}).json()

    reached = feed_after_three_clicks(news["overrides"], "reach-on")
    assert reached["strategy"] == "personalized" and "reach" in reached["cascade"]["pipeline"], reached[
        "cascade"
    ]
    listed = {i["item_id"] for i in reached["items"]}
    assert listed - pool, "a story beyond the pool made the reader's list"
    assert listed <= catalogue

    off = {**news["overrides"], "serving": {**news["overrides"]["serving"], "feed_reach": 0}}
    pooled = feed_after_three_clicks(off, "reach-off")
    assert pooled["strategy"] == "personalized" and "reach" not in pooled["cascade"]["pipeline"]
    assert {i["item_id"] for i in pooled["items"]} <= pool


def test_the_commands_reach_the_service_and_the_flow(
    news: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recflow simulate` against a running service (--base-url) and `recflow ab`, as a user runs them."""
    from typer.testing import CliRunner

    from deployments.cli import app

    overrides = news["overrides"]
    monkeypatch.setenv("RECFLOW_HOME", overrides["home"])
    settings = catalogue_settings("news", overrides)
    with ServiceThread(settings) as url:
        done = CliRunner().invoke(
            app,
            ["simulate", "--personas", "5", "--days", "1", "--seed", "2", "--base-url", url, "--run", "cli"],
            env={"COLUMNS": "200"},
        )
    assert done.exit_code == 0, done.output
    assert "day 1:" in done.output and f"run cli against {url}" in done.output
    assert any(e.session.startswith("sim-cli-") for e in read_events(settings.events_dir))

    oldest = ArtifactStore(settings.bundles_dir).versions()[0]
    done = CliRunner().invoke(
        app,
        [
            "ab",
            "--a",
            f"one:bundle={oldest}",
            "--b",
            "two:serving.mmr_lambda=0.5",
            "--personas",
            "6",
            "--seed",
            "2",
            "--run",
            "cliab",
        ],
        env={"COLUMNS": "200"},
    )
    assert done.exit_code == 0, done.output
    assert "click-through" in done.output
    report = json.loads((settings.catalogue_dir / "ab" / "cliab" / "result.json").read_text())
    assert report["bundle"] == oldest  # arm one served the bundle it was pinned to

    unpublished = CliRunner().invoke(app, ["ab", "--a", "bundle=20000101T000000-000", "--b", ""])
    assert unpublished.exit_code == 2 and "is not published" in unpublished.output

    bad = CliRunner().invoke(app, ["ab", "--a", "x:serving.mmr_lambda", "--b", "", "--personas", "4"])
    assert bad.exit_code == 2 and "is not key=value" in bad.output
