"""The demo outlets' feeds over HTTP on 127.0.0.1, plus broken and benchmark feeds.

Serves what :mod:`demo.stories` generates, one feed per outlet in its format (RSS 2.0, Atom
1.0 or RSS 1.0) and with its quirks, and every way a feed can go wrong (``/broken/<case>``),
so the scraper can be run, tested and benchmarked with no internet. ``recflow demo-feeds``
serves them permanently; the ``scrape-feeds`` flow starts them in-process when the configured
feeds point at the demo address and nothing listens there.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape as xml_escape

from demo.stories import (
    DEFAULT_DAYS,
    OUTLETS,
    SLOT_SECONDS,
    DemoOutlet,
    DemoStory,
    generate_stories,
    slot_stories,
    slugify,
)

FEED_UPDATE_SECONDS = 1800
"""The demo server publishes new stories in half-hourly batches (like an outlet's feed cache),
so two scrapes a minute apart usually see the same documents and get 304s."""

# --- the feeds: one per outlet, rendered as RSS 2.0, Atom 1.0 or RSS 1.0 ----------------------

FEED_FORMATS = ("rss2", "atom", "rss1")
_CONTENT_TYPES = {
    "rss2": "application/rss+xml; charset=utf-8",
    "atom": "application/atom+xml; charset=utf-8",
    "rss1": "application/rdf+xml; charset=utf-8",
}


def demo_feed_configs(host: str = "127.0.0.1", port: int = 8765) -> list[dict[str, str | None]]:
    """The feed list of the embedded default config: url, name and default category per outlet."""
    return [
        {"url": f"http://{host}:{port}/feeds/{o.slug}.xml", "name": o.name, "category": o.default_category}
        for o in OUTLETS
    ]


def _x(text: str) -> str:
    return xml_escape(text, {'"': "&quot;"})


def _rfc822(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC), usegmt=True)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_link(outlet: DemoOutlet, story: DemoStory) -> str:
    if outlet.tracking:
        return f"{story.url}?utm_source=rss&utm_medium=feed&utm_campaign={outlet.slug}"
    return story.url


def _entry_summary(outlet: DemoOutlet, story: DemoStory) -> str:
    if outlet.html_summary:
        return f'<p><strong>{story.title}.</strong> {story.summary} <a href="{story.url}">Read more</a></p>'
    return story.summary


def render_feed(outlet: DemoOutlet, stories: list[DemoStory], base_url: str, built: datetime) -> bytes:
    """One outlet's feed document, newest entries first, in the outlet's format and quirks."""
    stories = sorted(stories, key=lambda s: (s.published, s.url), reverse=True)
    self_url = f"{base_url}/feeds/{outlet.slug}.xml"
    home = f"https://{outlet.host}/"
    parts: list[str] = ['<?xml version="1.0" encoding="utf-8"?>\n']
    if outlet.format == "rss2":
        parts.append(
            '<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel>'
            f"<title>{_x(outlet.name)}</title><link>{home}</link>"
            f"<description>{_x(outlet.name)}: latest news</description><language>en</language>"
            f'<atom:link href="{_x(self_url)}" rel="self" type="application/rss+xml"/>'
            f"<lastBuildDate>{_rfc822(built)}</lastBuildDate>\n"
        )
        for s in stories:
            parts.append(
                f"<item><title>{_x(s.title)}</title><link>{_x(_entry_link(outlet, s))}</link>"
                f'<guid isPermaLink="false">{s.story_id}-{outlet.slug}</guid>'
                f"<description>{_x(_entry_summary(outlet, s))}</description>"
            )
            if outlet.entry_categories:
                parts.append(f"<category>{_x(s.topic)}</category>")
            if outlet.dates:
                parts.append(f"<pubDate>{_rfc822(s.published)}</pubDate>")
            if outlet.enclosures:
                parts.append(
                    f'<enclosure url="https://{outlet.host}/img/{s.story_id}.jpg" '
                    'length="48213" type="image/jpeg"/>'
                )
            parts.append("</item>\n")
        parts.append("</channel></rss>\n")
    elif outlet.format == "atom":
        parts.append(
            '<feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>{_x(outlet.name)}</title><id>{home}</id>"
            f'<link href="{home}"/><link rel="self" href="{_x(self_url)}"/>'
            f"<updated>{_iso(built)}</updated><author><name>{_x(outlet.name)}</name></author>\n"
        )
        for s in stories:
            kind = "html" if outlet.html_summary else "text"
            parts.append(
                f"<entry><title>{_x(s.title)}</title>"
                f'<link rel="alternate" href="{_x(_entry_link(outlet, s))}"/>'
                f"<id>urn:recflow-demo:{s.story_id}:{outlet.slug}</id>"
                f'<summary type="{kind}">{_x(_entry_summary(outlet, s))}</summary>'
            )
            if outlet.entry_categories:
                parts.append(f'<category term="{_x(s.topic)}"/>')
            if outlet.dates:
                parts.append(
                    f"<updated>{_iso(s.published)}</updated><published>{_iso(s.published)}</published>"
                )
            if outlet.enclosures:
                parts.append(
                    f'<link rel="enclosure" type="image/jpeg" length="48213" '
                    f'href="https://{outlet.host}/img/{s.story_id}.jpg"/>'
                )
            parts.append("</entry>\n")
        parts.append("</feed>\n")
    elif outlet.format == "rss1":
        parts.append(
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f'<channel rdf:about="{_x(self_url)}"><title>{_x(outlet.name)}</title><link>{home}</link>'
            f"<description>{_x(outlet.name)}</description><items><rdf:Seq>"
        )
        parts += [f'<rdf:li rdf:resource="{_x(_entry_link(outlet, s))}"/>' for s in stories]
        parts.append("</rdf:Seq></items></channel>\n")
        for s in stories:
            link = _x(_entry_link(outlet, s))
            parts.append(
                f'<item rdf:about="{link}"><title>{_x(s.title)}</title><link>{link}</link>'
                f"<description>{_x(_entry_summary(outlet, s))}</description>"
            )
            if outlet.entry_categories:
                parts.append(f"<dc:subject>{_x(s.topic)}</dc:subject>")
            if outlet.dates:
                parts.append(f"<dc:date>{_iso(s.published)}</dc:date>")
            parts.append("</item>\n")
        parts.append("</rdf:RDF>\n")
    else:
        raise ValueError(
            f"outlet {outlet.slug}: unknown feed format {outlet.format!r}; expected {FEED_FORMATS}"
        )
    return "".join(parts).encode("utf-8")


def bench_feed(index: int, entries: int, seed: int = 7) -> bytes:
    """Benchmark feed ``index``: ``entries`` distinct stories (RSS 2.0), none shared with other
    bench feeds, so a benchmark scrape writes every entry it parses."""
    outlet = DemoOutlet(f"bench-{index}", f"Bench Feed {index}", f"bench{index}.example", (), "rss2")
    base_slot = 1_700_000_000 // SLOT_SECONDS
    stories = []
    for j in range(entries):
        first = slot_stories(seed + 1000, base_slot - index * entries - j)[0]
        url = f"https://{outlet.host}/{first.published:%Y/%m/%d}/{slugify(first.title)}-{first.story_id[:8]}"
        stories.append(
            DemoStory(
                first.story_id, outlet.name, first.topic, first.title, first.summary, url, first.published
            )
        )
    return render_feed(
        outlet, stories, "http://bench.invalid", datetime.fromtimestamp(base_slot * SLOT_SECONDS, UTC)
    )


# --- broken feeds: every way a feed can go wrong, for tests and the robustness demo ----------

_BROKEN_RSS_ITEM = "<item><title>{title}</title><link>https://broken.example/{case}/{n}</link><description>{text}</description></item>"
BROKEN_FEEDS: dict[str, str] = {
    "malformed.xml": "XML cut off mid-element (the parser's salvage mode may recover entries)",
    "latin1-declared-utf8.xml": "bytes in ISO-8859-1 while the declaration says UTF-8",
    "no-encoding.xml": "windows-1252 bytes, no XML declaration, no charset",
    "html": "an HTML page served where a feed was expected",
    "bomb.xml": "an entity-expansion ('billion laughs') bomb",
    "endless.xml": "a response that never ends",
    "huge.xml": "a response far larger than the size cap",
    "empty.xml": "200 with an empty body",
    "404": "not found",
    "500": "a server error on every attempt",
    "flaky.xml": "503 on the first attempt, a good feed on the retry",
    "slow.xml": "answers after the read timeout",
    "redirect-loop": "redirects to a page that redirects back",
    "redirect-ftp": "redirects to an ftp:// address",
}


def _broken_rss(
    case: str, items: list[tuple[str, str]], *, declaration: str = '<?xml version="1.0" encoding="utf-8"?>'
) -> str:
    body = "".join(_BROKEN_RSS_ITEM.format(title=t, n=i, text=d, case=case) for i, (t, d) in enumerate(items))
    return f'{declaration}<rss version="2.0"><channel><title>Broken</title><link>https://broken.example/</link>{body}</channel></rss>'


_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">\n'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9))
    + ']>\n<rss version="2.0"><channel><title>Bomb</title><item><title>&j;</title>'
    "<link>https://broken.example/bomb</link></item></channel></rss>"
)


# --- the server ------------------------------------------------------------------------------


@dataclass
class ServedDocument:
    """A fixed document a test registers on the server (with ETag/Last-Modified like the rest)."""

    body: bytes
    content_type: str = "application/rss+xml; charset=utf-8"
    status: int = 200
    last_modified: datetime | None = None


@dataclass
class RequestStats:
    """What the server saw: requests, conditional requests, 304s, per path."""

    requests: int = 0
    conditional: int = 0
    not_modified: int = 0
    by_path: dict[str, int] = field(default_factory=dict)


class DemoFeedServer:
    """The demo outlets' feeds (plus broken and benchmark feeds) over HTTP on 127.0.0.1.

    Routes: ``/feeds/<outlet>.xml`` (the demo outlets, stories up to the clock),
    ``/bench/<i>.xml?entries=N`` (distinct benchmark stories), ``/broken/<case>`` (see
    :data:`BROKEN_FEEDS`), ``/`` (an index) and any path registered with :meth:`add_document`.
    Every 200 carries ``ETag`` and ``Last-Modified`` and conditional requests get 304.
    ``clock`` lets tests move time; the documents change every ``FEED_UPDATE_SECONDS``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        seed: int = 7,
        clock: Callable[[], datetime] | None = None,
        days: int = DEFAULT_DAYS,
        slow_seconds: float = 30.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.seed = seed
        self.clock = clock or (lambda: datetime.now(UTC))
        self.days = days
        self.slow_seconds = slow_seconds
        self.documents: dict[str, ServedDocument] = {}
        self.stats = RequestStats()
        self._lock = threading.Lock()
        self._stories: tuple[int, dict[str, list[DemoStory]]] | None = None
        self._flaky_seen: set[str] = set()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> DemoFeedServer:
        server = self

        class Handler(_DemoHandler):
            demo = server

        self._httpd = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="demo-feeds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def serve_forever(self) -> None:
        """Block until interrupted (``recflow demo-feeds``)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> DemoFeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self.requested_port
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def feed_configs(self) -> list[dict[str, str | None]]:
        """The feed list for this server's address (what the default config holds for 8765)."""
        return demo_feed_configs(self.host, self.port)

    def add_document(self, path: str, document: ServedDocument) -> str:
        """Serve ``document`` at ``path``; returns its URL."""
        self.documents[path] = document
        return self.base_url + path

    # content
    def _stories_by_outlet(self) -> tuple[datetime, dict[str, list[DemoStory]]]:
        now = self.clock().astimezone(UTC)
        slot = int(now.timestamp() // FEED_UPDATE_SECONDS)
        with self._lock:
            if self._stories is None or self._stories[0] != slot:
                cut = datetime.fromtimestamp(slot * FEED_UPDATE_SECONDS, UTC)
                grouped: dict[str, list[DemoStory]] = {o.name: [] for o in OUTLETS}
                for story in generate_stories(self.seed, cut, days=self.days):
                    grouped[story.outlet].append(story)
                self._stories = (slot, grouped)
            return datetime.fromtimestamp(slot * FEED_UPDATE_SECONDS, UTC), self._stories[1]

    def outlet_document(self, slug: str) -> ServedDocument | None:
        outlet = next((o for o in OUTLETS if o.slug == slug), None)
        if outlet is None:
            return None
        built, grouped = self._stories_by_outlet()
        stories = grouped[outlet.name]
        newest = max((s.published for s in stories), default=built)
        body = render_feed(outlet, stories, self.base_url, newest)
        return ServedDocument(body, _CONTENT_TYPES[outlet.format], last_modified=newest)


class _DemoHandler(BaseHTTPRequestHandler):
    demo: DemoFeedServer
    protocol_version = "HTTP/1.1"
    server_version = "recflow-demo-feeds/1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the scraper logs what matters."""

    def do_GET(self) -> None:
        parsed = urlsplit(self.path)
        path = parsed.path
        demo = self.demo
        with demo._lock:
            demo.stats.requests += 1
            demo.stats.by_path[path] = demo.stats.by_path.get(path, 0) + 1
            if self.headers.get("If-None-Match") or self.headers.get("If-Modified-Since"):
                demo.stats.conditional += 1
        try:
            if path.startswith("/broken/"):
                self._broken(path.removeprefix("/broken/"))
                return
            document = demo.documents.get(path)
            if document is None and path.startswith("/feeds/") and path.endswith(".xml"):
                document = demo.outlet_document(path.removeprefix("/feeds/").removesuffix(".xml"))
            if document is None and path.startswith("/bench/") and path.endswith(".xml"):
                entries = int(dict(parse_qsl(parsed.query)).get("entries", "50"))
                index = int(path.removeprefix("/bench/").removesuffix(".xml"))
                document = ServedDocument(bench_feed(index, entries, demo.seed))
            if document is None and path == "/":
                links = "".join(
                    f'<li><a href="{f["url"]}">{_x(str(f["name"]))}</a></li>' for f in demo.feed_configs()
                )
                document = ServedDocument(
                    f"<html><body><h1>recflow demo feeds</h1><ul>{links}</ul></body></html>".encode(),
                    "text/html; charset=utf-8",
                )
            if document is None:
                self._send(404, b"not found", "text/plain")
                return
            self._send_document(document)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_document(self, document: ServedDocument) -> None:
        etag = '"' + hashlib.sha1(document.body).hexdigest()[:20] + '"'
        headers = {"ETag": etag}
        modified = document.last_modified
        if modified is not None:
            headers["Last-Modified"] = _rfc822(modified)
        if document.status == 200 and self._not_modified(etag, modified):
            with self.demo._lock:
                self.demo.stats.not_modified += 1
            self.send_response(304)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            return
        self._send(document.status, document.body, document.content_type, headers)

    def _not_modified(self, etag: str, modified: datetime | None) -> bool:
        match = self.headers.get("If-None-Match")
        if match is not None:
            return etag in [m.strip() for m in match.split(",")] or match.strip() == "*"
        since = self.headers.get("If-Modified-Since")
        if since and modified is not None:
            try:
                return modified.replace(microsecond=0) <= parsedate_to_datetime(since)
            except (TypeError, ValueError):
                return False
        return False

    def _broken(self, case: str) -> None:
        demo = self.demo
        latin = [
            ("Café crème prices soar in Zürich", "Baristas in Zürich say the café crème now costs more.")
        ]
        if case == "malformed.xml":
            text = _broken_rss(case, [("A story before the break", "Fine so far."), ("Second", "Also fine")])
            self._send_document(ServedDocument(text[: len(text) - 40].encode()))
        elif case == "latin1-declared-utf8.xml":
            self._send_document(
                ServedDocument(_broken_rss(case, latin).encode("latin-1"), "application/rss+xml")
            )
        elif case == "no-encoding.xml":
            body = _broken_rss(
                case, [("Naïve résumé tips – 2026", "Smart “quotes” and a dash—here.")], declaration=""
            )
            self._send_document(ServedDocument(body.encode("cp1252"), "text/xml"))
        elif case == "html":
            page = "<!DOCTYPE html><html><head><title>Welcome</title></head><body><p>Hi!</p></body></html>"
            self._send_document(ServedDocument(page.encode(), "text/html; charset=utf-8"))
        elif case == "bomb.xml":
            self._send_document(ServedDocument(_BOMB.encode(), "application/rss+xml"))
        elif case == "endless.xml":
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b'<?xml version="1.0"?><rss version="2.0"><channel><title>Endless</title>')
            chunk = (_BROKEN_RSS_ITEM.format(title="Again", n=0, text="x" * 400, case=case) * 20).encode()
            while not demo._stop.is_set():
                self.wfile.write(chunk)
            self.close_connection = True
        elif case == "huge.xml":
            filler = _BROKEN_RSS_ITEM.format(title="Filler", n=1, text="y" * 1000, case=case)
            body = _broken_rss(case, []).replace("</channel>", filler * 8000 + "</channel>")
            self._send_document(ServedDocument(body.encode()))
        elif case == "empty.xml":
            self._send_document(ServedDocument(b""))
        elif case == "404":
            self._send(404, b"no such feed", "text/plain")
        elif case == "500":
            self._send(500, b"internal error", "text/plain")
        elif case == "flaky.xml":
            key = self.headers.get("User-Agent", "") + self.path
            with demo._lock:
                first = key not in demo._flaky_seen
                demo._flaky_seen.add(key)
            if first:
                self._send(503, b"try again", "text/plain", {"Retry-After": "0"})
            else:
                self._send_document(
                    ServedDocument(
                        _broken_rss(case, [("Flaky feed recovered", "Second try worked.")]).encode()
                    )
                )
        elif case == "slow.xml":
            demo._stop.wait(demo.slow_seconds)
            self._send_document(ServedDocument(_broken_rss(case, [("Too late", "Nobody waited.")]).encode()))
        elif case == "redirect-loop":
            self._send(302, b"", "text/plain", {"Location": "/broken/redirect-loop-b"})
        elif case == "redirect-loop-b":
            self._send(302, b"", "text/plain", {"Location": "/broken/redirect-loop"})
        elif case == "redirect-ftp":
            self._send(301, b"", "text/plain", {"Location": "ftp://127.0.0.1/feed.xml"})
        else:
            self._send(404, b"unknown broken case", "text/plain")


def broken_feed_configs(base_url: str) -> list[dict[str, str | None]]:
    """Feed config entries for every broken case (for tests and the robustness demo)."""
    return [
        {"url": f"{base_url}/broken/{case}", "name": f"broken: {case}", "category": None}
        for case in BROKEN_FEEDS
    ]
