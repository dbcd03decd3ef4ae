"""The service's API documentation: the OpenAPI document the routers produce, and the
``/docs`` and ``/redoc`` pages, which must work without internet.

``fixtures/serving_openapi_before_split.json`` is ``/openapi.json`` as the service produced
it before its endpoints moved into ``serving.routers`` (one closure in ``create_app``), for
the settings in :func:`shaped_settings`. The routers must produce the same document: same
paths, parameters, bounds, descriptions, responses and operation ids. The one intended
difference is that the scored-item model is now one (``CascadeItem``): ``ScoredItem``, which
only ``/recommend/{user_id}`` and ``/items/{item_id}/similar`` used, is gone and those two
now reference ``CascadeItem``, whose ``stage`` is required (every listed item has one).
Hardening (issue 16) changed ``POST /interact`` on purpose: its idempotency key
(``event_id``), the client key header and its 401 / 409 answers (:func:`hardened`).
Feed items became stories (issue 14): ``FeedItem``'s story fields, ``why`` in plain words,
``reason_code`` and ``GET /feed``'s ``session`` query parameter (:func:`stories`); fresh
stories came from deltas (:func:`freshness`); ``/health`` names its catalogue (:func:`per_catalogue`). Answers
carry the ``request_id`` of their impression, and ``global`` joined the update modes
(:func:`impressions_and_global`).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from serving.app import create_app
from storage.settings import Settings
from tests.serving_fixtures import ServerThread

BEFORE = Path(__file__).resolve().parent / "fixtures" / "serving_openapi_before_split.json"


def shaped_settings(home: Path) -> Settings:
    """Settings that reach the documented parameters: ``k``'s bound, the defaults the
    descriptions state, the cookie's name, the admin key."""
    return Settings(
        home=home,
        catalogue="x",
        serving={
            "max_k": 50,
            "mmr_lambda": 0.5,
            "exploration": False,
            "session_cookie": "sid",
            "admin_api_key": "k",
        },
    )


def merged_scored_item(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``ScoredItem`` folded into ``CascadeItem``, as the split intends."""
    spec = json.loads(
        json.dumps(spec).replace('"#/components/schemas/ScoredItem"', '"#/components/schemas/CascadeItem"')
    )
    del spec["components"]["schemas"]["ScoredItem"]
    return spec


def hardened(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``POST /interact``'s additions: ``event_id``, ``X-Client-Key``, 401 and 409."""
    spec = json.loads(json.dumps(spec))
    body = spec["components"]["schemas"]["InteractBody"]["properties"]
    body["event_id"] = {
        "anyOf": [{"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}, {"type": "null"}],
        "title": "Event Id",
        "description": "Idempotency key (e.g. a uuid4 hex): a retry with the same id is answered like "
        "the first and is neither logged nor applied again. Default: a new id.",
    }
    interact = spec["paths"]["/interact"]["post"]
    interact["description"] += (
        "\n\nWith an ``event_id`` (idempotency key) a retry is answered like the first time and\n"
        "neither logged nor applied again (409 while the first is still in flight). With\n"
        "``serving.client_keys`` set, an ``X-Client-Key`` is required (401 otherwise)."
    )
    description = "The client app's key, when `serving.client_keys` is set."
    interact["parameters"].insert(
        0,
        {
            "name": "x-client-key",
            "in": "header",
            "required": False,
            "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": description,
                       "title": "X-Client-Key"},
            "description": description,
        },
    )  # fmt: skip
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}}}
    interact["responses"]["401"] = {"description": "Unauthorized", **error}
    interact["responses"]["409"] = {"description": "Conflict", **error}
    return spec


def _optional(title: str, description: str, **string: Any) -> dict[str, Any]:
    return {
        "anyOf": [{"type": "string", **string}, {"type": "null"}],
        "title": title,
        "description": description,
    }


def stories(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with feed items as stories: ``FeedItem``'s summary, link, outlet, published and
    reason_code, ``topic`` and ``why`` described, and ``GET /feed``'s ``session`` parameter."""
    spec = json.loads(json.dumps(spec))
    item = spec["components"]["schemas"]["FeedItem"]
    item["description"] = (
        "A feed entry: a story with what a reader needs to decide to open it, and why it is\n"
        "here. Story fields are null where the catalogue has none (e.g. MovieLens)."
    )
    props = item["properties"]
    props["summary"] = _optional("Summary", "The story's summary, as its outlet gave it.")
    props["link"] = _optional("Link", "The story's canonical URL.")
    props["outlet"] = _optional("Outlet", "The outlet that carried it (the representative one).")
    props["published"] = _optional("Published", "When it was published: ISO 8601, UTC.")
    props["topic"] = _optional("Topic", "Its topic in today's pool.")
    props["why"] = _optional(
        "Why",
        "Why it is here, in plain words: 'because you read \u201c\u2026\u201d', 'trending in sports', "
        "'top story in world', 'new this hour', 'something different: science'.",
    )
    props["reason_code"] = _optional(
        "Reason Code", "The pool's machine-readable reason (freshness, outlets, topic rank)."
    )
    feed = spec["paths"]["/feed"]["get"]
    feed["description"] = (
        "Today's pool ranked for this reader. A session cookie (or ``?session=``) identifies\n"
        "an anonymous reader (the cookie is set on the first visit); a new session gets a diverse\n"
        "fresh pool. Each item is a story (summary, link, outlet, published time) with ``why``\n"
        "it is there in plain words."
    )
    description = "Session id, for clients without cookies; wins over the session cookie."
    session = {
        "name": "session",
        "in": "query",
        "required": False,
        "schema": _optional("Session", description, pattern="^[A-Za-z0-9_-]{1,64}$"),
        "description": description,
    }
    names = [p["name"] for p in feed["parameters"]]
    feed["parameters"].insert(names.index("user_id") + 1, session)
    return spec


def freshness(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with freshness (deltas): the ``fresh`` stage, and ``/health``'s delta fields."""
    spec = json.loads(json.dumps(spec))
    for schema in spec["components"]["schemas"].values():
        stage = schema.get("properties", {}).get("stage")
        if stage is not None and "enum" in stage:
            stage["enum"].append("fresh")
            stage["description"] = stage["description"].removesuffix(".") + (
                ", fresh (a story newer than the pool, from a delta: the freshness slot)."
            )
    health = spec["components"]["schemas"]["Health"]["properties"]
    health["delta_seq"] = {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "title": "Delta Seq",
        "description": "The delta of the live bundle served (fresh stories since it), if any.",
    }
    health["fresh_items"] = {
        "type": "integer",
        "title": "Fresh Items",
        "description": "Stories served from deltas, not yet in a bundle.",
        "default": 0,
    }
    health["pool_date"] = _optional("Pool Date", "The daily pool served (from the bundle or a delta).")
    return spec


def per_catalogue(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``/health``'s ``catalogue`` (one process serves one catalogue)."""
    spec = json.loads(json.dumps(spec))
    health = spec["components"]["schemas"]["Health"]
    health["properties"]["catalogue"] = {
        "type": "string",
        "title": "Catalogue",
        "description": "The catalogue this process serves (one process per catalogue).",
    }
    health["required"].insert(1, "catalogue")
    return spec


def impressions_and_global(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with impressions and the ``global`` mode (issue 14, items 5 and 6): a
    ``request_id`` in every listed answer, and ``global`` among ``/interact``'s update modes."""
    spec = json.loads(json.dumps(spec))
    schemas = spec["components"]["schemas"]
    for name in ("Recommendation", "AdHocRecommendation", "Feed"):
        schemas[name]["properties"]["request_id"] = _optional(
            "Request Id", "This answer's id: its impression in the log (null only for old servers)."
        )
    interaction = schemas["Interaction"]["properties"]
    interaction["applied"]["description"] = (
        "Whether it changed the session's state (update_mode private or global)."
    )
    interaction["update_mode"]["enum"] = ["private", "global", "none"]
    interact = spec["paths"]["/interact"]["post"]
    interact["description"] = interact["description"].replace(
        "this answer, and (``update_mode: private``) changes the session's next answers.",
        "this answer, and (``update_mode: private`` or ``global``) changes the session's next\n"
        "answers; in ``global`` it also counts toward the item's trending score for everyone.",
    )
    return spec


def test_openapi_is_the_document_from_before_the_split(tmp_path: Path) -> None:
    before = json.loads(BEFORE.read_text())
    after = json.loads(json.dumps(create_app(shaped_settings(tmp_path)).openapi()))
    assert "ScoredItem" not in after["components"]["schemas"]
    expected = impressions_and_global(per_catalogue(freshness(stories(hardened(merged_scored_item(before))))))
    for path, operations in expected["paths"].items():
        assert after["paths"].get(path) == operations, path
    assert after == expected
    # The settings do reach the document (the fixture is not the defaults' document).
    recommend = {p["name"]: p for p in after["paths"]["/recommend/{user_id}"]["get"]["parameters"]}
    assert recommend["k"]["schema"]["maximum"] == 50
    assert "(default 0.5)" in recommend["mmr_lambda"]["description"]
    feed = {p["name"]: p for p in after["paths"]["/feed"]["get"]["parameters"]}
    assert feed["sid"]["in"] == "cookie" and feed["session"]["in"] == "query"


def test_the_default_settings_document_their_own_bounds(tmp_path: Path) -> None:
    spec = create_app(Settings(home=tmp_path)).openapi()
    for path in ("/recommend/{user_id}", "/feed", "/search", "/items/{item_id}/similar"):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert params["k"]["schema"]["maximum"] == Settings().serving.max_k, path
    assert "recflow_session" in {p["name"] for p in spec["paths"]["/interact"]["post"]["parameters"]}


class Links(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_docs_and_redoc_load_every_asset_from_the_service(tmp_path: Path) -> None:
    """Over a real server: each page's scripts, style sheet and icon are paths on this host,
    and each answers 200 with the real file (no bundle needs to be published for docs)."""
    with ServerThread(create_app(Settings(home=tmp_path))) as url, httpx.Client(base_url=url) as client:
        for page, needed in [
            ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
            ("/redoc", {"redoc.standalone.js", "favicon.png"}),
        ]:
            response = client.get(page)
            assert response.status_code == 200 and "text/html" in response.headers["content-type"]
            assert "http://" not in response.text and "https://" not in response.text, page
            assert response.headers["content-security-policy"] == "img-src 'self' data: blob:", page
            parser = Links()
            parser.feed(response.text)
            assert {u.rsplit("/", 1)[-1] for u in parser.urls} == needed, parser.urls
            for asset in parser.urls:
                assert asset.startswith("/docs/assets/") and not asset.startswith("//"), asset
                fetched = client.get(asset)
                assert fetched.status_code == 200, asset
                assert len(fetched.content) > (100_000 if asset.endswith((".js", ".css")) else 1000), asset
        assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
        assert "Redoc" in client.get("/docs/assets/redoc.standalone.js").text
        assert client.get("/docs/oauth2-redirect").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "recflow"
        assert client.get("/docs/assets/missing.js").status_code == 404


def test_docs_follow_the_root_path_behind_a_proxy(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path))
    html = TestClient(app, root_path="/api").get("/docs").text
    assert "/api/docs/assets/swagger-ui-bundle.js" in html and "url: '/api/openapi.json'" in html
