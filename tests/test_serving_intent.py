"""``POST /recommend/intent`` over a real uvicorn, on the fixture films (real MiniLM vectors):
genres and moods read from the text, negations suppressed, weights that change the order,
and 422s that name the bad input. The reading itself is also checked without a server."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from serving import intent
from serving.intent import clauses, find, load_lexicon
from tests.serving_fixtures import Catalogue, build_catalogue, serve


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("intent"))


@pytest.fixture(scope="module")
def served(catalogue: Catalogue) -> Any:
    with serve(catalogue.settings) as (app, http):
        yield app, http


@pytest.fixture(scope="module")
def client(served: tuple[FastAPI, httpx.Client]) -> httpx.Client:
    return served[1]


def ask(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/recommend/intent", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_named_genres_lead_the_list(client: httpx.Client, catalogue: Catalogue) -> None:
    body = ask(client, text="space adventure with aliens", k=5)
    read = {g["name"]: g for g in body["read"]["genres"]}
    assert read["Sci-Fi"]["weight"] == 1.0 and read["Sci-Fi"]["source"].startswith("named: ")
    genres = [catalogue.genre_of[i["item_id"]] for i in body["items"]]
    assert genres[:3] == ["Sci-Fi"] * 3, genres
    first = body["items"][0]
    assert "Sci-Fi as asked" in first["why"]
    assert abs(sum(first["parts"].values()) - first["score"]) < 1e-3
    assert body["weights"]["user"] == 0.0, "no user: the user part cannot apply"
    assert abs(sum(body["weights"].values()) - 1.0) < 1e-3


def test_moods_are_read_by_keyword(client: httpx.Client) -> None:
    body = ask(client, text="something to get my blood pumping")
    moods = {m["name"]: m for m in body["read"]["moods"]}
    assert moods["thrilling"] == {
        "name": "thrilling",
        "strength": 1.0,
        "source": "keyword",
        "matched": "blood pumping",
    }
    assert body["read"]["suppressed"] == []


def test_negation_suppresses_the_mood_and_its_genre(client: httpx.Client, catalogue: Catalogue) -> None:
    calm = ask(client, text="a cozy film for a rainy Sunday, nothing scary", k=50)
    assert {"name": "cozy", "strength": 1.0, "source": "keyword", "matched": "cozy"} in calm["read"]["moods"]
    assert "scary" not in {m["name"] for m in calm["read"]["moods"]}
    suppressed = {(s["kind"], s["name"]): s["because"] for s in calm["read"]["suppressed"]}
    assert suppressed[("mood", "scary")] == "nothing scary"
    assert suppressed[("genre", "Horror")] == "nothing scary"
    assert "scary" not in calm["read"]["encoded"] and "cozy" in calm["read"]["encoded"]
    listed = [catalogue.genre_of[i["item_id"]] for i in calm["items"]]
    films = len(catalogue.genre_of)
    assert "Horror" not in listed and len(listed) == calm["candidates"] == films - 6, (
        "all but the horror films"
    )
    assert {"Romance", "Animation"} & set(listed[:3])

    scary = ask(client, text="a cozy film for a rainy Sunday, something scary", k=5)
    assert "scary" in {m["name"] for m in scary["read"]["moods"]}
    assert catalogue.genre_of[scary["items"][0]["item_id"]] == "Horror"


def test_named_genre_can_be_negated(client: httpx.Client, catalogue: Catalogue) -> None:
    body = ask(client, text="a romance without cowboys", k=50)
    assert {"name": "Western", "kind": "genre", "because": "without cowboys"} in body["read"]["suppressed"]
    listed = [catalogue.genre_of[i["item_id"]] for i in body["items"]]
    assert "Western" not in listed and listed[0] == "Romance"


def test_weights_change_the_order(client: httpx.Client) -> None:
    text = "a romantic love story"
    by_genre = ask(client, text=text, k=8, weights={"genre": 1, "popularity": 0, "similarity": 0})
    by_pop = ask(client, text=text, k=8, weights={"genre": 0, "popularity": 1, "similarity": 0})
    assert [i["item_id"] for i in by_genre["items"]] != [i["item_id"] for i in by_pop["items"]]
    assert by_pop["weights"] == {"user": 0.0, "genre": 0.0, "popularity": 1.0, "similarity": 0.0}
    popularity = [client.get(f"/items/{i['item_id']}").json()["popularity"] for i in by_pop["items"]]
    assert popularity == sorted(popularity, reverse=True), "popularity alone orders by popularity"
    assert all(i["parts"]["genre"] == 0 for i in by_pop["items"])


def test_user_score_blends_in_and_seen_items_are_excluded(client: httpx.Client) -> None:
    seen = {i["item_id"] for i in client.get("/users/u0/history").json()["items"]}
    body = ask(client, text="a film", user_id="u0", k=20, weights={"user": 1, "genre": 0, "popularity": 0})
    assert body["user_id"] == "u0" and body["weights"]["user"] > 0.8
    assert not seen & {i["item_id"] for i in body["items"]}
    assert body["items"][0]["parts"]["user"] > 0
    assert "fits user u0's taste" in body["items"][0]["why"]
    missing = client.post("/recommend/intent", json={"text": "a film", "user_id": "nobody"})
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]


def test_strict_categories_keep_only_those(client: httpx.Client, catalogue: Catalogue) -> None:
    body = ask(client, text="something to watch tonight", categories=["Western"], mode="strict", k=10)
    assert {catalogue.genre_of[i["item_id"]] for i in body["items"]} == {"Western"}
    soft = ask(client, text="something to watch tonight", categories=["Western"], k=3)
    assert {"name": "Western", "weight": 1.0, "source": "selected"} in soft["read"]["genres"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 501}, "text"),
        ({}, "text"),
        ({"text": "space", "k": 0}, "k"),
        ({"text": "space", "weights": {"genre": 2}}, "weights"),
        ({"text": "space", "weights": {"mood": 0.5}}, "weights"),
        ({"text": "space", "weights": {"user": 0, "genre": 0, "popularity": 0, "similarity": 0}}, "weights"),
        ({"text": "space", "categories": ["Nope"]}, "categories"),
        ({"text": "space", "mode": "maybe"}, "mode"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = client.post("/recommend/intent", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(field in err["loc"] for err in detail), detail


def test_movie_page_is_served(client: httpx.Client) -> None:
    page = client.get("/movies")
    assert page.status_code == 200 and 'id="prompt"' in page.text


def test_negators_reach_three_words_within_a_clause() -> None:
    lexicon = load_lexicon()
    hit = find(["scary"], clauses("not too very scary"), lexicon.negators)[0]
    assert hit.negated_by == 0
    far = find(["scary"], clauses("not one bit too very scary"), lexicon.negators)[0]
    assert far.negated_by is None
    across = find(["scary"], clauses("nothing sad, but scary"), lexicon.negators)[0]
    assert across.negated_by is None, "a new clause ends the negation"
    assert np.array_equal(
        [h.start for h in find(["sci-fi"], clauses("Sci-Fi? sci-fi!"), frozenset())], [0, 0]
    )


def test_lexicon_vectors_are_computed_once_per_bundle(served: tuple[FastAPI, httpx.Client]) -> None:
    app, client = served
    ask(client, text="something funny")
    bundle = app.state.holder.get()
    space = intent._spaces[bundle]
    ask(client, text="something sad")
    assert intent.intent_space(bundle) is space, "the same vectors serve every request"
    assert space.anchor_vectors.shape[0] == sum(len(m.anchors) for m in load_lexicon().moods.values())
    assert space.genres == bundle.category_names
