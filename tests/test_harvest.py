"""Morning harvest, demand analysis and event-log ingestion on a real scraped warehouse."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from demo.feeds import DemoFeedServer
from demo.stories import generate_stories
from storage.settings import FeedsSettings, HarvestSettings, Settings
from storage.warehouse import connect
from tasks.demand import compute_wishlist
from tasks.events import ingest_events
from tasks.harvest import harvest, latest_pool
from tasks.scrape import configured_feeds, scrape, wished_feeds

pytestmark = pytest.mark.slow  # embeds thousands of demo stories

NOW = datetime(2026, 11, 20, 9, 17, tzinfo=UTC)
SERVED_AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # the demo server publishes half-hourly


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A news warehouse filled by scraping one day of the demo feeds (read by copying it)."""
    path = tmp_path_factory.mktemp("news") / "warehouse.duckdb"
    with DemoFeedServer(port=0, clock=lambda: NOW, days=1) as srv:
        con = connect(path)
        scrape(con, FeedsSettings(feeds=srv.feed_configs(), allow_hosts=["127.0.0.1"]), now=NOW)
        con.close()
    return path


@pytest.fixture
def con(scraped: Path, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    copy = tmp_path / "warehouse.duckdb"
    copy.write_bytes(scraped.read_bytes())
    c = connect(copy)
    yield c
    c.close()


def small_pool(**extra: object) -> HarvestSettings:
    return HarvestSettings(**({"pool_size": 40, "window_hours": 12} | extra))


def story_of_url() -> dict[str, tuple[str, str]]:
    return {s.url: (s.story_id, s.topic) for s in generate_stories(7, SERVED_AT, days=1)}


def test_pool_is_fresh_diverse_and_collapses_duplicates(con: duckdb.DuckDBPyConnection) -> None:
    settings = small_pool(max_topic_share=0.15, max_source_share=0.15)
    pool = harvest(con, settings, Settings().embedding, now=NOW)
    k = settings.pool_size
    assert len(pool.rows) == k and [r.rank for r in pool.rows] == list(range(1, k + 1))
    assert pool.collapsed > 0 and pool.stories < pool.candidates
    topics, sources = Counter(r.topic for r in pool.rows), Counter(r.source for r in pool.rows)
    assert max(topics.values()) <= int(0.15 * k) and max(sources.values()) <= int(0.15 * k)
    assert len(topics) >= 10
    assert all(r.reason.startswith("fresh ") and f"topic {r.topic}" in r.reason for r in pool.rows)
    truth = story_of_url()
    urls = dict(con.execute("SELECT item_id, url FROM items").fetchall())
    stories = [truth[urls[r.item_id]][0] for r in pool.rows]
    assert len(set(stories)) >= k - 1  # the same story from several outlets appears (almost) never twice
    assert all(truth[urls[r.item_id]][1] == r.topic for r in pool.rows)  # topic from the feed category
    assert any("outlets (" in r.reason and "collapsed)" in r.reason for r in pool.rows)
    published = dict(con.execute("SELECT item_id, published_ts FROM items").fetchall())
    assert all(NOW.timestamp() - published[r.item_id] <= 12 * 3600 for r in pool.rows)
    # Fresh first: the top ten are younger on average than the bottom ten.
    ages = [NOW.timestamp() - published[r.item_id] for r in pool.rows]
    assert sum(ages[:10]) < sum(ages[-10:])

    stored = latest_pool(con)
    assert stored["item_id"].tolist() == [r.item_id for r in pool.rows]
    assert str(stored["pool_date"].iloc[0])[:10] == str(NOW.date())
    again = harvest(con, settings, Settings().embedding, now=NOW)  # re-run replaces the day's pool
    assert con.execute("SELECT count(*) FROM daily_pool").fetchall()[0][0] == k
    assert [r.item_id for r in again.rows] == [r.item_id for r in pool.rows]


def test_caps_are_relaxed_only_when_topics_run_out(con: duckdb.DuckDBPyConnection) -> None:
    pool = harvest(con, small_pool(max_topic_share=0.02, max_source_share=1.0), Settings().embedding, now=NOW)
    relaxed = [r for r in pool.rows if "caps relaxed" in r.reason]
    assert len(pool.rows) == 40
    assert len(pool.rows) - len(relaxed) == len(
        {r.topic for r in pool.rows if "caps relaxed" not in r.reason}
    )


def write_events(directory: Path, name: str, events: list[dict], torn: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(e) + "\n" for e in events) + torn)
    return path


def event(
    item_id: str, kind: str = "click", *, session: str = "s1", user: str | None = None, ts: float = 0
) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "ts": ts or NOW.timestamp() - 3600,
        "session": session,
        "user_id": user,
        "item_id": item_id,
        "event": kind,
        "dwell_s": 12.5 if kind == "dwell" else None,
    }


def test_event_log_ingestion_is_idempotent(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    items = [r[0] for r in con.execute("SELECT item_id FROM items ORDER BY item_id LIMIT 3").fetchall()]
    log = tmp_path / "events"
    good = [event(items[0]), event(items[1], "skip", user="u7"), event(items[2], "dwell")]
    write_events(log, "worker-1.jsonl", good, torn='{"event_id": "half')
    with (log / "worker-2.jsonl").open("w") as fh:
        fh.write(json.dumps(good[0]) + "\n")  # the same event id in another file
        fh.write("not json\n")
        fh.write(json.dumps(event("no-such-item")) + "\n")
        fh.write(json.dumps({**event(items[0]), "event": "teleport"}) + "\n")
    first = ingest_events(con, log)
    assert first.added == 3
    rows = con.execute(
        "SELECT user_id, event_type, value, dwell_s, session_id, source_file FROM interactions ORDER BY seq, event_type"
    ).fetchall()
    assert ("session:s1", "click", 1.0, None, "s1", "worker-1.jsonl") in rows
    assert ("u7", "skip", 0.0, None, "s1", "worker-1.jsonl") in rows
    assert ("session:s1", "dwell", 1.0, 12.5, "s1", "worker-1.jsonl") in rows
    labels = dict(con.execute("SELECT event_type, label FROM interactions").fetchall())
    assert labels == {"click": "positive", "skip": "negative", "dwell": "weak_negative"}  # 12.5 s < 30 s
    by_file = {f.file: f for f in first.files}
    assert by_file["worker-1.jsonl"].torn_tail and by_file["worker-2.jsonl"].duplicates == 1
    assert by_file["worker-2.jsonl"].malformed == 2 and by_file["worker-2.jsonl"].quarantined == 1
    rules = {
        r[0] for r in con.execute("SELECT rule FROM quarantine WHERE table_name = 'interactions'").fetchall()
    }
    assert any(r.startswith("malformed event: not JSON") for r in rules)
    assert any("teleport" in r for r in rules)
    assert "expect_column_values_to_not_be_in_set(item_id)" in rules

    assert ingest_events(con, log).added == 0  # nothing new
    # The torn line is completed by the writer later; the next night reads it, and only it.
    late = event(items[1], "like")
    with (log / "worker-1.jsonl").open("a") as fh:
        fh.write("\n" + json.dumps(late) + "\n")
    third = ingest_events(con, log)
    assert third.added == 1
    assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 4
    assert ingest_events(con, log).added == 0
    quarantined = con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
    con.execute("DELETE FROM event_log_offsets")  # a full re-read adds nothing either
    assert ingest_events(con, log).added == 0
    assert con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0] == quarantined


def test_demand_fills_the_wishlist_and_steers_scraping_and_harvest(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    embedding = Settings().embedding
    harvest(con, small_pool(), embedding, now=NOW)
    sports = [
        r[0]
        for r in con.execute(
            "SELECT item_id FROM items WHERE categories[1] = 'sports' ORDER BY published_ts DESC LIMIT 10"
        ).fetchall()
    ]
    others = [
        r[0]
        for r in con.execute("SELECT item_id FROM items WHERE categories[1] <> 'sports' LIMIT 10").fetchall()
    ]
    events = [event(i, session=f"s{n}") for n in range(6) for i in sports]
    events += [event(i, session=f"s{n}") for n in range(2) for i in others]
    events += [event(i, "skip", session="s9") for i in others]
    write_events(tmp_path / "events", "w.jsonl", events)
    assert ingest_events(con, tmp_path / "events").added == len(events)

    wishes = compute_wishlist(con, 7, now=NOW, min_ratio=1.25, min_events=20)
    assert [(w.kind, w.value) for w in wishes if w.kind == "topic"] == [("topic", "sports")]
    sports_wish = next(w for w in wishes if w.value == "sports")
    assert sports_wish.events == 60 and sports_wish.engagement_share == pytest.approx(60 / 80)
    assert con.execute("SELECT kind, value FROM wishlist WHERE kind = 'topic'").fetchall() == [
        ("topic", "sports")
    ]

    # The scraper: feeds of the wished topic are wished (fetched first and more often).
    feeds = configured_feeds(FeedsSettings())
    wished = wished_feeds(con, feeds)
    by_name = {f.name: f.url for f in feeds}
    assert by_name["Full Time"] in wished and by_name["The Touchline"] in wished
    assert by_name["Capitol Brief"] not in wished

    # The harvest reserves room for the wished topic.
    pool = harvest(con, small_pool(reserved_wishlist_share=0.2, max_topic_share=0.3), embedding, now=NOW)
    reserved = [r for r in pool.rows if "reserved for the wishlist" in r.reason]
    wished_sources = {w.value for w in wishes if w.kind == "source"}
    assert len(reserved) == 8 and all(r.topic == "sports" or r.source in wished_sources for r in reserved)
    assert sum(r.topic == "sports" for r in reserved) >= 4
    assert [r.rank for r in reserved] == list(range(1, 9))
    assert sum(r.topic == "sports" for r in pool.rows) <= int(0.3 * 40)
    assert "engagement" in " ".join(r.reason for r in pool.rows)


def test_only_due_runs_fetch_wished_feeds_more_often(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("INSERT INTO wishlist VALUES ('topic', 'sports', 0.5, 0.1, 5.0, now())")
    with DemoFeedServer(port=0, clock=lambda: NOW, days=1) as srv:
        settings = FeedsSettings(
            feeds=srv.feed_configs(),
            allow_hosts=["127.0.0.1"],
            refresh_minutes=60,
            wishlist_boost=2.0,
            max_per_host=1,
        )
        scrape(con, settings, now=NOW)
        first_requested = list(srv.stats.by_path)[:2]  # one connection: requests in queue order
        half_hour = scrape(con, settings, only_due=True, now=NOW + timedelta(minutes=31))
        hour = scrape(con, settings, only_due=True, now=NOW + timedelta(minutes=62))
    assert set(first_requested) == {"/feeds/full-time.xml", "/feeds/the-touchline.xml"}  # wished first
    fetched = {f.name for f in half_hour.feeds if f.status != "not-due"}
    assert {"Full Time", "The Touchline"} <= fetched and "Capitol Brief" not in fetched
    assert all(f.wished for f in half_hour.feeds if f.status != "not-due")
    assert all(f.status != "not-due" for f in hour.feeds)
