"""Scrape RSS/Atom feeds into the warehouse: fetch politely, parse defensively, merge duplicates.

Three phases, timed separately (the benchmark reports their shares):

1. **fetch** — every due feed concurrently (httpx, asyncio), bounded overall and per host,
   with connect/read/total timeouts, retries with exponential backoff on timeouts,
   connection errors, 429 and 5xx, conditional GET (``If-None-Match`` / ``If-Modified-Since``
   from the feed's last good fetch: a 304 is not parsed at all), a cap on the body size
   (an endless or oversized response stops at the cap), a redirect limit with loop
   detection, and only http/https — also for redirect targets.
2. **parse** — feedparser on the bytes (it copes with RSS 0.9x/1.0/2.0 and Atom and with
   wrong or missing encodings). Documents that declare entities are refused before parsing
   (no feed needs them; they are how entity-expansion bombs work). Entries are normalized:
   canonical URL (tracking parameters dropped), HTML stripped to text, Unicode NFKC, dates
   to UTC (missing dates get the fetch time and are marked), category from the entry else
   the feed's default.
3. **write** — duplicates merged by canonical URL and by content hash (the same text under
   another URL), expectations with quarantine, new items inserted, every outlet carrying an
   item recorded in ``item_outlets``, and each feed's health in ``feeds`` (last status, last
   success, consecutive failures; a feed failing ``pause_after_failures`` times in a row is
   paused and reported). Items, outlets and feed health are written in one transaction, so a
   stored ETag never refers to entries that were not stored.

A bad feed never stops the run: every failure becomes that feed's recorded status.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import html
import re
import time
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import duckdb
import feedparser
import httpx
import pandas as pd

from expectations.feeds import EntryRules, quarantine_entries, validate_feed_entries
from storage.settings import FeedSettings, FeedsSettings

OK_STATUSES = frozenset({"ok", "not-modified", "recovered"})
"""Statuses that count as a successful fetch (they reset the failure count)."""
TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "dclid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid", "_ga", "_gl",
        "ref", "ref_src", "cmpid", "ncid", "ocid", "sr_share", "spm", "share", "at_medium", "at_campaign",
    }
)  # fmt: skip
_ENTITY_DECLARATION = re.compile(rb"<!ENTITY", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


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


# --- normalization ---------------------------------------------------------------------------


def canonical_url(url: str, base: str | None = None) -> str:
    """One spelling per article: absolute, lower-case scheme and host, no default port, no
    fragment, no tracking parameters (``utm_*`` and the usual click ids), query sorted."""
    url = urljoin(base, url.strip()) if base else url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port if parts.port and (scheme, parts.port) not in (("http", 80), ("https", 443)) else None
    netloc = f"{host}:{port}" if port else host
    query = sorted(
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in TRACKING_PARAMS
    )
    return urlunsplit((scheme, netloc, parts.path or "/", urlencode(query), ""))


class _TextExtractor(HTMLParser):
    """Collects text outside script/style; block elements become spaces."""

    _SKIP = frozenset({"script", "style", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def clean_text(value: str | None) -> str:
    """HTML to plain text: tags dropped, entities decoded, Unicode NFKC, whitespace collapsed."""
    if not value:
        return ""
    if "<" in value or "&" in value:
        extractor = _TextExtractor()
        extractor.feed(value)
        extractor.close()
        value = html.unescape("".join(extractor.parts))
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", value)).strip()


def content_hash(title: str, summary: str) -> str:
    """Hash of the normalized text: the same article under another URL has the same hash."""
    text = f"{title.casefold()}\n{summary.casefold()}"
    return hashlib.sha256(_SPACE.sub(" ", text).strip().encode("utf-8")).hexdigest()


def item_id_for(url: str) -> str:
    """A news item's id: derived from its canonical URL, so every outlet and run agree."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def _stable_key(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:15], 16)


# --- results ---------------------------------------------------------------------------------


@dataclass
class FetchResult:
    """One feed's fetch: the body for a 200, else why there is none."""

    url: str
    status: str
    """ok, not-modified, http-<code>, timeout, connect-error, too-large, redirect-loop,
    too-many-redirects, bad-scheme, paused."""
    http_status: int | None = None
    body: bytes | None = None
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    final_url: str | None = None
    detail: str = ""
    attempts: int = 0
    conditional: bool = False
    seconds: float = 0.0


@dataclass
class Entry:
    """A normalized feed entry."""

    feed_url: str
    source: str
    item_id: str
    url: str
    title: str
    summary: str
    category: str | None
    published_ts: int
    date_estimated: bool
    enclosure_url: str | None
    content_hash: str
    key: int
    """Stable key of the entry within its feed (for quarantine ids)."""


@dataclass
class ParsedFeed:
    url: str
    status: str
    entries: list[Entry] = field(default_factory=list)
    detail: str = ""
    version: str = ""


@dataclass
class FeedOutcome:
    """What happened to one feed in a run (a row of the summary)."""

    url: str
    name: str
    status: str
    http_status: int | None = None
    detail: str = ""
    entries: int = 0
    new_items: int = 0
    merged: int = 0
    quarantined: int = 0
    conditional: bool = False
    attempts: int = 0
    consecutive_failures: int = 0
    paused: bool = False
    wished: bool = False


@dataclass
class ScrapeSummary:
    run_id: str
    started_at: datetime
    feeds: list[FeedOutcome]
    seconds: dict[str, float]
    """Wall seconds per phase: fetch, parse, write."""
    items_added: int
    entries_parsed: int
    merged_url: int
    merged_content: int
    quarantined: int
    demo_server: str | None = None

    @property
    def requests(self) -> int:
        return sum(1 for f in self.feeds if f.attempts)

    @property
    def conditional_requests(self) -> int:
        return sum(1 for f in self.feeds if f.conditional)

    @property
    def not_modified(self) -> int:
        return sum(1 for f in self.feeds if f.status == "not-modified")

    @property
    def problems(self) -> list[FeedOutcome]:
        return [f for f in self.feeds if f.status not in OK_STATUSES or f.paused]

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.feeds:
            counts[f.status] = counts.get(f.status, 0) + 1
        return dict(sorted(counts.items()))

    def log_line(self) -> str:
        total = sum(self.seconds.values())
        return (
            f"{len(self.feeds)} feeds, {self.requests} fetched ({self.conditional_requests} conditional, "
            f"{self.not_modified} not modified: 304, nothing parsed); {self.entries_parsed} entries parsed, "
            f"{self.items_added} new items, {self.merged_url} merged by URL, {self.merged_content} merged by "
            f"content hash, {self.quarantined} quarantined; {len(self.problems)} feeds with problems; "
            f"{total:.2f}s (fetch {self.seconds['fetch']:.2f}s, parse {self.seconds['parse']:.2f}s, "
            f"write {self.seconds['write']:.2f}s)"
        )

    def markdown(self) -> str:
        lines = [
            f"### Scrape `{self.run_id[:8]}`",
            "",
            self.log_line(),
            "",
            "| status | feeds |",
            "|---|---:|",
            *(f"| {s} | {n} |" for s, n in self.status_counts().items()),
            "",
        ]
        if self.problems:
            lines += [
                "#### Feeds with problems",
                "",
                "| feed | url | status | http | detail | failures in a row | paused |",
                "|---|---|---|---:|---|---:|---|",
            ]
            lines += [
                f"| {_md(f.name)} | {_md(f.url)} | {f.status} | {f.http_status or ''} "
                f"| {_md(f.detail[:160])} "
                f"| {f.consecutive_failures} | {'yes' if f.paused else ''} |"
                for f in self.problems
            ]
            lines.append("")
        lines += [
            "#### Feeds",
            "",
            "| feed | status | conditional | entries | new | merged | quarantined |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {_md(f.name)}{' (wished)' if f.wished else ''} | {f.status} "
            f"| {'yes' if f.conditional else ''} "
            f"| {f.entries} | {f.new_items} | {f.merged} | {f.quarantined} |"
            for f in self.feeds
        ]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        return out


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- fetch -----------------------------------------------------------------------------------


class _FetchFailed(Exception):
    def __init__(self, status: str, detail: str, http_status: int | None = None, retry: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.http_status = http_status
        self.retry = retry


async def _fetch_once(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], settings: FeedsSettings
) -> FetchResult:
    """One attempt: follow redirects by hand (limit, loops, schemes), read at most max_bytes."""
    seen = [url]
    current = url
    for _ in range(settings.max_redirects + 1):
        scheme = urlsplit(current).scheme.lower()
        if scheme not in ("http", "https"):
            raise _FetchFailed("bad-scheme", f"{current!r}: only http and https are fetched")
        async with client.stream("GET", current, headers=headers) as response:
            if response.status_code in (301, 302, 303, 307, 308):
                location = response.headers.get("location")
                if not location:
                    raise _FetchFailed("http-" + str(response.status_code), "redirect without Location")
                target = urljoin(current, location)
                if target in seen:
                    raise _FetchFailed(
                        "redirect-loop", " -> ".join([*seen, target]), http_status=response.status_code
                    )
                seen.append(target)
                current = target
                continue
            code = response.status_code
            if code == 304:
                return FetchResult(
                    url,
                    "not-modified",
                    304,
                    etag=response.headers.get("etag"),
                    last_modified=response.headers.get("last-modified"),
                    final_url=current,
                )
            if code >= 400:
                retry = code == 429 or code >= 500
                raise _FetchFailed(f"http-{code}", f"HTTP {code} from {current}", code, retry=retry)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > settings.max_bytes:
                raise _FetchFailed(
                    "too-large", f"Content-Length {int(declared):,} > cap {settings.max_bytes:,} bytes", code
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > settings.max_bytes:
                    raise _FetchFailed(
                        "too-large", f"body passed the cap of {settings.max_bytes:,} bytes", code
                    )
                chunks.append(chunk)
            return FetchResult(
                url,
                "ok",
                code,
                body=b"".join(chunks),
                content_type=response.headers.get("content-type"),
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
                final_url=current,
            )
    raise _FetchFailed(
        "too-many-redirects", f"more than {settings.max_redirects} redirects: {' -> '.join(seen)}"
    )


async def _fetch_feed(
    client: httpx.AsyncClient,
    url: str,
    validators: tuple[str | None, str | None],
    settings: FeedsSettings,
    overall: asyncio.Semaphore,
    per_host: dict[str, asyncio.Semaphore],
) -> FetchResult:
    """Fetch one feed with retries and backoff, inside the overall and per-host bounds."""
    etag, modified = validators
    headers = {
        "User-Agent": settings.user_agent,
        "Accept": "application/rss+xml, application/atom+xml, */*;q=0.5",
    }
    if etag:
        headers["If-None-Match"] = etag
    if modified:
        headers["If-Modified-Since"] = modified
    host = (urlsplit(url).hostname or "").lower() + f":{urlsplit(url).port or ''}"
    host_gate = per_host.setdefault(host, asyncio.Semaphore(settings.max_per_host))
    started = time.perf_counter()
    attempt = 0
    while True:
        attempt += 1
        try:
            async with host_gate, overall:
                result = await asyncio.wait_for(
                    _fetch_once(client, url, headers, settings), timeout=settings.total_timeout_s
                )
            break
        except _FetchFailed as exc:
            failure = exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            failure = _FetchFailed(
                "timeout", f"{type(exc).__name__} after {time.perf_counter() - started:.1f}s", retry=True
            )
        except httpx.TooManyRedirects as exc:
            failure = _FetchFailed("too-many-redirects", str(exc))
        except httpx.UnsupportedProtocol as exc:
            failure = _FetchFailed("bad-scheme", str(exc))
        except (httpx.TransportError, OSError) as exc:
            failure = _FetchFailed("connect-error", f"{type(exc).__name__}: {exc}", retry=True)
        if not failure.retry or attempt > settings.retries:
            result = FetchResult(url, failure.status, failure.http_status, detail=failure.detail)
            break
        await asyncio.sleep(settings.backoff_s * 2 ** (attempt - 1))
    result.attempts = attempt
    result.conditional = bool(etag or modified)
    result.seconds = time.perf_counter() - started
    return result


async def fetch_feeds_async(
    urls: list[str], validators: dict[str, tuple[str | None, str | None]], settings: FeedsSettings
) -> list[FetchResult]:
    """Fetch ``urls`` concurrently, started in the given order (wished feeds come first)."""
    overall = asyncio.Semaphore(settings.max_connections)
    per_host: dict[str, asyncio.Semaphore] = {}
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.total_timeout_s,
    )
    limits = httpx.Limits(
        max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
    )
    async with httpx.AsyncClient(
        timeout=timeout, limits=limits, follow_redirects=False, trust_env=False
    ) as client:
        tasks = [
            _fetch_feed(client, url, validators.get(url, (None, None)), settings, overall, per_host)
            for url in urls
        ]
        return list(await asyncio.gather(*tasks))


def fetch_feeds(
    urls: list[str], validators: dict[str, tuple[str | None, str | None]], settings: FeedsSettings
) -> list[FetchResult]:
    """Synchronous entry point of :func:`fetch_feeds_async` (runs its own event loop)."""
    return asyncio.run(fetch_feeds_async(urls, validators, settings))


# --- parse -----------------------------------------------------------------------------------


def _entry_time(entry: Any) -> int | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            return int(calendar.timegm(value))
    return None


def _entry_category(entry: Any, default: str | None) -> str | None:
    for tag in entry.get("tags") or []:
        term = clean_text(tag.get("term") or tag.get("label"))
        if term:
            return term.casefold()
    return default.casefold() if default else None


def _enclosure(entry: Any, base: str) -> str | None:
    for enclosure in entry.get("enclosures") or []:
        href = enclosure.get("href") or enclosure.get("url")
        if href:
            return urljoin(base, str(href))
    return None


def parse_feed(result: FetchResult, feed: FeedSettings, fetched_at: int) -> ParsedFeed:
    """Parse a fetched body into normalized entries, or say why it is not a usable feed."""
    body = result.body or b""
    if not body.strip():
        return ParsedFeed(result.url, "not-a-feed", detail="empty body")
    head = body[:65536]
    if b"<!DOCTYPE" in head.upper() and _ENTITY_DECLARATION.search(head):
        return ParsedFeed(
            result.url, "entity-declaration", detail="document declares XML entities (refused unparsed)"
        )
    # No content-location: feedparser would urljoin every URL against it (half its parse time);
    # links are resolved against the feed's address in canonical_url instead.
    headers: dict[str, str] = {}
    if result.content_type:
        headers["content-type"] = result.content_type
    parsed = feedparser.parse(
        body, response_headers=headers, sanitize_html=False, resolve_relative_uris=False
    )
    version = parsed.get("version") or ""
    problem = parsed.get("bozo_exception")
    if not version:
        kind = (result.content_type or "unknown type").split(";")[0]
        return ParsedFeed(result.url, "not-a-feed", detail=f"no RSS/Atom document ({kind})")
    base = result.final_url or result.url
    entries: list[Entry] = []
    for position, raw in enumerate(parsed.entries):
        link = raw.get("link") or next(
            (lk.get("href") for lk in raw.get("links") or [] if lk.get("href")), None
        )
        title = clean_text(raw.get("title"))
        summary = clean_text(raw.get("summary") or raw.get("description"))
        url = canonical_url(link, base) if link else ""
        published = _entry_time(raw)
        key_source = raw.get("id") or link or f"{title}|{position}"
        entries.append(
            Entry(
                feed_url=result.url,
                source=feed.name,
                item_id=item_id_for(url) if url else "",
                url=url,
                title=title,
                summary=summary,
                category=_entry_category(raw, feed.category),
                published_ts=published if published is not None else fetched_at,
                date_estimated=published is None,
                enclosure_url=_enclosure(raw, base),
                content_hash=content_hash(title, summary),
                key=_stable_key(f"{result.url}|{key_source}"),
            )
        )
    if problem is not None:
        detail = f"{type(problem).__name__}: {problem}"
        if not entries:
            return ParsedFeed(result.url, "malformed", detail=detail, version=version)
        return ParsedFeed(result.url, "recovered", entries, detail=detail, version=version)
    return ParsedFeed(result.url, "ok", entries, version=version)


# --- write -----------------------------------------------------------------------------------


@dataclass
class WriteOutcome:
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
    url: str
    etag: str | None
    last_modified: str | None
    consecutive_failures: int
    paused: bool
    last_fetch_at: datetime | None


def feed_states(con: duckdb.DuckDBPyConnection) -> dict[str, FeedState]:
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
            feed = parse_feed(result, by_url[result.url], fetched_at)
            parsed.append(feed)
            outcome.status, outcome.detail = feed.status, feed.detail
            outcome.entries = len(feed.entries)
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
        con.execute(
            "INSERT INTO scrape_runs VALUES (?, ?, ?, ?, ?)",
            [
                summary.run_id,
                started_at.replace(tzinfo=None),
                sum(summary.seconds.values()),
                len(due),
                _json(summary),
            ],
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return summary


def _json(summary: ScrapeSummary) -> str:
    import json

    data = summary.as_dict()
    return json.dumps({k: v for k, v in data.items() if k != "feeds"} | {"statuses": summary.status_counts()})


def ensure_demo_server(settings: FeedsSettings) -> Any:
    """Start the demo feeds in this process when the feed list points at the demo address and
    nothing listens there; returns the started server (stop it when done) or None."""
    from demo.feeds import DemoFeedServer, port_in_use

    if not points_at_demo(configured_feeds(settings), settings):
        return None
    if port_in_use(settings.demo_host, settings.demo_port):
        return None
    return DemoFeedServer(settings.demo_host, settings.demo_port, seed=settings.demo_seed).start()
