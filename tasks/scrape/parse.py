"""Parsing fetched feed bodies into normalized entries (feedparser), refusing dangerous XML.

feedparser copes with RSS 0.9x/1.0/2.0 and Atom and with wrong or missing encodings. Documents
that declare entities, or carry a DOCTYPE with an internal subset, are refused before parsing
(no feed needs them; they are how entity-expansion bombs work): the whole document is searched,
as the text the parser would read (BOM, XML declaration and HTTP charset as feedparser applies
them, so UTF-16 or UTF-32 hide nothing) and as raw bytes. A DOCTYPE without declarations (RSS
0.91's) is harmless and parsed. Entries are normalized: canonical URL (tracking parameters
dropped), HTML stripped to text with entities decoded once (text fields not at all), Unicode
NFKC, dates to UTC (missing dates get the fetch time and are marked), category from the entry
else the feed's default.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import feedparser
from feedparser.encodings import convert_to_utf8

from storage.settings import FeedSettings
from tasks.scrape.fetch import FetchResult
from tasks.scrape.normalize import canonical_url, clean_text, content_hash, item_id_for, stable_key

# An entity declaration, or a DOCTYPE whose internal subset ("[") could hold one.
_DECLARATION = re.compile(r"<!\s*ENTITY|<!\s*DOCTYPE[^>\[]*\[", re.IGNORECASE)
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


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
    """One fetched feed after parsing: its entries, or the status saying why there are none."""

    url: str
    status: str
    entries: list[Entry] = field(default_factory=list)
    detail: str = ""
    version: str = ""


def declares_entities(body: bytes, content_type: str | None) -> bool:
    """Whether the document declares entities anywhere, in whatever encoding it is in.

    Checked on the text feedparser will hand its XML parser (its own decoding, so a BOM, an
    XML declaration or an HTTP charset cannot hide a declaration from this check but not from
    the parser), on UTF-16/32 readings, and on the raw bytes."""
    headers = {"content-type": content_type} if content_type else {}
    as_parsed = convert_to_utf8(headers, body, {})
    candidates: list[str] = [body.decode("latin-1")]
    if isinstance(as_parsed, bytes):
        candidates.append(as_parsed.decode("utf-8", "replace"))
    if b"\x00" in body[:1024]:  # a wide encoding, with or without a BOM
        candidates += [body.decode(enc, "replace") for enc in ("utf-16", "utf-16-be", "utf-32", "utf-32-be")]
    return any(_DECLARATION.search(text) for text in candidates)


def _text(raw: Any, key: str) -> str:
    """A text field of an entry as plain text: HTML fields stripped, text fields kept as text."""
    value = raw.get(key)
    kind = (raw.get(f"{key}_detail") or {}).get("type", "text/html")
    return clean_text(value, html=kind in _HTML_TYPES)


def _entry_time(entry: Any) -> int | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            return int(calendar.timegm(value))
    return None


def _entry_category(entry: Any, default: str | None) -> str | None:
    for tag in entry.get("tags") or []:
        term = clean_text(tag.get("term") or tag.get("label"), html=False)
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
    if declares_entities(body, result.content_type):
        return ParsedFeed(
            result.url,
            "entity-declaration",
            detail="document declares XML entities or a DOCTYPE internal subset (refused unparsed)",
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
        title = _text(raw, "title")
        summary = _text(raw, "summary") if raw.get("summary") else _text(raw, "description")
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
                key=stable_key(f"{result.url}|{key_source}"),
            )
        )
    if problem is not None:
        detail = f"{type(problem).__name__}: {problem}"
        if not entries:
            return ParsedFeed(result.url, "malformed", detail=detail, version=version)
        return ParsedFeed(result.url, "recovered", entries, detail=detail, version=version)
    return ParsedFeed(result.url, "ok", entries, version=version)
