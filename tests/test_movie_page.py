"""The movie page (``/movies``) in headless Chromium over a real service: a prompt typed and
sent with real mouse clicks, the weight sliders moved by clicks on their tracks, the genre
selector and the user selector; each answer is checked against the fixture films' genres."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests import test_serving_browser
from tests.serving_fixtures import Catalogue, build_catalogue, serve
from tests.test_serving_browser import DevTools

pytestmark = pytest.mark.slow  # headless Chromium

browser = test_serving_browser.browser  # the same Chromium fixture as the feed page's test


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("movies"))


def click_at(tools: DevTools, selector: str, fraction: float) -> None:
    """A real left click ``fraction`` of the way along the element (a slider's track)."""
    x, y = tools.evaluate(
        f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
        f" return [r.x + 8 + (r.width - 16) * {fraction}, r.y + r.height / 2]; }})()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        tools.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def ask(tools: DevTools, text: str, answer: int) -> list[dict[str, Any]]:
    """Type ``text`` into the prompt (clicked, cleared, typed), click Recommend, wait for
    answer number ``answer``; the cards' item ids and genres."""
    tools.click("#prompt")
    tools.evaluate("document.getElementById('prompt').select()")
    tools.send("Input.insertText", text=text)
    tools.click("#go")
    tools.wait_until(f"document.body.dataset.answers === '{answer}'")
    cards = tools.evaluate(
        "JSON.stringify([...document.querySelectorAll('li.card')].map(li => ({id: li.dataset.itemId,"
        " why: li.querySelector('.why').textContent})))"
    )
    return list(json.loads(cards))


def test_the_movie_page_asks_by_prompt_genre_user_and_weights(catalogue: Catalogue, browser: str) -> None:
    genre = catalogue.genre_of
    with serve(catalogue.settings) as (_app, client):
        targets = httpx.get(f"{browser}/json/list").json()
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            tools.send("Page.enable")
            tools.send("Page.navigate", url=f"{client.base_url}/movies")
            tools.wait_until("document.body.dataset.ready === '1'")
            users = tools.evaluate("document.getElementById('user').options.length")
            genres = json.loads(
                tools.evaluate(
                    "JSON.stringify([...document.getElementById('genre').options].map(o => o.value))"
                )
            )
            assert users == 1 + 13 and set(genres) == {"", *genre.values()}
            assert tools.evaluate("document.getElementById('v-genre').textContent") == "0.40"

            space = ask(tools, "space adventure with aliens", 1)
            assert [genre[c["id"]] for c in space[:3]] == ["Sci-Fi"] * 3
            assert "Sci-Fi as asked" in space[0]["why"]
            chips = tools.evaluate("document.getElementById('read').textContent")
            assert "Sci-Fi 1.00" in chips

            cozy = ask(tools, "a cozy film for a rainy Sunday, nothing scary", 2)
            assert "Horror" not in {genre[c["id"]] for c in cozy}
            off = tools.evaluate(
                "[...document.querySelectorAll('.chip.off')].map(c => c.textContent).join('|')"
            )
            assert "scary: nothing scary" in off and "Horror: nothing scary" in off

            # Sliders: genre and closeness to 0, popularity to 1 (clicks on the tracks' ends).
            click_at(tools, "#w-genre", 0.0)
            click_at(tools, "#w-similarity", 0.0)
            click_at(tools, "#w-popularity", 1.0)
            shown = [
                tools.evaluate(f"document.getElementById('v-{p}').textContent")
                for p in ("genre", "popularity")
            ]
            assert shown == ["0.00", "1.00"]
            tools.click("#go")
            tools.wait_until("document.body.dataset.answers === '3'")
            by_pop = json.loads(
                tools.evaluate(
                    "JSON.stringify([...document.querySelectorAll('li.card')].map(li => li.dataset.itemId))"
                )
            )
            assert by_pop != [c["id"] for c in cozy], "the weights change the order"
            pops = [client.get(f"/items/{i}").json()["popularity"] for i in by_pop]
            assert pops == sorted(pops, reverse=True)

            # A genre, strictly, for a user: only westerns, none the user has seen.
            tools.evaluate("document.getElementById('genre').value = 'Western'")
            tools.evaluate("document.getElementById('mode').value = 'strict'")
            tools.evaluate("document.getElementById('user').value = 'u0'")
            click_at(tools, "#w-user", 1.0)
            tools.click("#go")
            tools.wait_until("document.body.dataset.answers === '4'")
            westerns = json.loads(
                tools.evaluate(
                    "JSON.stringify([...document.querySelectorAll('li.card')].map(li => li.dataset.itemId))"
                )
            )
            status = tools.evaluate("document.getElementById('status').textContent")
            whys = tools.evaluate("[...document.querySelectorAll('li.card .why')].map(w => w.textContent)")
        finally:
            tools.close()
        seen = {i["item_id"] for i in client.get("/users/u0/history").json()["items"]}
    assert westerns and {genre[i] for i in westerns} == {"Western"}
    assert not seen & set(westerns)
    assert status.startswith(f"{len(westerns)} films for “a cozy film"), status
    assert any("fits user u0's taste" in w for w in whys), whys
