"""Category filters (issue 18, item 3) on ``/recommend``, ``/feed`` and ``/search``, over a real
uvicorn server: ``categories=A,B&mode=strict`` keeps only those categories, ``mode=soft`` lifts
them by ``category_boost``; bad modes, boosts and names are 422s that say what was wrong.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.serving_fixtures import Catalogue, build_catalogue, serve

pytestmark = pytest.mark.slow  # builds a catalogue with real text vectors


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("filters"))


@pytest.fixture(scope="module")
def client(catalogue: Catalogue) -> Iterator[httpx.Client]:
    with serve(catalogue.settings) as (_app, c):
        yield c


def genres(catalogue: Catalogue, body: dict) -> list[str]:
    return [catalogue.genre_of[it["item_id"]] for it in body["items"]]


def test_strict_keeps_only_the_named_categories(catalogue: Catalogue, client: httpx.Client) -> None:
    plain = client.get("/recommend/u0", params={"k": 5}).json()
    assert "Western" not in genres(catalogue, plain)[:2], "u0 likes Sci-Fi: Westerns are not its top"
    body = client.get("/recommend/u0", params={"k": 5, "categories": "western,Horror"}).json()
    assert set(genres(catalogue, body)) <= {"Western", "Horror"} and len(body["items"]) == 5
    assert body["filter"] == {
        "categories": ["Western", "Horror"],
        "mode": "strict",
        "category_boost": None,
        "matching_items": 12,
    }
    seen = set(client.get("/users/u0/history").json()["items"][i]["item_id"] for i in range(6))
    assert not seen & {it["item_id"] for it in body["items"]}, "seen items stay excluded"
    # A cold reader's fallback and the pool are filtered too.
    feed = httpx.get(f"{client.base_url}/feed", params={"k": 10, "categories": "Crime"}).json()
    assert feed["items"] and set(genres(catalogue, feed)) == {"Crime"}
    pool_crime = [i for i in catalogue.pool_ids if catalogue.genre_of[i] == "Crime"]
    assert {it["item_id"] for it in feed["items"]} == set(pool_crime)
    post = client.post(
        "/recommend", json={"item_ids": ["sci-0", "sci-1", "sci-2"], "categories": ["Romance"]}
    )
    assert post.status_code == 200 and set(genres(catalogue, post.json())) == {"Romance"}


def test_soft_lifts_matching_items_by_the_weight(catalogue: Catalogue, client: httpx.Client) -> None:
    params = {"k": 8, "categories": "Western", "mode": "soft", "explore": "false"}
    plain = client.get("/recommend/u0", params={"k": 8, "explore": "false"}).json()
    none = client.get("/recommend/u0", params={**params, "category_boost": 0}).json()
    assert [i["item_id"] for i in none["items"]] == [i["item_id"] for i in plain["items"]]
    full = client.get("/recommend/u0", params={**params, "category_boost": 1}).json()
    g = genres(catalogue, full)
    assert g[:6] == ["Western"] * 6 and "Western" not in g[6:], "boost 1: every Western first"
    assert full["filter"]["category_boost"] == 1.0 and "category_boost" in full["cascade"]["pipeline"]
    default = client.get("/recommend/u0", params=params).json()
    assert default["filter"]["category_boost"] == catalogue.settings.serving.category_boost
    half = genres(catalogue, default).count("Western")
    assert genres(catalogue, plain).count("Western") < half < 6, "boost 0.5 lifts some Westerns, not all"
    assert set(g) != {"Western"}
    post = client.post(
        "/recommend",
        json={
            "item_ids": ["sci-0", "sci-1", "sci-2"],
            "categories": ["Horror"],
            "mode": "soft",
            "category_boost": 1,
        },
    ).json()
    assert genres(catalogue, post)[0] == "Horror"


def test_search_filters(catalogue: Catalogue, client: httpx.Client) -> None:
    q = {"q": "a space battle between galaxies", "k": 5}
    plain = client.get("/search", params=q).json()
    assert genres(catalogue, plain)[0] == "Sci-Fi"
    strict = client.get("/search", params={**q, "categories": "Romance"}).json()
    assert set(genres(catalogue, strict)) == {"Romance"} and len(strict["items"]) == 5
    soft = client.get(
        "/search", params={**q, "categories": "Romance", "mode": "soft", "category_boost": 1}
    ).json()
    assert genres(catalogue, soft) == ["Romance"] * 5
    scores = [it["score"] for it in soft["items"]]
    assert scores == sorted(scores, reverse=True)
    light = client.get(
        "/search", params={**q, "categories": "Romance", "mode": "soft", "category_boost": 0}
    ).json()
    assert [i["item_id"] for i in light["items"]] == [i["item_id"] for i in plain["items"]]


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"categories": "Western", "mode": "loose"}, "mode", "strict"),
        ({"categories": "Western", "category_boost": 2}, "category_boost", "1"),
        ({"categories": "Western", "category_boost": "lots"}, "category_boost", "number"),
        ({"categories": "Western,,Crime"}, "categories", "non-blank"),
        ({"categories": "Musical,Western,Opera"}, "categories", "['Musical', 'Opera']"),
    ],
)
def test_bad_filters_are_422_naming_the_problem(
    client: httpx.Client, params: dict[str, object], field: str, says: str
) -> None:
    for path, extra in (("/recommend/u0", {}), ("/feed", {}), ("/search", {"q": "space"})):
        r = client.get(path, params={**params, **extra})
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["query", field] and says in detail["msg"], (path, detail)
    r = client.post("/recommend", json={"item_ids": ["sci-0"], "categories": ["Musical"]})
    assert r.status_code == 422 and "Musical" in r.json()["detail"][0]["msg"]
    assert r.json()["detail"][0]["loc"] == ["body", "categories"]
