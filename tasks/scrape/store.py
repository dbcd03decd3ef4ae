"""Storing a scrape in the warehouse: new items, their outlets, quarantine, feed health, the run.

Duplicates are merged by canonical URL and by content hash (the same text under another URL),
expectations quarantine bad entries, new items are inserted, every outlet carrying an item is
recorded in ``item_outlets``, and each feed's health in ``feeds`` (last status, last success,
consecutive failures; a feed failing ``pause_after_failures`` times in a row is paused). The
caller runs the writes in one transaction, so a stored ETag never refers to entries that were
not stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

from expectations.feeds import EntryRules, quarantine_entries, validate_feed_entries
from storage.settings import FeedSettings
from tasks.scrape.fetch import FetchResult
from tasks.scrape.parse import Entry
from tasks.scrape.summary import OK_STATUSES, FeedOutcome, ScrapeSummary

# --- entries to items ------------------------------------------------------------------------


@dataclass
class WriteOutcome:
    """What :func:`write_entries` stored: totals and, per feed, new, merged and quarantined entries."""

    items_added: int
    merged_url: int
    merged_content: int
    quarantined: int
    per_feed: dict[str, dict[str, int]]


def write_entries(con: duckdb.DuckDBPyConnection, entries: list[Entry], rules: EntryRules) -> WriteOutcome:
    """Merge duplicates, validate, quarantine, insert new items and record outlets.

    Runs inside the caller's transaction. An entry whose canonical URL is already an item
    (or earlier in this batch) is merged by URL; one whose text hash matches an item under
    another URL is merged by content. Only the remaining new entries are validated and
    inserted; every accepted appearance is recorded in ``item_outlets``.
    """
    per_feed: dict[str, dict[str, int]] = {}

    def bump(feed: str, key: str) -> None:
        per_feed.setdefault(feed, {"new": 0, "merged": 0, "quarantined": 0})[key] += 1

    if not entries:
        return WriteOutcome(0, 0, 0, 0, per_feed)
    frame = pd.DataFrame([asdict(e) for e in entries])
    frame["row_number"] = range(len(frame))
    frame["title"] = frame["title"].where(frame["title"] != "", None)
    frame["url"] = frame["url"].where(frame["url"] != "", None)
    outcome = validate_feed_entries(frame, rules)
    quarantined = quarantine_entries(
        con,
        outcome,
        dict(zip(frame["row_number"], frame["feed_url"], strict=True)),
        dict(zip(frame["row_number"], frame["key"], strict=True)),
    )
    for row_number in outcome.rejected["row_number"].unique():
        bump(str(frame.at[int(row_number), "feed_url"]), "quarantined")
    clean = outcome.clean
    if clean.empty:
        return WriteOutcome(0, 0, 0, quarantined, per_feed)

    con.register("scraped", clean[["item_id", "content_hash"]])
    known_ids = {
        r[0] for r in con.execute("SELECT s.item_id FROM scraped s JOIN items i USING (item_id)").fetchall()
    }
    by_hash = {
        r[0]: r[1]
        for r in con.execute(
            "SELECT i.content_hash, min(i.item_id) FROM items i "
            "JOIN (SELECT DISTINCT content_hash FROM scraped) s USING (content_hash) GROUP BY i.content_hash"
        ).fetchall()
    }
    con.unregister("scraped")
    new_rows: list[dict[str, Any]] = []
    outlets: list[dict[str, Any]] = []
    merged_url = merged_content = 0
    for row in clean.itertuples(index=False):
        target, merged_by = row.item_id, "new"
        if row.item_id in known_ids:
            merged_by = "url"
            merged_url += 1
        elif row.content_hash in by_hash:
            target, merged_by = by_hash[row.content_hash], "content"
            merged_content += 1
        else:
            known_ids.add(row.item_id)
            by_hash[row.content_hash] = row.item_id
            new_rows.append(
                {
                    "item_id": row.item_id,
                    "title": row.title,
                    "categories": [row.category] if row.category else [],
                    "description": row.summary or None,
                    "url": row.url,
                    "source": row.source,
                    "published_ts": int(row.published_ts),
                    "content_hash": row.content_hash,
                }
            )
        bump(row.feed_url, "new" if merged_by == "new" else "merged")
        outlets.append(
            {
                "item_id": target,
                "feed_url": row.feed_url,
                "entry_url": row.url,
                "source": row.source,
                "title": row.title,
                "published_ts": int(row.published_ts),
                "date_estimated": bool(row.date_estimated),
                "enclosure_url": row.enclosure_url,
                "merged_by": merged_by,
            }
        )
    if new_rows:
        con.register("new_news_items", pd.DataFrame(new_rows))
        con.execute(
            "INSERT INTO items "
            "(item_id, title, categories, description, url, source, published_ts, content_hash) "
            "SELECT item_id, title, CAST(categories AS VARCHAR[]), description, url, source, "
            "published_ts, content_hash FROM new_news_items ON CONFLICT DO NOTHING"
        )
        con.unregister("new_news_items")
    con.register("new_outlets", pd.DataFrame(outlets))
    con.execute(
        "INSERT INTO item_outlets (item_id, feed_url, entry_url, source, title, published_ts, "
        "date_estimated, enclosure_url, merged_by) "
        "SELECT item_id, feed_url, entry_url, source, title, published_ts, "
        "date_estimated, enclosure_url, merged_by FROM new_outlets ON CONFLICT DO NOTHING"
    )
    con.unregister("new_outlets")
    return WriteOutcome(len(new_rows), merged_url, merged_content, quarantined, per_feed)


# --- feed health -----------------------------------------------------------------------------


@dataclass
class FeedState:
    """A feed's stored health before this run: validators for conditional GET, failures, pause."""

    url: str
    etag: str | None
    last_modified: str | None
    consecutive_failures: int
    paused: bool
    last_fetch_at: datetime | None


def feed_states(con: duckdb.DuckDBPyConnection) -> dict[str, FeedState]:
    """Every known feed's stored health, by URL."""
    rows = con.execute(
        "SELECT url, etag, last_modified, consecutive_failures, paused, last_fetch_at FROM feeds"
    ).fetchall()
    return {r[0]: FeedState(*r) for r in rows}


def record_health(
    con: duckdb.DuckDBPyConnection,
    feeds: list[FeedSettings],
    outcomes: dict[str, FeedOutcome],
    fetches: dict[str, FetchResult],
    states: dict[str, FeedState],
    pause_after: int,
    now: datetime,
) -> None:
    """Upsert each fetched feed's health; pause feeds that failed ``pause_after`` times in a row."""
    rows = []
    for feed in feeds:
        fetch = fetches.get(feed.url)
        outcome = outcomes[feed.url]
        if fetch is None:
            continue
        state = states.get(feed.url)
        ok = outcome.status in OK_STATUSES
        failures = 0 if ok else (state.consecutive_failures if state else 0) + 1
        paused = failures >= pause_after
        outcome.consecutive_failures = failures
        outcome.paused = paused
        keep_validators = outcome.status in ("ok", "recovered", "not-modified")
        rows.append(
            {
                "url": feed.url,
                "name": feed.name,
                "default_category": feed.category,
                "etag": (fetch.etag or (state.etag if state else None)) if keep_validators else None,
                "last_modified": (fetch.last_modified or (state.last_modified if state else None))
                if keep_validators
                else None,
                "last_status": outcome.status,
                "last_http_status": fetch.http_status,
                "last_error": None if ok and outcome.status != "recovered" else outcome.detail[:2000],
                "last_fetch_at": now.replace(tzinfo=None),
                "last_success_at": now.replace(tzinfo=None) if ok else None,
                "consecutive_failures": failures,
                "paused": paused,
                "paused_at": now.replace(tzinfo=None) if paused else None,
                "entries_last": outcome.entries,
                "items_added": outcome.new_items,
            }
        )
    if not rows:
        return
    frame = pd.DataFrame(rows)
    frame["last_success_at"] = pd.to_datetime(frame["last_success_at"])
    frame["paused_at"] = pd.to_datetime(frame["paused_at"])
    con.register("feed_health", frame)
    con.execute(
        """
        INSERT INTO feeds (url, name, default_category, etag, last_modified, last_status,
                           last_http_status, last_error, last_fetch_at, last_success_at,
                           consecutive_failures, paused, paused_at, entries_last, items_added_total)
        SELECT url, name, default_category, etag, last_modified, last_status, last_http_status,
               last_error, last_fetch_at, last_success_at, consecutive_failures, paused, paused_at,
               entries_last, items_added
        FROM feed_health
        ON CONFLICT (url) DO UPDATE SET
            name = excluded.name, default_category = excluded.default_category, etag = excluded.etag,
            last_modified = excluded.last_modified, last_status = excluded.last_status,
            last_http_status = excluded.last_http_status, last_error = excluded.last_error,
            last_fetch_at = excluded.last_fetch_at,
            last_success_at = coalesce(excluded.last_success_at, feeds.last_success_at),
            consecutive_failures = excluded.consecutive_failures, paused = excluded.paused,
            paused_at = coalesce(feeds.paused_at, excluded.paused_at),
            entries_last = excluded.entries_last,
            items_added_total = feeds.items_added_total + excluded.items_added_total
        """
    )
    con.unregister("feed_health")


def resume_feeds(con: duckdb.DuckDBPyConnection, urls: list[str] | None = None) -> int:
    """Un-pause feeds (all paused ones when ``urls`` is None); returns how many."""
    where = "paused" if urls is None else "paused AND url IN (SELECT unnest(?::VARCHAR[]))"
    params = [] if urls is None else [urls]
    count = con.execute(f"SELECT count(*) FROM feeds WHERE {where}", params).fetchall()[0][0]
    con.execute(
        f"UPDATE feeds SET paused = false, paused_at = NULL, consecutive_failures = 0 WHERE {where}", params
    )
    return int(count)


# --- the run ---------------------------------------------------------------------------------


def record_run(con: duckdb.DuckDBPyConnection, summary: ScrapeSummary, feeds_fetched: int) -> None:
    """Store the run in ``scrape_runs``: its totals and status counts (the per-feed rows live in
    ``feeds``)."""
    con.execute(
        "INSERT INTO scrape_runs VALUES (?, ?, ?, ?, ?)",
        [
            summary.run_id,
            summary.started_at.replace(tzinfo=None),
            sum(summary.seconds.values()),
            feeds_fetched,
            _json(summary),
        ],
    )


def _json(summary: ScrapeSummary) -> str:
    data = summary.as_dict()
    return json.dumps({k: v for k, v in data.items() if k != "feeds"} | {"statuses": summary.status_counts()})
