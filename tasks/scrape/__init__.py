"""Scrape RSS/Atom feeds into the warehouse: fetch politely, parse defensively, merge duplicates.

This module decides which feeds to fetch and runs the phases; each phase lives in its own
module, timed separately (the benchmark reports their shares):

1. **fetch** (:mod:`tasks.scrape.fetch`) — every due feed concurrently, bounded, with
   timeouts, retries, conditional GET, a body-size cap, a redirect limit and, on every hop,
   no private, loopback or link-local address unless ``feeds.allow_hosts`` allows it.
2. **parse** (:mod:`tasks.scrape.parse`, :mod:`tasks.scrape.normalize`) — feedparser on the
   bytes, entity declarations refused, entries normalized (canonical URL, plain text, UTC
   dates, category).
3. **write** (:mod:`tasks.scrape.store`) — duplicates merged by URL and content hash,
   expectations with quarantine, new items, outlets and each feed's health, all in one
   transaction, so a stored ETag never refers to entries that were not stored.

A bad feed never stops the run: every failure, an exception included, becomes that feed's
recorded status (:mod:`tasks.scrape.summary`), and so does a feed whose every entry is
quarantined (``all-rejected``); failing statuses count toward pausing the feed. The demo feeds
(:mod:`demo.feeds`) are imported only when the feed list is the embedded default or the flow
has to start them.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import duckdb

from expectations.feeds import EntryRules
from storage.settings import FeedSettings, FeedsSettings
from tasks.scrape.fetch import FetchResult, fetch_feeds, fetch_feeds_async
from tasks.scrape.normalize import TRACKING_PARAMS, canonical_url, clean_text, content_hash, item_id_for
from tasks.scrape.parse import Entry, ParsedFeed, parse_feed
from tasks.scrape.store import (
    FeedState,
    WriteOutcome,
    feed_states,
    record_health,
    record_run,
    resume_feeds,
    write_entries,
)
from tasks.scrape.summary import OK_STATUSES, FeedOutcome, ScrapeSummary

if TYPE_CHECKING:
    from demo.feeds import DemoFeedServer

__all__ = [
    "OK_STATUSES",
    "TRACKING_PARAMS",
    "Entry",
    "FeedOutcome",
    "FeedState",
    "FetchResult",
    "ParsedFeed",
    "ScrapeSummary",
    "WriteOutcome",
    "canonical_url",
    "clean_text",
    "configured_feeds",
    "content_hash",
    "ensure_demo_server",
    "feed_states",
    "fetch_feeds",
    "fetch_feeds_async",
    "item_id_for",
    "parse_feed",
    "points_at_demo",
    "port_in_use",
    "record_health",
    "resume_feeds",
    "scrape",
    "wished_feeds",
    "write_entries",
]


# --- feed list -------------------------------------------------------------------------------


def configured_feeds(settings: FeedsSettings) -> list[FeedSettings]:
    """The configured feeds, or the demo outlets on ``demo_host:demo_port`` when none are."""
    if settings.feeds:
        return list(settings.feeds)
    from demo.feeds import demo_feed_configs

    return [FeedSettings(**f) for f in demo_feed_configs(settings.demo_host, settings.demo_port)]


def points_at_demo(feeds: Iterable[FeedSettings], settings: FeedsSettings) -> bool:
    """Whether any feed is served from the demo address."""
    demo = (settings.demo_host, settings.demo_port)
    return any((urlsplit(f.url).hostname, urlsplit(f.url).port) == demo for f in feeds)


# --- wishlist --------------------------------------------------------------------------------


def wished_feeds(con: duckdb.DuckDBPyConnection, feeds: list[FeedSettings]) -> set[str]:
    """Feeds serving wished topics or sources: their default category or name is on the
    wishlist, or at least a quarter of their items of the last week are in wished topics."""
    rows = con.execute("SELECT kind, value FROM wishlist").fetchall()
    topics = {v for k, v in rows if k == "topic"}
    sources = {v for k, v in rows if k == "source"}
    if not topics and not sources:
        return set()
    wished = {f.url for f in feeds if f.name in sources or (f.category and f.category.casefold() in topics)}
    if topics:
        shares = con.execute(
            """
            SELECT feed_url, avg(CASE WHEN list_has_any(i.categories, ?::VARCHAR[]) THEN 1.0 ELSE 0.0 END)
            FROM item_outlets o JOIN items i USING (item_id)
            WHERE o.published_ts >= epoch(now()) - 7 * 86400
            GROUP BY feed_url
            """,
            [sorted(topics)],
        ).fetchall()
        wished |= {url for url, share in shares if share >= 0.25}
    return wished


# --- the whole scrape ------------------------------------------------------------------------


def scrape(
    con: duckdb.DuckDBPyConnection,
    settings: FeedsSettings,
    *,
    only_due: bool = False,
    now: datetime | None = None,
    progress: Any = None,
) -> ScrapeSummary:
    """Fetch, parse and store every configured feed; never raises for a bad feed.

    ``only_due``: skip feeds fetched less than ``refresh_minutes`` ago (wished feeds:
    ``refresh_minutes / wishlist_boost``), for runs scheduled more often than hourly.
    ``progress`` is an optional callable taking a message (e.g. a logger's ``info``).
    """
    say = progress or (lambda _msg: None)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    started_at = now
    feeds = configured_feeds(settings)
    states = feed_states(con)
    wished = wished_feeds(con, feeds)
    outcomes = {f.url: FeedOutcome(f.url, f.name, "pending", wished=f.url in wished) for f in feeds}
    due: list[FeedSettings] = []
    for feed in sorted(feeds, key=lambda f: f.url not in wished):  # wished first, stable otherwise
        state = states.get(feed.url)
        if state and state.paused:
            outcomes[feed.url].status = "paused"
            outcomes[feed.url].paused = True
            outcomes[feed.url].consecutive_failures = state.consecutive_failures
            outcomes[feed.url].detail = "paused after repeated failures; `recflow feeds resume` to retry"
            continue
        if only_due and state and state.last_fetch_at is not None:
            interval = (
                settings.refresh_minutes * 60 / (settings.wishlist_boost if feed.url in wished else 1.0)
            )
            age = (now.replace(tzinfo=None) - state.last_fetch_at).total_seconds()
            if age < interval - 60:
                outcomes[feed.url].status = "not-due"
                continue
        due.append(feed)

    validators = {f.url: (states[f.url].etag, states[f.url].last_modified) for f in due if f.url in states}
    say(
        f"fetching {len(due)} feeds ({len(validators)} with validators for conditional GET, "
        f"{len(wished)} wished)"
    )
    t0 = time.perf_counter()
    fetched = fetch_feeds([f.url for f in due], validators, settings)
    t1 = time.perf_counter()
    by_url = {f.url: f for f in due}
    fetched_at = int(now.timestamp())
    parsed: list[ParsedFeed] = []
    for result in fetched:
        outcome = outcomes[result.url]
        outcome.http_status = result.http_status
        outcome.conditional = result.conditional
        outcome.attempts = result.attempts
        outcome.status, outcome.detail = result.status, result.detail
        if result.status == "ok":
            try:
                parsed_feed = parse_feed(result, by_url[result.url], fetched_at)
            except Exception as exc:  # a document the parser chokes on fails its feed only
                parsed_feed = ParsedFeed(result.url, "parse-error", detail=f"{type(exc).__name__}: {exc}")
            parsed.append(parsed_feed)
            outcome.status, outcome.detail = parsed_feed.status, parsed_feed.detail
            outcome.entries = len(parsed_feed.entries)
        result.body = None  # parsed: free the memory
    t2 = time.perf_counter()
    entries = [e for p in parsed for e in p.entries]
    rules = EntryRules(max_published_ts=int(time.time()) + settings.future_skew_s)
    con.execute("BEGIN TRANSACTION")
    try:
        written = write_entries(con, entries, rules)
        for feed_url, counts in written.per_feed.items():
            outcomes[feed_url].new_items = counts["new"]
            outcomes[feed_url].merged = counts["merged"]
            outcomes[feed_url].quarantined = counts["quarantined"]
        for outcome in outcomes.values():
            if outcome.entries and outcome.quarantined >= outcome.entries:
                # Fetched and parsed, yet nothing usable: a failure, counted toward pausing.
                outcome.status = "all-rejected"
                outcome.detail = (
                    f"all {outcome.entries} entries failed the entry expectations (see the quarantine table)"
                    + (f"; {outcome.detail}" if outcome.detail else "")
                )
        record_health(
            con, due, outcomes, {r.url: r for r in fetched}, states, settings.pause_after_failures, now
        )
        summary = ScrapeSummary(
            run_id=uuid.uuid4().hex,
            started_at=started_at,
            feeds=[outcomes[f.url] for f in feeds],
            seconds={"fetch": t1 - t0, "parse": t2 - t1, "write": 0.0},
            items_added=written.items_added,
            entries_parsed=len(entries),
            merged_url=written.merged_url,
            merged_content=written.merged_content,
            quarantined=written.quarantined,
        )
        summary.seconds["write"] = time.perf_counter() - t2
        record_run(con, summary, len(due))
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return summary


# --- the demo feeds --------------------------------------------------------------------------


def ensure_demo_server(settings: FeedsSettings) -> DemoFeedServer | None:
    """Start the demo feeds in this process when the feed list points at the demo address and
    nothing listens there; returns the started server (stop it when done) or None.

    :mod:`demo.feeds` is imported only when the server is to be started."""
    if not points_at_demo(configured_feeds(settings), settings):
        return None
    if port_in_use(settings.demo_host, settings.demo_port):
        return None
    from demo.feeds import DemoFeedServer

    return DemoFeedServer(settings.demo_host, settings.demo_port, seed=settings.demo_seed).start()


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
