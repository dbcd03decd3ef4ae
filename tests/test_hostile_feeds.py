"""Hostile feeds against real HTTP servers on 127.0.0.1 and a real DuckDB warehouse: redirects to
odd schemes and internal addresses, escaped markup, entity declarations hidden from a quick look,
feeds whose every entry is rejected. A bad feed must end as its own status, never stop the rest."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from demo.feeds import DemoFeedServer
from storage.settings import FeedSettings, FeedsSettings
from storage.warehouse import connect
from tasks.scrape import scrape
from tasks.scrape.normalize import clean_text

NOW = datetime(2026, 11, 20, 9, 17, tzinfo=UTC)

GOOD = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Good</title><link>https://good.example/</link>
<item><title>A good story survives its neighbours</title><link>https://good.example/a</link>
<description>Nothing odd here.</description><pubDate>Thu, 19 Nov 2026 08:30:00 GMT</pubDate></item>
</channel></rss>"""

SECRET = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>Internal</title>
<link>https://intranet.example/</link><item><title>Internal secret story</title>
<link>https://intranet.example/secret</link></item></channel></rss>"""


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class FeedHost:
    """A real HTTP server on 127.0.0.1 serving fixed routes; counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                host.hits[self.path] = host.hits.get(self.path, 0) + 1
                route = host.routes.get(self.path, Route(404, b"not found"))
                self.send_response_only(route.status)
                headers = {"Content-Type": "application/rss+xml", **route.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def redirect(self, path: str, location: str) -> str:
        self.routes[path] = Route(302, b"", {"Location": location})
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host() -> Iterator[FeedHost]:
    srv = FeedHost()
    srv.routes["/good.xml"] = Route(body=GOOD)
    yield srv
    srv.close()


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = connect(tmp_path / "warehouse.duckdb")
    yield c
    c.close()


def settings_for(urls: list[str], **extra: object) -> FeedsSettings:
    """Short timeouts; the test server's own address allowed (it is loopback)."""
    base: dict[str, object] = {
        "feeds": [{"url": u, "name": f"feed {i}"} for i, u in enumerate(urls)],
        "read_timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "total_timeout_s": 4.0,
        "retries": 2,
        "backoff_s": 0.01,
        "pause_after_failures": 2,
    }
    return FeedsSettings(**(base | extra))


def titles(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT title FROM items").fetchall()}


def health(con: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    rows = con.execute("SELECT url, last_status, consecutive_failures, paused FROM feeds").fetchall()
    return {r[0]: r[1:] for r in rows}


# --- 1. one feed no longer kills the scrape ---------------------------------------------------


def test_redirects_to_other_schemes_or_broken_locations_fail_only_their_feed(
    host: FeedHost, con: duckdb.DuckDBPyConnection
) -> None:
    bad = {
        "data": host.redirect("/to-data", "data:text/xml,<rss/>"),
        "mailto": host.redirect("/to-mailto", "mailto:editor@news.example"),
        "bad-port": host.redirect("/to-bad-port", "http://127.0.0.1:99999/feed.xml"),
        "bad-ipv6": host.redirect("/to-bad-ipv6", "http://[::1/feed.xml"),
        "no-host": host.redirect("/to-no-host", "http://:80/feed.xml"),
    }
    good = host.base + "/good.xml"
    settings = settings_for([good, *bad.values()], allow_hosts=[f"127.0.0.1:{host.port}"])
    summary = scrape(con, settings, now=NOW)
    status = {f.url: f.status for f in summary.feeds}
    assert status[good] == "ok"
    assert "A good story survives its neighbours" in titles(con)
    assert status[bad["data"]] == status[bad["mailto"]] == "bad-scheme"
    assert {status[bad[k]] for k in ("bad-port", "bad-ipv6", "no-host")} == {"bad-redirect"}
    attempts = {f.url: f.attempts for f in summary.feeds}
    assert all(attempts[u] == 1 for u in bad.values())  # a bad address is not a transient failure
    first = health(con)
    assert all(first[u][:2] == (status[u], 1) for u in bad.values())  # health recorded
    scrape(con, settings, now=NOW)
    assert all(health(con)[u][2] for u in bad.values())  # two in a row: paused
    assert health(con)[good] == ("ok", 0, False)


# --- 8. internal addresses are refused on every hop -------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost@169.254.169.254/",
        "http://news.example/feed.xml\n",
        "http://news.example/fe ed.xml",
        "http://news.example/feed\x00.xml",
        "ftp://news.example/feed.xml",
        "http:///feed.xml",
        "http://news.example:99999/feed.xml",
    ],
)
def test_the_feed_url_setting_refuses_what_is_not_a_plain_web_address(url: str) -> None:
    with pytest.raises(ValidationError, match=r"feeds\.feeds\[\]\.url"):
        FeedSettings(url=url, name="x")


def test_allow_hosts_setting_is_checked() -> None:
    FeedsSettings(allow_hosts=["intranet.example", "10.1.0.0/16", "127.0.0.1:8080", "[::1]:8080", "::1"])
    with pytest.raises(ValidationError, match=r"feeds\.allow_hosts"):
        FeedsSettings(allow_hosts=["http://intranet.example/"])
    with pytest.raises(ValidationError, match=r"feeds\.allow_hosts"):
        FeedsSettings(allow_hosts=["10.0.0.0/33"])


def test_redirects_to_internal_addresses_are_refused(host: FeedHost, con: duckdb.DuckDBPyConnection) -> None:
    internal = FeedHost()  # another loopback service, not on the allow-list
    internal.routes["/secret.xml"] = Route(body=SECRET)
    try:
        feeds = {
            "metadata": host.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/"),
            "loopback": host.redirect("/to-loopback", f"{internal.base}/secret.xml"),
            "by-name": host.redirect("/to-localhost", f"http://localhost:{internal.port}/secret.xml"),
            "private": host.redirect("/to-private", "http://10.255.255.1/feed.xml"),
            "mapped": host.redirect("/to-mapped", f"http://[::ffff:127.0.0.1]:{internal.port}/secret.xml"),
        }
        good = host.base + "/good.xml"
        settings = settings_for([good, *feeds.values()], allow_hosts=[f"127.0.0.1:{host.port}"])
        summary = scrape(con, settings, now=NOW)
        status = {f.url: (f.status, f.attempts) for f in summary.feeds}
        assert status[good] == ("ok", 1)
        assert {status[u] for u in feeds.values()} == {("refused-address", 1)}
        detail = next(f.detail for f in summary.feeds if f.url == feeds["metadata"])
        assert "169.254.169.254" in detail and "feeds.allow_hosts" in detail
        assert internal.hits == {}  # nothing ever reached the internal service
        assert "Internal secret story" not in titles(con)
        assert health(con)[feeds["loopback"]][:2] == ("refused-address", 1)

        # The first hop is checked too: a configured loopback feed is refused unless allowed.
        direct = internal.base + "/secret.xml"
        refused = scrape(con, settings_for([direct]), now=NOW)
        assert refused.feeds[0].status == "refused-address" and internal.hits == {}
        allowed = scrape(con, settings_for([direct], allow_hosts=["127.0.0.0/8"]), now=NOW)
        assert allowed.feeds[0].status == "ok" and "Internal secret story" in titles(con)
    finally:
        internal.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_demo_feeds_on_loopback_work_without_an_allow_list(con: duckdb.DuckDBPyConnection) -> None:
    port = _free_port()
    with DemoFeedServer(port=port, clock=lambda: NOW, days=1) as srv:
        settings = FeedsSettings(demo_port=port, read_timeout_s=5.0)  # no feeds: the demo outlets
        summary = scrape(con, settings, now=NOW)
        assert summary.items_added > 300 and not summary.problems
        # The demo address is allowed, not loopback: another port on 127.0.0.1 stays refused.
        other = FeedHost()
        other.routes["/secret.xml"] = Route(body=SECRET)
        try:
            listed = FeedsSettings(
                demo_port=port,
                feeds=[*srv.feed_configs()[:1], {"url": other.base + "/secret.xml", "name": "x"}],
            )
            mixed = scrape(con, listed, now=NOW)
            assert [f.status for f in mixed.feeds] == ["not-modified", "refused-address"]  # demo: a 304
            assert other.hits == {}
        finally:
            other.close()


# --- 7. escaped markup stays text -------------------------------------------------------------

ESCAPED = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Escapes</title><link>https://esc.example/</link>
<item><title>Tom &amp;amp; Jerry &amp;lt;img src=x onerror=alert(1)&amp;gt; end</title>
<link>https://esc.example/a</link>
<description><![CDATA[<p>Body &amp;lt;script&amp;gt;alert(2)&amp;lt;/script&amp;gt; &amp;amp;amp; done</p>]]></description>
</item>
<item><title>Plain 5 &lt; 6 and AT&amp;T</title><link>https://esc.example/b</link>
<description>&lt;p&gt;Real &lt;b&gt;tags&lt;/b&gt; go &amp;amp; entities decode once&lt;/p&gt;</description></item>
</channel></rss>"""

ESCAPED_ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom escapes</title><id>urn:esc</id>
<updated>2026-11-19T10:00:00Z</updated>
<entry><title type="text">R&amp;amp;D &amp;lt;b&amp;gt;budget&amp;lt;/b&amp;gt; grows</title>
<link href="https://esc.example/atom"/><id>urn:esc:1</id><updated>2026-11-19T09:00:00Z</updated>
<summary type="html">&lt;i&gt;Shown&lt;/i&gt; &amp;amp;lt;svg onload=x&amp;amp;gt;</summary></entry>
</feed>"""


def test_escaped_markup_is_decoded_once_and_never_becomes_live(
    host: FeedHost, con: duckdb.DuckDBPyConnection
) -> None:
    host.routes["/escaped.xml"] = Route(body=ESCAPED)
    host.routes["/escaped.atom"] = Route(body=ESCAPED_ATOM, headers={"Content-Type": "application/atom+xml"})
    urls = [host.base + "/escaped.xml", host.base + "/escaped.atom"]
    scrape(con, settings_for(urls, allow_hosts=[f"127.0.0.1:{host.port}"]), now=NOW)
    stored = dict(
        con.execute("SELECT url, title || ' | ' || coalesce(description, '') FROM items").fetchall()
    )
    assert stored["https://esc.example/a"] == (
        "Tom & Jerry &lt;img src=x onerror=alert(1)> end | "
        "Body &lt;script&gt;alert(2)&lt;/script&gt; &amp;amp; done"
    )
    assert stored["https://esc.example/b"] == "Plain 5 < 6 and AT&T | Real tags go & entities decode once"
    assert (
        stored["https://esc.example/atom"]
        == "R&amp;D &lt;b&gt;budget&lt;/b&gt; grows | Shown &lt;svg onload=x&gt;"
    )
    for text in stored.values():
        for tag in ("<img", "<script", "<svg", "<b>", "<i>", "</"):
            assert tag not in text


def test_clean_text_decodes_html_once_and_plain_text_not_at_all() -> None:
    assert clean_text("AT&amp;amp;T &lt;b&gt;") == "AT&amp;T &lt;b>"
    assert clean_text("AT&amp;T &lt;b&gt;", html=False) == "AT&amp;T &lt;b&gt;"
    assert clean_text("a <b>bold</b> claim: 1 < 2") == "a bold claim: 1 < 2"


# --- 9. entity declarations anywhere, in any encoding -----------------------------------------

BOMB_DOCTYPE = (
    '<!DOCTYPE rss [\n<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">\n'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(6))
    + "]>\n"
)
BOMB_BODY = (
    '<rss version="2.0"><channel><title>Bomb</title><link>https://bomb.example/</link>'
    "<item><title>Expanded &g; title</title><link>https://bomb.example/x</link></item></channel></rss>"
)


def test_entity_declarations_are_refused_wherever_and_however_encoded(
    host: FeedHost, con: duckdb.DuckDBPyConnection
) -> None:
    long_comment = "<!-- " + "padding " * 10_000 + "-->\n"
    documents = {
        "/after-comment.xml": ('<?xml version="1.0"?>\n' + long_comment + BOMB_DOCTYPE + BOMB_BODY).encode(),
        "/utf16-bom.xml": ('<?xml version="1.0" encoding="utf-16"?>\n' + BOMB_DOCTYPE + BOMB_BODY).encode(
            "utf-16"
        ),
        "/utf16be-no-bom.xml": (
            '<?xml version="1.0" encoding="utf-16be"?>\n' + BOMB_DOCTYPE + BOMB_BODY
        ).encode("utf-16-be"),
        "/utf32.xml": ('<?xml version="1.0" encoding="utf-32"?>\n' + BOMB_DOCTYPE + BOMB_BODY).encode(
            "utf-32"
        ),
    }
    for path, body in documents.items():
        host.routes[path] = Route(body=body, headers={"Content-Type": "application/xml"})
    # A DOCTYPE without declarations (RSS 0.91's) is harmless and still parsed.
    host.routes["/rss091.xml"] = Route(
        body=b'<?xml version="1.0"?>\n<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        b'"http://my.netscape.com/publish/formats/rss-0.91.dtd">\n<rss version="0.91"><channel>'
        b"<title>Old</title><link>https://old.example/</link><description>d</description><language>en</language>"
        b"<item><title>An RSS 0.91 story</title><link>https://old.example/1</link></item></channel></rss>"
    )
    urls = [host.base + p for p in [*documents, "/rss091.xml"]]
    summary = scrape(con, settings_for(urls, allow_hosts=[f"127.0.0.1:{host.port}"]), now=NOW)
    status = {f.url.removeprefix(host.base): f.status for f in summary.feeds}
    assert status == {**dict.fromkeys(documents, "entity-declaration"), "/rss091.xml": "ok"}
    assert titles(con) == {"An RSS 0.91 story"}


# --- 12. a feed whose every entry is rejected is not ok ---------------------------------------

ALL_BAD = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>Junk</title><link>https://junk.example/</link>
<item><title></title><link>https://junk.example/untitled</link></item>
<item><title>Link is not a web address</title><link>javascript:alert(1)</link></item>
<item><title>From the future</title><link>https://junk.example/future</link>
<pubDate>Sat, 01 Jan 2050 00:00:00 GMT</pubDate></item>
</channel></rss>"""


def test_a_feed_whose_every_entry_is_rejected_counts_as_failing(
    host: FeedHost, con: duckdb.DuckDBPyConnection
) -> None:
    host.routes["/junk.xml"] = Route(body=ALL_BAD, headers={"ETag": '"junk-1"'})
    junk, good = host.base + "/junk.xml", host.base + "/good.xml"
    settings = settings_for([junk, good], allow_hosts=[f"127.0.0.1:{host.port}"])
    first = scrape(con, settings, now=NOW)
    outcome = {f.url: f for f in first.feeds}
    assert outcome[junk].status == "all-rejected" and outcome[junk].quarantined == 3
    assert "3 entries" in outcome[junk].detail
    assert outcome[good].status == "ok"
    assert health(con)[junk] == ("all-rejected", 1, False)
    second = scrape(con, settings, now=NOW)  # fetched in full again (no validators kept): paused
    assert {f.url: f.status for f in second.feeds}[junk] == "all-rejected"
    assert health(con)[junk] == ("all-rejected", 2, True)
    assert any(f.url == junk for f in second.problems)
