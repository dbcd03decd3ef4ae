"""Feed items are stories (issue 14, item 7), through a real uvicorn server.

Each ``/feed`` item carries its summary, link, outlet and published time from the bundle's
catalog, and ``why`` it is there in plain words: the pool's "top story in …" / "trending in …"
for a new reader, "new this hour" for a story published minutes ago, "because you read “…”"
once the reader has clicked a story. ``?session=`` names the reader like the cookie does, and a
bundle written before the story columns existed still serves (its story fields are null).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from storage.artifacts import ArtifactStore
from storage.warehouse import connect
from tests.serving_fixtures import (
    FRESH,
    OUTLET,
    PUBLISHED_BASE,
    Catalogue,
    build_catalogue,
    film_rows,
    publish_with_pool,
    serve,
    story_of,
    wait_for,
)

PLAIN = re.compile(r"^(top story in|trending in|something different:) [A-Za-z-]+$|^new this hour$")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("stories"))


@pytest.fixture(scope="module")
def client(catalogue: Catalogue) -> Iterator[httpx.Client]:
    with serve(catalogue.settings) as (_app, c):
        yield c


def reader(client: httpx.Client) -> httpx.Client:
    """A new reader: a client of the same server with an empty cookie jar."""
    return httpx.Client(base_url=str(client.base_url), timeout=30)


def test_feed_items_are_stories_with_plain_reasons(catalogue: Catalogue, client: httpx.Client) -> None:
    with reader(client) as new:
        body = new.get("/feed", params={"k": 20}).json()  # the whole pool
    assert body["strategy"] == "fresh_popular_fallback"
    titles = {r[0]: (r[1], r[2]) for r in film_rows()}
    for item in body["items"]:
        title, genre = titles[item["item_id"]]
        story = story_of(item["item_id"], title, genre)
        assert item["summary"] == story["summary"] and item["link"] == story["link"]
        assert item["outlet"] == OUTLET, "the outlet of the item's own URL represents it"
        published = datetime.fromisoformat(item["published"].replace("Z", "+00:00"))
        assert item["published"].endswith("Z") and published.tzinfo is not None
        if item["item_id"] != FRESH:
            row = [r[0] for r in film_rows()].index(item["item_id"])
            assert published == datetime.fromtimestamp(PUBLISHED_BASE - 600 * row, UTC)
        assert PLAIN.match(item["why"]), item["why"]
        assert item["topic"] == genre and item["reason_code"] == "fresh"
    whys = {it["item_id"]: it["why"] for it in body["items"]}
    # The pool's best film of a topic is its top story, the others trend; exploration says so.
    for item in body["items"]:
        if item["stage"] == "exploration":
            assert item["why"] == f"something different: {item['topic']}"
        elif item["item_id"] == FRESH:
            assert item["why"] == "new this hour"
        else:
            pool_rank = catalogue.pool_ids.index(item["item_id"])
            first = all(catalogue.genre_of[p] != item["topic"] for p in catalogue.pool_ids[:pool_rank])
            assert item["why"] == ("top story in " if first else "trending in ") + item["topic"]
    assert whys[FRESH] == "new this hour", "the whole pool is listed, the fresh story with it"
    assert any(w.startswith("top story in") for w in whys.values())
    assert any(w.startswith("trending in") for w in whys.values())


def test_because_you_read_after_a_click_with_the_session_param(client: httpx.Client) -> None:
    session = "reader-stories-1"
    # Films outside the pool, so the pool's horror films remain to be recommended.
    for item in ("hor-1", "hor-3", "hor-5"):
        with reader(client) as c:  # no cookie is ever sent
            answer = c.post("/interact", json={"item_id": item, "event": "click", "session": session})
        assert answer.status_code == 200 and answer.json()["session"] == session
    with reader(client) as c:
        feed = c.get("/feed", params={"k": 6, "session": session}).json()
    assert feed["session"] == session and feed["session_events"] == 3
    assert feed["strategy"] == "personalized"
    read = {"Halloween", "The Exorcist", "Scream"}  # hor-1, hor-3, hor-5
    because = [it for it in feed["items"] if it["why"].startswith("because you read")]
    assert because, [it["why"] for it in feed["items"]]
    for item in because:
        quoted = item["why"].removeprefix("because you read \u201c").removesuffix("\u201d")
        assert quoted in read, item["why"]
    horror = [it for it in because if it["item_id"].startswith("hor-")]
    assert horror, "a horror pick is explained by a horror film the reader read"


def test_session_param_equals_the_cookie_and_wins_over_it(client: httpx.Client) -> None:
    session = "reader-stories-2"
    with reader(client) as c:
        c.post("/interact", json={"item_id": "cri-0", "event": "like", "session": session})
    with reader(client) as c:
        by_param = c.get("/feed", params={"k": 5, "session": session})
    with reader(client) as c:
        c.cookies.set("recflow_session", session)
        by_cookie = c.get("/feed", params={"k": 5})
    with reader(client) as c:
        c.cookies.set("recflow_session", "someone-else")
        both = c.get("/feed", params={"k": 5, "session": session})
    same = [{k: v for k, v in r.json().items() if k != "request_id"} for r in (by_param, by_cookie, both)]
    assert same[0] == same[1] == same[2], "the same answer, each under its own request id"
    assert by_param.json()["session"] == session and by_param.json()["session_events"] == 1
    assert both.cookies.get("recflow_session") == session, "the cookie follows the named session"
    assert "recflow_session" not in by_cookie.cookies, "a valid cookie is not set again"
    bad = client.get("/feed", params={"session": "not a session!"})
    assert bad.status_code == 422 and "session" in bad.text


def test_a_bundle_without_story_columns_still_serves(tmp_path: Path, catalogue: Catalogue) -> None:
    """A catalog written before the story columns existed: /feed answers, story fields null."""
    home = tmp_path
    settings = catalogue.settings.model_copy(update={"home": home})
    con = connect(catalogue.settings.warehouse_path, read_only=True)
    try:
        store = ArtifactStore(settings.bundles_dir)
        version = publish_with_pool(store, con, catalogue.data, catalogue.vectors, None, story_columns=False)
    finally:
        con.close()
    with serve(settings) as (_app, c):
        wait_for(lambda: c.get("/health").status_code == 200, what="the old bundle to load")
        body = c.get("/feed", params={"k": 4}).json()
        assert body["bundle_version"] == version and body["pool_date"] is None
        for item in body["items"]:
            assert (item["summary"], item["link"], item["outlet"], item["published"]) == (None,) * 4
            assert item["why"] and item["reason_code"] is None
