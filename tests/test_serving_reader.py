"""The news reader at ``/`` (issue 14, item 8) in headless Chromium, with real mouse clicks.

A catalogue whose source is news (``feeds``) gets the reader: headlines linking to their
stories, outlet, "… ago", summary, topic chips that filter the feed
(``/feed?categories=<topic>&mode=strict``), like / skip (``/interact``), "more like this"
(``/items/{id}/similar``) and "more" at the bottom. Any other catalogue keeps the item view.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from serving.events import read_events
from storage.settings import Settings, SourceSettings
from tests import test_serving_browser as chromium
from tests.serving_fixtures import OUTLET, Catalogue, build_catalogue, serve

pytestmark = pytest.mark.slow  # headless Chromium over a real uvicorn server

browser = chromium.browser  # the same fixture: headless Chromium with its DevTools endpoint
INTERNAL = ("fallback", "personalized", "fresh_popular", "ranker", "mmr", "exploration", "cascade")
"""Words of the service's internals a reader must never see on the page."""


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("reader"))


def as_news(settings: Settings, home: Path) -> Settings:
    """The same catalogue, declared a news one (its items come from feeds)."""
    return settings.model_copy(update={"source": SourceSettings(kind="feeds", path=home / "feeds")})


def click(tools: chromium.DevTools, selector: str) -> None:
    """Scroll ``selector`` into view, then a real mouse click on it."""
    tools.evaluate(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
    tools.click(selector)


def shown(tools: chromium.DevTools) -> list[str]:
    return json.loads(
        tools.evaluate(
            "JSON.stringify([...document.querySelectorAll('li.story')].map(li => li.dataset.itemId))"
        )
    )


def test_the_news_reader_in_the_browser(catalogue: Catalogue, browser: str, tmp_path: Path) -> None:
    settings = as_news(catalogue.settings, tmp_path)
    with serve(settings) as (_app, client):
        targets = httpx.get(f"{browser}/json/list").json()
        page = next(t for t in targets if t["type"] == "page")
        tools = chromium.DevTools(page["webSocketDebuggerUrl"])
        try:
            tools.send("Page.enable")
            tools.send("Page.navigate", url=f"{client.base_url}/")
            tools.wait_until("document.body.dataset.loaded === '1'")
            before = shown(tools)
            assert len(before) == 10

            # A story: headline linking to it, outlet, age, summary, topic chip, plain why.
            story = json.loads(
                tools.evaluate(
                    "JSON.stringify((() => { const li = document.querySelector('li.story');"
                    " return {href: li.querySelector('a.headline').href,"
                    " outlet: li.querySelector('.outlet').textContent, ago: li.querySelector('.ago').textContent,"
                    " summary: li.querySelector('.summary').textContent, why: li.querySelector('.why').textContent,"
                    " topic: li.querySelector('.byline .chip').dataset.topic}; })())"
                )
            )
            first = before[0]
            assert story["href"] == f"https://planet.example/{first}"
            assert story["outlet"] == OUTLET and re.fullmatch(r"\d+ (min|h|d) ago", story["ago"]), story
            assert story["summary"].endswith("story.") and story["why"], story
            assert story["topic"] == catalogue.genre_of[first]
            text = tools.evaluate("document.body.innerText")
            cookies = tools.send("Network.getAllCookies")["cookies"]
            session = next(c["value"] for c in cookies if c["name"] == settings.serving.session_cookie)
            assert session not in text, "no session id on the page"
            assert not [w for w in INTERNAL if w in text.lower()], text
            assert "Like or skip a few" in text

            # A topic chip filters the feed to that topic; "All topics" lifts the filter.
            topic = story["topic"]
            click(tools, "li.story .byline .chip")
            tools.wait_until("document.body.dataset.loaded === '2'")
            filtered = shown(tools)
            pool_of_topic = [i for i in catalogue.pool_ids if catalogue.genre_of[i] == topic]
            assert filtered and set(filtered) == set(pool_of_topic), (topic, filtered)
            active = tools.evaluate("document.querySelector('nav#topics .chip.active').dataset.topic")
            assert active == topic
            click(tools, "nav#topics .chip[data-topic='']")
            tools.wait_until("document.body.dataset.loaded === '3'")
            assert shown(tools) == before

            # Like, then skip: each goes to /interact and the feed changes.
            liked = shown(tools)[0]
            click(tools, "li.story button.like")
            tools.wait_until("document.body.dataset.loaded === '4'")
            skipped = shown(tools)[0]
            click(tools, "li.story button.skip")
            tools.wait_until("document.body.dataset.loaded === '5'")
            after = shown(tools)
            assert liked not in after and skipped not in after and after != before
            status = tools.evaluate("document.getElementById('status').textContent")
            assert "picked for you from 2 reactions" in status, status

            # More like this: the stories nearest to it, listed under it, linking to them.
            target = after[0]
            click(tools, "li.story button.similar")
            tools.wait_until("document.querySelectorAll('li.story .alike li').length > 0")
            similar = json.loads(
                tools.evaluate(
                    "JSON.stringify([...document.querySelectorAll('li.story .alike li')]"
                    ".map(li => [li.dataset.itemId, li.querySelector('a.related').href]))"
                )
            )
            expected = client.get(f"/items/{target}/similar", params={"k": 4}).json()["items"]
            assert similar == [[it["item_id"], it["link"]] for it in expected]

            # "more" appends the next stories below the ones shown.
            click(tools, "#more")
            tools.wait_until("document.body.dataset.appended === '1'")
            longer = shown(tools)
            assert len(longer) > len(after) and longer[: len(after)] == after
            assert not set(longer) & {liked, skipped}
        finally:
            tools.close()
    logged = [(e.item_id, e.event) for e in read_events(settings.events_dir)]
    assert logged == [(liked, "like"), (skipped, "skip")]


def test_other_catalogues_keep_the_item_view(catalogue: Catalogue, tmp_path: Path) -> None:
    with serve(catalogue.settings) as (_app, client):
        movie = client.get("/").text
    with serve(as_news(catalogue.settings, tmp_path)) as (_app, client):
        news = client.get("/").text
    assert "<h1>Your feed</h1>" in movie and "li.story" not in movie
    assert "<h1>The News</h1>" in news and "more like this" in news


def test_the_reader_screenshot(catalogue: Catalogue, tmp_path: Path) -> None:
    """``make reader-screenshot``'s PNG, taken of the reader over a live bundle."""
    from deployments.screenshot_reader import screenshot_reader

    png = screenshot_reader(tmp_path / "reader.png", as_news(catalogue.settings, tmp_path), height=800)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(head[16:20], "big") == 1000 and int.from_bytes(head[20:24], "big") == 800
    with pytest.raises(SystemExit, match="item view"):
        screenshot_reader(tmp_path / "movies.png", catalogue.settings)
