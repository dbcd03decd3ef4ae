"""Normalization of feed entries: one spelling per article URL, plain text, stable ids and hashes.

Pure functions, no I/O: the parser applies them to every entry so that the same article reads
the same whichever outlet, format or run it comes from.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "dclid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid", "_ga", "_gl",
        "ref", "ref_src", "cmpid", "ncid", "ocid", "sr_share", "spm", "share", "at_medium", "at_campaign",
    }
)  # fmt: skip
_SPACE = re.compile(r"\s+")


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


_TAG_OPENER = re.compile(r"<(?=[A-Za-z/!?])")


def clean_text(value: str | None, *, html: bool = True) -> str:
    """Feed text to plain text: tags dropped, entities decoded once, Unicode NFKC, whitespace
    collapsed.

    ``html``: the value is HTML (feedparser says so for most RSS fields): tags go, and its
    entities are decoded exactly once — ``&amp;lt;b&amp;gt;`` in the HTML stays the text
    ``&lt;b&gt;``. Otherwise it is already text and nothing is decoded. Either way a ``<``
    that would open a tag is kept as ``&lt;``: markup the source escaped never becomes live
    if a page inserts the stored text as HTML.
    """
    if not value:
        return ""
    if html and ("<" in value or "&" in value):
        extractor = _TextExtractor()
        extractor.feed(value)
        extractor.close()
        value = "".join(extractor.parts)
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", value)).strip()
    return _TAG_OPENER.sub("&lt;", text)


def content_hash(title: str, summary: str) -> str:
    """Hash of the normalized text: the same article under another URL has the same hash."""
    text = f"{title.casefold()}\n{summary.casefold()}"
    return hashlib.sha256(_SPACE.sub(" ", text).strip().encode("utf-8")).hexdigest()


def item_id_for(url: str) -> str:
    """A news item's id: derived from its canonical URL, so every outlet and run agree."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def stable_key(text: str) -> int:
    """A 60-bit integer key for ``text`` (an entry's place in its feed, for quarantine ids)."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:15], 16)
