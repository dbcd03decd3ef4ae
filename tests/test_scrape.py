"""Scraping against real feeds served on 127.0.0.1 by the test: formats, duplicates, bad feeds,
conditional GET, expectations, feed health."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from demo.feeds import BROKEN_FEEDS, DemoFeedServer, ServedDocument, broken_feed_configs
from demo.stories import OUTLETS, TOPICS, generate_stories
from storage.settings import FeedsSettings, Settings
from storage.warehouse import connect
from tasks.scrape import canonical_url, clean_text, resume_feeds, scrape

NOW = datetime(2026, 11, 20, 9, 17, tzinfo=UTC)

RSS2 = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Alpha Times</title><link>https://alpha.example/</link>
<item><title>Harbour bridge reopens after repairs</title>
<link>https://alpha.example/news/bridge?utm_source=rss&amp;utm_medium=feed&amp;id=7#top</link>
<description>&lt;p&gt;The &lt;b&gt;bridge&lt;/b&gt; reopened on Monday &amp;amp; traffic is flowing.&lt;/p&gt;</description>
<category>Local</category><pubDate>Thu, 19 Nov 2026 08:30:00 +0200</pubDate>
<enclosure url="https://alpha.example/img/bridge.jpg" length="1000" type="image/jpeg"/></item>
<item><title>Council approves new cycle lanes</title><link>https://alpha.example/news/cycle-lanes</link>
<description>Twelve kilometres of lanes are planned.</description></item>
<item><title>Shared wire story about rail fares</title><link>https://alpha.example/wire/rail-fares</link>
<description>Rail fares will rise by three percent in January.</description>
<pubDate>Thu, 19 Nov 2026 07:00:00 GMT</pubDate></item>
</channel></rss>
"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Beta Post</title><id>urn:beta</id>
<updated>2026-11-19T10:00:00Z</updated>
<entry><title type="html">Harbour bridge: what reopening means for commuters</title>
<link rel="alternate" href="https://alpha.example/news/bridge?id=7&amp;fbclid=abc"/>
<id>urn:beta:1</id><updated>2026-11-19T09:00:00Z</updated><summary>Carried from Alpha Times.</summary>
<category term="Transport"/></entry>
<entry><title>Rail fares rise three percent</title><link href="https://beta.example/rail-fares-2027"/>
<id>urn:beta:2</id><updated>2026-11-19T07:05:00Z</updated>
<summary>Shared wire story about rail fares</summary></entry>
<entry><title>Ｆｕｌｌｗｉｄｔｈ title, café</title><link href="https://beta.example/unicode"/>
<id>urn:beta:3</id><published>2026-11-19T06:00:00-05:00</published><summary>Text.</summary></entry>
</feed>
"""

RSS1 = """<?xml version="1.0" encoding="utf-8"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
 xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel rdf:about="https://gamma.example/rss"><title>Gamma</title><link>https://gamma.example/</link>
<description>Gamma</description><items><rdf:Seq><rdf:li rdf:resource="https://gamma.example/a"/></rdf:Seq></items>
</channel>
<item rdf:about="https://gamma.example/a"><title>Gamma story in RDF</title><link>https://gamma.example/a</link>
<description>An RSS 1.0 item.</description><dc:date>2026-11-19T05:00:00Z</dc:date><dc:subject>Science</dc:subject>
</item></rdf:RDF>
"""

# Shared wire text: the same title and summary under another URL (merged by content hash).
WIRE = """<?xml version="1.0"?><rss version="2.0"><channel><title>Delta</title><link>https://delta.example/</link>
<item><title>Shared wire story about rail fares</title><link>https://delta.example/2026/rail</link>
<description>Rail fares will rise by three percent in January.</description>
<pubDate>Thu, 19 Nov 2026 07:10:00 GMT</pubDate></item></channel></rss>
"""

BAD_ENTRIES = """<?xml version="1.0"?><rss version="2.0"><channel><title>Epsilon</title><link>https://e.example/</link>
<item><title>A perfectly fine entry</title><link>https://e.example/fine</link></item>
<item><title></title><link>https://e.example/untitled</link><description>no title</description></item>
<item><title>Link is not a web address</title><link>javascript:alert(1)</link></item>
<item><title>From the future</title><link>https://e.example/future</link>
<pubDate>Sat, 01 Jan 2050 00:00:00 GMT</pubDate></item>
</channel></rss>
"""


@pytest.fixture
def server() -> Iterator[DemoFeedServer]:
    with DemoFeedServer(port=0, clock=lambda: NOW, days=1, slow_seconds=3.0) as srv:
        for path, body, ctype in [
            ("/alpha.xml", RSS2, "application/rss+xml"),
            ("/beta.xml", ATOM, "application/atom+xml"),
            ("/gamma.rdf", RSS1, "application/rdf+xml"),
            ("/delta.xml", WIRE, "application/rss+xml"),
            ("/epsilon.xml", BAD_ENTRIES, "application/rss+xml"),
        ]:
            srv.add_document(path, ServedDocument(body.encode(), ctype, last_modified=NOW))
        yield srv


def feeds_settings(feeds: list[dict], **extra: object) -> FeedsSettings:
    """Short timeouts and retries: the bad cases must end quickly. The test servers listen on
    loopback, which feeds may reach only when allowed."""
    base: dict[str, object] = {
        "feeds": feeds,
        "allow_hosts": ["127.0.0.1"],
        "read_timeout_s": 1.0,
        "total_timeout_s": 4.0,
        "retries": 1,
        "backoff_s": 0.05,
        "max_bytes": 1_000_000,
        "pause_after_failures": 3,
    }
    return FeedsSettings(**(base | extra))


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = connect(tmp_path / "warehouse.duckdb")
    yield c
    c.close()


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def fixture_feeds(srv: DemoFeedServer) -> list[dict]:
    return [
        {"url": srv.base_url + "/alpha.xml", "name": "Alpha Times", "category": "city"},
        {"url": srv.base_url + "/beta.xml", "name": "Beta Post", "category": None},
        {"url": srv.base_url + "/gamma.rdf", "name": "Gamma", "category": None},
        {"url": srv.base_url + "/delta.xml", "name": "Delta", "category": "economy"},
    ]


def test_canonical_url_drops_tracking_and_normalizes() -> None:
    assert (
        canonical_url("HTTPS://News.Example:443/a/b?utm_source=x&b=2&a=1&fbclid=z#frag")
        == "https://news.example/a/b?a=1&b=2"
    )
    assert (
        canonical_url("/story?id=3", "http://host.example:8080/feed.xml")
        == "http://host.example:8080/story?id=3"
    )


def test_clean_text_strips_html_and_normalizes_unicode() -> None:
    assert (
        clean_text("<p>Hello <b>world</b> &amp; <script>x()</script>friends</p>") == "Hello world & friends"
    )
    assert clean_text("Ｆｕｌｌ\u00a0width") == "Full width"


def test_formats_normalization_and_duplicates(server: DemoFeedServer, con: duckdb.DuckDBPyConnection) -> None:
    summary = scrape(con, feeds_settings(fixture_feeds(server)), now=NOW)
    assert {f.name: f.status for f in summary.feeds} == dict.fromkeys(
        ["Alpha Times", "Beta Post", "Gamma", "Delta"], "ok"
    )
    items = {
        r[0]: r[1:]
        for r in rows(con, "SELECT url, title, categories, description, source, published_ts FROM items")
    }
    bridge = items["https://alpha.example/news/bridge?id=7"]
    assert bridge[0] == "Harbour bridge reopens after repairs"
    assert bridge[1] == ["local"]  # the entry's own category wins over the feed default
    assert bridge[2] == "The bridge reopened on Monday & traffic is flowing."
    assert bridge[4] == int(datetime(2026, 11, 19, 6, 30, tzinfo=UTC).timestamp())  # +0200 → UTC
    assert items["https://alpha.example/news/cycle-lanes"][1] == ["city"]  # feed default category
    assert items["https://gamma.example/a"][1] == ["science"]  # RSS 1.0 dc:subject
    assert items["https://beta.example/unicode"][0] == "Fullwidth title, café"
    assert items["https://beta.example/unicode"][4] == int(datetime(2026, 11, 19, 11, tzinfo=UTC).timestamp())

    # Same article in two feeds: Beta links Alpha's bridge story with other tracking params → one item.
    outlets = rows(
        con,
        "SELECT o.source, o.merged_by, o.enclosure_url, o.date_estimated, o.published_ts FROM item_outlets o "
        "JOIN items i USING (item_id) WHERE i.url = 'https://alpha.example/news/bridge?id=7' ORDER BY o.source",
    )
    assert [(o[0], o[1]) for o in outlets] == [("Alpha Times", "new"), ("Beta Post", "url")]
    assert outlets[0][2] == "https://alpha.example/img/bridge.jpg"
    # The wire story: identical text under another URL in Delta → merged by content hash.
    wire = rows(
        con,
        "SELECT o.source, o.merged_by FROM item_outlets o JOIN items i USING (item_id) "
        "WHERE i.url = 'https://alpha.example/wire/rail-fares' ORDER BY o.source",
    )
    assert wire == [("Alpha Times", "new"), ("Delta", "content")]
    assert summary.merged_url == 1 and summary.merged_content == 1
    assert len(items) == summary.items_added == 3 + 3 + 1 + 0 - 1

    # An entry without a date gets the fetch time and is marked as estimated.
    undated = rows(
        con,
        "SELECT published_ts, date_estimated FROM item_outlets WHERE entry_url = 'https://alpha.example/news/cycle-lanes'",
    )
    assert undated == [(int(NOW.timestamp()), True)]


def test_second_run_is_conditional_and_adds_nothing(
    server: DemoFeedServer, con: duckdb.DuckDBPyConnection
) -> None:
    feeds = fixture_feeds(server) + server.feed_configs()[:4]
    settings = feeds_settings(feeds)
    first = scrape(con, settings, now=NOW)
    assert first.items_added > 100 and first.conditional_requests == 0
    before = rows(con, "SELECT count(*) FROM items")[0][0]
    stats_before = server.stats.not_modified
    second = scrape(con, settings, now=NOW + timedelta(minutes=5))
    assert second.items_added == 0 and second.entries_parsed == 0
    assert second.conditional_requests == len(feeds) == second.not_modified
    assert server.stats.not_modified - stats_before == len(feeds)
    assert rows(con, "SELECT count(*) FROM items")[0][0] == before
    assert "not modified: 304" in second.log_line()


def test_new_stories_appear_as_the_clock_moves(con: duckdb.DuckDBPyConnection) -> None:
    clock = {"now": NOW}
    with DemoFeedServer(port=0, clock=lambda: clock["now"], days=1) as srv:
        settings = feeds_settings(srv.feed_configs())
        first = scrape(con, settings, now=clock["now"])
        clock["now"] += timedelta(hours=1)
        second = scrape(con, settings, now=clock["now"])
    assert first.items_added > 300
    assert 10 <= second.items_added <= 40  # one hour of news: 15 stories, some carried twice
    assert any(f.status == "ok" and f.conditional for f in second.feeds)


def test_bad_feeds_end_as_statuses_and_never_lose_good_ones(
    server: DemoFeedServer, con: duckdb.DuckDBPyConnection
) -> None:
    feeds = fixture_feeds(server) + broken_feed_configs(server.base_url)
    summary = scrape(con, feeds_settings(feeds), now=NOW)
    status = {f.name.removeprefix("broken: "): f.status for f in summary.feeds}
    assert status == {
        "Alpha Times": "ok",
        "Beta Post": "ok",
        "Gamma": "ok",
        "Delta": "ok",
        "malformed.xml": "recovered",
        "latin1-declared-utf8.xml": "recovered",
        "no-encoding.xml": "recovered",
        "html": "not-a-feed",
        "bomb.xml": "entity-declaration",
        "endless.xml": "too-large",
        "huge.xml": "too-large",
        "empty.xml": "not-a-feed",
        "404": "http-404",
        "500": "http-500",
        "flaky.xml": "ok",
        "slow.xml": "timeout",
        "redirect-loop": "redirect-loop",
        "redirect-ftp": "bad-scheme",
    }
    assert set(BROKEN_FEEDS) <= set(status)
    titles = {r[0] for r in rows(con, "SELECT title FROM items")}
    assert "Harbour bridge reopens after repairs" in titles  # good feeds stored
    assert "Café crème prices soar in Zürich" in titles  # wrong declared encoding decoded right
    assert "Naïve résumé tips – 2026" in titles  # no declared encoding
    assert "Flaky feed recovered" in titles  # retried after a 503
    attempts = {f.name: f.attempts for f in summary.feeds}
    assert attempts["broken: 500"] == 2 and attempts["broken: 404"] == 1  # 5xx retried, 4xx not
    health = dict(rows(con, "SELECT name, last_status FROM feeds"))
    assert health["broken: bomb.xml"] == "entity-declaration" and health["Alpha Times"] == "ok"
    artifact = summary.markdown()
    assert "Feeds with problems" in artifact and "redirect-loop" in artifact and "too-large" in artifact


def test_failing_feed_is_paused_then_resumed(server: DemoFeedServer, con: duckdb.DuckDBPyConnection) -> None:
    feeds = [
        {"url": server.base_url + "/broken/404", "name": "gone", "category": None},
        fixture_feeds(server)[0],
    ]
    settings = feeds_settings(feeds, pause_after_failures=2)
    scrape(con, settings, now=NOW)
    second = scrape(con, settings, now=NOW)
    gone = second.feeds[0]
    assert gone.status == "http-404" and gone.paused and gone.consecutive_failures == 2
    requests = server.stats.by_path["/broken/404"]
    third = scrape(con, settings, now=NOW)
    assert third.feeds[0].status == "paused" and server.stats.by_path["/broken/404"] == requests
    assert rows(con, "SELECT paused, consecutive_failures FROM feeds WHERE name = 'gone'") == [(True, 2)]
    assert resume_feeds(con) == 1
    fourth = scrape(con, settings, now=NOW)
    assert fourth.feeds[0].status == "http-404" and not fourth.feeds[0].paused
    assert rows(con, "SELECT last_success_at IS NOT NULL FROM feeds WHERE name = 'Alpha Times'") == [(True,)]


def test_expectations_quarantine_bad_entries(server: DemoFeedServer, con: duckdb.DuckDBPyConnection) -> None:
    feeds = [{"url": server.base_url + "/epsilon.xml", "name": "Epsilon", "category": None}]
    summary = scrape(con, feeds_settings(feeds), now=NOW)
    assert [r[0] for r in rows(con, "SELECT title FROM items")] == ["A perfectly fine entry"]
    quarantined = rows(con, "SELECT rule, source_file, payload FROM quarantine ORDER BY rule")
    rules = Counter(r[0] for r in quarantined)
    assert rules == {
        "expect_column_values_to_not_be_null(title)": 1,
        "expect_column_values_to_match_regex(url)": 1,
        "expect_column_values_to_be_between(published_ts)": 1,
    }
    assert {r[1] for r in quarantined} == {feeds[0]["url"]}
    assert any(json.loads(r[2])["title"] == "From the future" for r in quarantined)
    assert summary.quarantined == 3 and summary.feeds[0].quarantined == 3
    # Re-fetching the same bad entries does not quarantine them twice.
    con.execute("UPDATE feeds SET etag = NULL, last_modified = NULL")
    scrape(con, feeds_settings(feeds), now=NOW)
    assert rows(con, "SELECT count(*) FROM quarantine")[0][0] == 3


def test_demo_stories_meet_the_promise() -> None:
    stories = generate_stories(seed=7, now=NOW)
    assert len({s.story_id for s in stories}) >= 2000
    assert len({s.topic for s in stories}) >= 10 and len(TOPICS) >= 10
    assert len({s.outlet for s in stories}) >= 20 and len(OUTLETS) >= 20
    assert len({s.url for s in stories}) == len(stories)
    assert all(s.published <= NOW for s in stories)
    assert stories == generate_stories(seed=7, now=NOW)  # deterministic
    assert stories != generate_stories(seed=8, now=NOW)
    carried = Counter(s.story_id for s in stories)
    multi = [sid for sid, n in carried.items() if n > 1]
    assert len(multi) > 300
    versions = [s for s in stories if s.story_id == multi[0]]
    assert len({s.title for s in versions}) == len(versions) and len({s.outlet for s in versions}) == len(
        versions
    )
    later = generate_stories(seed=7, now=NOW + timedelta(hours=1))
    old_urls = {s.url for s in stories}
    fresh = [s for s in later if s.url not in old_urls]
    assert fresh and all(s.published > NOW for s in fresh)
    # A story keeps its text when the clock moves.
    assert {s.url: s.title for s in later if s.url in old_urls}.items() <= {
        s.url: s.title for s in stories
    }.items()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # the flow on a Prefect API
def test_scrape_flow_starts_the_demo_feeds_when_nothing_listens(prefect_api: None, tmp_path: Path) -> None:
    from flows.scrape import scrape_feeds

    port = _free_port()
    overrides = {"home": str(tmp_path), "feeds": {"demo_port": port, "read_timeout_s": 5.0}}
    first = scrape_feeds(catalogue="news", overrides=overrides)
    assert first.demo_server == f"http://127.0.0.1:{port}"
    assert first.items_added >= 2000 and not first.problems
    with connect(Settings(home=tmp_path, catalogue="news").warehouse_path) as con:
        assert con.execute("SELECT count(DISTINCT source) FROM items").fetchall()[0][0] == len(OUTLETS)
        assert con.execute("SELECT count(*) FROM scrape_runs").fetchall()[0][0] == 1
