"""The cascade, sessions, feed, event log and browse endpoints through a real uvicorn server.

The bundle holds real text vectors (all-MiniLM-L6-v2) of films in six genres, an item index
and a daily pool (C2), so retrieval, MMR, near-duplicate removal and the session's private
delta all work on real similarities.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.events import Event, EventLog, read_events
from serving.sessions import SessionStore
from storage.artifacts import ArtifactStore
from storage.settings import Settings
from tests.serving_fixtures import (
    CATALOGUE,
    DUPLICATE,
    Catalogue,
    build_catalogue,
    make_split,
    publish_with_pool,
    serve,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "s3cret-test-key"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("cascade"), serving={"admin_api_key": ADMIN_KEY})


@pytest.fixture(scope="module")
def client(catalogue: Catalogue) -> Iterator[httpx.Client]:
    with serve(catalogue.settings) as (_app, c):
        yield c


def genres(catalogue: Catalogue, items: list[dict]) -> list[str]:
    return [catalogue.genre_of[it["item_id"]] for it in items]


def history_of(catalogue: Catalogue, user: str) -> set[str]:
    u = catalogue.data.user_ids.tolist().index(user)
    return {str(catalogue.data.item_ids[i]) for i in catalogue.data.histories(("train", "valid", "test"))[u]}


# The cascade -----------------------------------------------------------------------------
def test_recommend_runs_the_whole_cascade(catalogue: Catalogue, client: httpx.Client) -> None:
    response = client.get("/recommend/u0", params={"k": 6})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "personalized" and body["reason"] is None
    assert body["cascade"]["pipeline"] == [
        "retrieval:text",
        "ranker:model:itemknn",
        "mmr",
        "dedup",
        "exploration",
    ]
    items = body["items"]
    ids = [it["item_id"] for it in items]
    assert len(ids) == 6 == len(set(ids))
    assert not set(ids) & history_of(catalogue, "u0"), "seen items must be excluded"
    assert items[-1]["stage"] == "exploration"
    assert {it["stage"] for it in items[:-1]} <= {"ranker", "mmr"}
    assert all(np.isfinite(it["score"]) for it in items)
    assert not {"ani-0", DUPLICATE[0]} <= set(ids), "a near-duplicate pair was listed together"


def test_mmr_lambda_trades_relevance_for_diversity(catalogue: Catalogue, client: httpx.Client) -> None:
    def listed(lam: float) -> list[dict]:
        body = client.get("/recommend/u3", params={"k": 6, "mmr_lambda": lam, "explore": False}).json()
        return body["items"]

    relevant, diverse = listed(1.0), listed(0.0)
    assert [it["stage"] for it in relevant] == ["ranker"] * 6
    scores = [it["score"] for it in relevant]
    assert scores == sorted(scores, reverse=True), "λ = 1 is the ranker's order"
    assert len(set(genres(catalogue, diverse))) > len(set(genres(catalogue, relevant)))
    assert "mmr" in {it["stage"] for it in diverse}


def test_short_history_gets_the_fresh_popular_fallback(catalogue: Catalogue, client: httpx.Client) -> None:
    body = client.get("/recommend/lonely", params={"k": 5}).json()
    assert body["strategy"] == "fresh_popular_fallback"
    assert "1 interaction(s), fewer than the 3" in body["reason"]
    ids = [it["item_id"] for it in body["items"]]
    assert set(ids) <= set(catalogue.pool_ids)
    assert "wes-0" not in ids  # its one interaction is still excluded
    assert {it["stage"] for it in body["items"]} <= {"fresh_popular", "mmr", "exploration"}
    stranger = client.get("/recommend/stranger", params={"k": 5}).json()
    assert stranger["strategy"] == "fresh_popular_fallback" and "stranger" in stranger["reason"]


def test_adhoc_history_by_ids_and_by_free_titles(catalogue: Catalogue, client: httpx.Client) -> None:
    by_ids = client.post("/recommend", json={"item_ids": ["cri-0", "cri-1", "cri-2", "cri-3"], "k": 4})
    assert by_ids.status_code == 200, by_ids.text
    body = by_ids.json()
    assert body["strategy"] == "personalized"
    assert not {it["item_id"] for it in body["items"]} & {"cri-0", "cri-1", "cri-2", "cri-3"}
    assert genres(catalogue, body["items"][:2]) == ["Crime", "Crime"]

    by_titles = client.post(
        "/recommend", json={"titles": ["star wars", "the empire strikes back", "return of the jedi"], "k": 3}
    ).json()
    assert [r["item_id"] for r in by_titles["resolved"]] == ["sci-0", "sci-1", "sci-2"]
    assert all(r["similarity"] > 0.5 for r in by_titles["resolved"])
    assert by_titles["strategy"] == "personalized"
    assert genres(catalogue, by_titles["items"][:1]) == ["Sci-Fi"]


def test_ordinary_requests_run_on_the_loop_and_deep_ones_in_the_thread_pool(
    catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cheap bundle's ordinary cascade runs inline; a history far beyond what the warm-up
    measured goes to the thread pool, so it cannot stall every other connection. (The bar
    for "cheap" is raised so a busy machine's slow warm-up cannot decide the route.)"""
    import serving.routers.shared as app_module

    serving = catalogue.settings.serving.model_copy(update={"inline_below_ms": 1e6})
    settings = catalogue.settings.model_copy(update={"serving": serving})

    offloaded: list[str] = []
    real = app_module.run_in_threadpool

    async def spy(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        offloaded.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(app_module, "run_in_threadpool", spy)
    with serve(settings) as (_app, client):
        assert client.get("/recommend/u0", params={"k": 6}).status_code == 200
        assert client.post("/recommend", json={"item_ids": ["cri-0", "cri-1", "cri-2"]}).status_code == 200
        assert "recommend_for" not in offloaded
        long_history = ["cri-0", "cri-1", "cri-2", "sci-0"] * 40  # 160 > INLINE_MIN_HISTORY
        assert len(long_history) > app_module.INLINE_MIN_HISTORY
        assert client.post("/recommend", json={"item_ids": long_history, "k": 5}).status_code == 200
        assert offloaded.count("recommend_for") == 1


def test_warm_up_charges_a_bundle_its_cascades_cpu_not_the_time_it_waited(catalogue: Catalogue) -> None:
    """The event-loop-or-thread-pool decision rests on what the cascade costs. Time a request
    spends off the CPU (here a rank stage that sleeps 20 ms, as a request preempted on a busy
    host waits) is not the cascade's cost: the wall clock charged it, and a 5M-item bundle
    whose cascade costs ~0.7 ms of CPU was sent to the thread pool from one load to the next."""
    import dataclasses
    import time

    from serving.bundle import load_bundle, warm_up

    store = ArtifactStore(catalogue.settings.bundles_dir)
    bundle = load_bundle(store, str(store.current_version()))
    stage = bundle.rank_stage
    calls: list[int] = []

    class Waiting:
        def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
            calls.append(len(candidates))
            time.sleep(0.02)
            return stage.score(history, candidates)

    waiting = dataclasses.replace(bundle, ranker=Waiting())
    cascade_ms, longest = warm_up(waiting)
    assert calls, "the warm-up never reached the rank stage"
    assert 0.0 < cascade_ms < 20.0, cascade_ms
    assert longest > 0


def test_items_with_the_same_categories_share_one_list(catalogue: Catalogue) -> None:
    """Per-item categories are read as the catalog holds them, one list object per distinct
    list (a list per row cost 0.6 GB per worker at 5,000,000 items)."""
    import duckdb

    from serving.bundle import load_bundle

    store = ArtifactStore(catalogue.settings.bundles_dir)
    version = str(store.current_version())
    bundle = load_bundle(store, version)
    with duckdb.connect(str(store.root / version / "catalog.duckdb"), read_only=True) as con:
        stored = [r[0] for r in con.execute("SELECT categories FROM items ORDER BY item_idx").fetchall()]
    assert bundle.categories == [list(c) if c is not None else [] for c in stored]
    distinct = {tuple(c) for c in bundle.categories}
    assert len({id(c) for c in bundle.categories}) == len(distinct) < len(bundle.categories)


def test_lean_bodies_are_exactly_what_their_response_models_document(client: httpx.Client) -> None:
    """/recommend skips FastAPI's response-model pass for speed: its bodies must still be
    exactly what the OpenAPI schema says (every field present, nothing extra, right types)."""
    from serving.app import Recommendation
    from serving.schemas import AdHocRecommendation

    session = client.post("/interact", json={"item_id": "sci-0", "event": "like"}).json()["session"]
    for path, params in [
        ("/recommend/u0", {"k": 6}),
        ("/recommend/u0", {"k": 3, "session": session, "explore": False}),
        ("/recommend/lonely", {"k": 5}),
    ]:
        response = client.get(path, params=params)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert Recommendation.model_validate(body).model_dump(mode="json") == body, path
    for payload in [{"item_ids": ["cri-0", "cri-1", "cri-2"], "k": 4}, {"titles": ["star wars"], "k": 2}]:
        body = client.post("/recommend", json=payload).json()
        assert AdHocRecommendation.model_validate(body).model_dump(mode="json") == body, payload


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"item_ids": ["no-such-film"]}, 422, "no-such-film"),
        ({"item_ids": "sci-0"}, 422, "list"),
        ({"k": 0}, 422, "greater than or equal"),
        ({"k": 51}, 422, "at most 50"),
        ({"titles": ["   "]}, 422, "non-blank"),
        ({"colour": "blue"}, 422, "Extra inputs"),
        ({"item_ids": ["x" * 10] * 7000}, 413, "too large"),
    ],
)
def test_bad_adhoc_bodies_are_4xx_with_a_message(
    client: httpx.Client, body: dict, status: int, needle: str
) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_malformed_and_chunked_oversized_bodies(client: httpx.Client) -> None:
    response = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.text

    def chunks() -> Iterator[bytes]:
        yield b'{"item_ids": ['
        for _ in range(20_000):
            yield b'"sci-0",'
        yield b'"sci-0"]}'

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit is 65536" in response.text


# Feed, interactions and sessions ----------------------------------------------------------
def test_feed_learns_within_the_session(catalogue: Catalogue, client: httpx.Client) -> None:
    with httpx.Client(base_url=str(client.base_url), timeout=30) as reader:
        first = reader.get("/feed", params={"k": 8})
        assert first.status_code == 200, first.text
        session = first.cookies["recflow_session"]
        body = first.json()
        assert body["session"] == session and body["session_events"] == 0
        assert body["strategy"] == "fresh_popular_fallback" and body["pool_date"] == "2026-11-23"
        ids = [it["item_id"] for it in body["items"]]
        assert set(ids) <= set(catalogue.pool_ids)
        assert len(set(genres(catalogue, body["items"]))) >= 4, "a new session gets a diverse pool"
        assert all(it["topic"] for it in body["items"])

        for item in ("hor-0", "hor-2", "hor-4"):
            answer = reader.post("/interact", json={"item_id": item, "event": "like"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["session"] == session and answer.json()["applied"] is True
        reader.post("/interact", json={"item_id": ids[0], "event": "skip"})

        after = reader.get("/feed", params={"k": 8}).json()
        assert after["strategy"] == "personalized" and after["session_events"] == 4
        after_ids = [it["item_id"] for it in after["items"]]
        assert not {"hor-0", "hor-2", "hor-4", ids[0]} & set(after_ids), "touched items come back"
        assert after_ids != ids

    # Another reader's feed did not move (but for its exploration slot, seeded per session).
    with httpx.Client(base_url=str(client.base_url), timeout=30) as other:
        assert [it["item_id"] for it in other.get("/feed", params={"k": 8}).json()["items"]][:-1] == ids[:-1]


def test_session_delta_moves_a_known_users_list(catalogue: Catalogue, client: httpx.Client) -> None:
    session = "delta-test-session"
    before = client.get("/recommend/u0", params={"k": 5, "session": session, "explore": False}).json()
    for item in ("wes-1", "wes-3", "wes-5"):
        client.post("/interact", json={"item_id": item, "event": "like", "session": session, "user_id": "u0"})
    after = client.get("/recommend/u0", params={"k": 5, "session": session, "explore": False}).json()
    plain = client.get("/recommend/u0", params={"k": 5, "explore": False}).json()
    assert [it["item_id"] for it in plain["items"]] == [it["item_id"] for it in before["items"]]
    assert genres(catalogue, after["items"]).count("Western") > genres(catalogue, before["items"]).count(
        "Western"
    )
    assert not {"wes-1", "wes-3", "wes-5"} & {it["item_id"] for it in after["items"]}


def test_interact_writes_the_c1_event_log(catalogue: Catalogue, client: httpx.Client) -> None:
    answer = client.post(
        "/interact", json={"item_id": "ani-3", "event": "dwell", "dwell_s": 12.5, "session": "log-check"}
    ).json()
    events = {e.event_id: e for e in read_events(catalogue.settings.events_dir)}
    event = events[answer["event_id"]]
    assert (event.session, event.item_id, event.event, event.dwell_s, event.user_id) == (
        "log-check",
        "ani-3",
        "dwell",
        12.5,
        None,
    )
    line = next(
        json.loads(raw)
        for path in catalogue.settings.events_dir.glob("*.jsonl")
        for raw in path.read_text().splitlines()
        if answer["event_id"] in raw
    )
    assert set(line) == {"event_id", "ts", "session", "user_id", "item_id", "event", "dwell_s", "client"}
    assert line["client"] is None  # anonymous: no serving.client_keys


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"item_id": "nope", "event": "like"}, "nope"),
        ({"item_id": "sci-0", "event": "love"}, "event"),
        ({"item_id": "sci-0", "event": "like", "user_id": "ghost"}, "ghost"),
        ({"item_id": "sci-0", "event": "dwell", "dwell_s": -1}, "dwell_s"),
        ({"item_id": "sci-0", "event": "like", "session": "bad session!"}, "session"),
        ({"event": "like"}, "item_id"),
    ],
)
def test_bad_interactions_are_422_and_not_logged(
    catalogue: Catalogue, client: httpx.Client, body: dict, needle: str
) -> None:
    before = len(read_events(catalogue.settings.events_dir))
    response = client.post("/interact", json=body)
    assert response.status_code == 422, response.text
    assert needle in response.text
    assert len(read_events(catalogue.settings.events_dir)) == before


def test_unknown_ids_and_out_of_range_k(client: httpx.Client) -> None:
    assert client.get("/items/nope/similar").status_code == 404
    assert client.get("/feed", params={"user_id": "ghost"}).status_code == 404
    assert client.get("/search", params={"q": "x", "user_id": "ghost"}).status_code == 404
    for path, extra in (
        ("/recommend/u0", {}),
        ("/feed", {}),
        ("/items/sci-0/similar", {}),
        ("/search", {"q": "dune"}),
    ):
        for k in ("0", "51", "x"):
            response = client.get(path, params={"k": k, **extra})
            assert response.status_code == 422, (path, k, response.text)
            assert response.json()["detail"][0]["loc"] == ["query", "k"]
    assert client.get("/recommend/u0", params={"mmr_lambda": 1.5}).status_code == 422
    assert client.get("/users", params={"limit": 0}).status_code == 422


# Search, browse, metrics, the page ---------------------------------------------------------
def test_search_is_steered_toward_matching_categories_and_taste(
    catalogue: Catalogue, client: httpx.Client
) -> None:
    body = client.get("/search", params={"q": "outlaws and a sheriff", "k": 4}).json()
    assert body["categories"][0]["name"] == "Western"
    assert genres(catalogue, body["items"]).count("Western") >= 3
    plain = client.get("/search", params={"q": "outlaws and a sheriff", "k": 4, "category_weight": 0}).json()
    assert plain["categories"] == []
    steered = [it["score"] for it in body["items"]]
    assert steered == sorted(steered, reverse=True)
    # Blending in a crime lover's taste moves crime films up.
    crime_fan = next(u for u in catalogue.data.user_ids if u != "lonely" and int(u[1:]) % 6 == 3)
    tasted = client.get(
        "/search", params={"q": "a film", "k": 6, "user_id": crime_fan, "taste_weight": 0.8}
    ).json()
    untasted = client.get("/search", params={"q": "a film", "k": 6}).json()
    assert tasted["taste_weight"] == 0.8
    assert genres(catalogue, tasted["items"]).count("Crime") > genres(catalogue, untasted["items"]).count(
        "Crime"
    )


def test_categories_users_metrics_page_and_docs(catalogue: Catalogue, client: httpx.Client) -> None:
    cats = client.get("/categories").json()["categories"]
    assert cats[0] == {"name": "Animation", "items": 7}
    assert {c["name"] for c in cats} == {"Sci-Fi", "Animation", "Romance", "Crime", "Horror", "Western"}

    first = client.get("/users", params={"limit": 5}).json()
    second = client.get("/users", params={"limit": 5, "offset": 5}).json()
    assert first["total"] == 13
    everyone = [u["user_id"] for u in first["users"] + second["users"]]
    assert everyone == sorted(everyone) and len(set(everyone)) == 10
    assert client.get("/users", params={"offset": 100}).json()["users"] == []

    client.get("/recommend/u1")
    text = client.get("/metrics").text
    assert 'recflow_http_requests_total{endpoint="/recommend/{user_id}",method="GET",status="200"}' in text
    assert 'recflow_http_request_duration_seconds_bucket{endpoint="/recommend/{user_id}"' in text
    version = client.get("/health").json()["bundle_version"]
    assert f'recflow_bundle_info{{model="itemknn",version="{version}"}} 1.0' in text

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/interact" in page.text and "/feed" in page.text
    assert client.get("/docs").status_code == 200
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/recommend", "/feed", "/interact", "/categories", "/users", "/metrics", "/search"} <= paths


def test_admin_reload_needs_the_key(client: httpx.Client) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
    response = client.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 200 and response.json()["changed"] is False


# Durability: restarts, several workers, torn writes -----------------------------------------
def test_session_state_survives_a_restart(tmp_path: Path) -> None:
    catalogue = build_catalogue(tmp_path)
    session = "survivor"
    with serve(catalogue.settings) as (_app, c):
        for item in ("rom-0", "rom-1", "rom-2"):
            assert (
                c.post("/interact", json={"item_id": item, "event": "like", "session": session}).status_code
                == 200
            )
        before = c.get("/recommend/nobody", params={"session": session, "k": 5}).json()
    assert before["strategy"] == "personalized"
    with serve(catalogue.settings) as (_app, c):
        after = c.get("/recommend/nobody", params={"session": session, "k": 5}).json()
        fresh = c.get("/recommend/nobody", params={"session": "someone-else", "k": 5}).json()
    assert after["items"] == before["items"]
    assert fresh["strategy"] == "fresh_popular_fallback"


def test_update_mode_none_logs_but_does_not_learn(tmp_path: Path) -> None:
    catalogue = build_catalogue(tmp_path, serving={"update_mode": "none"})
    with serve(catalogue.settings) as (_app, c):
        before = c.get("/recommend/u0", params={"session": "s", "k": 5}).json()
        answer = c.post("/interact", json={"item_id": "wes-1", "event": "like", "session": "s"}).json()
        assert answer["applied"] is False and answer["update_mode"] == "none"
        after = c.get("/recommend/u0", params={"session": "s", "k": 5}).json()
    assert after["items"] == before["items"]
    assert [e.item_id for e in read_events(catalogue.settings.events_dir)] == ["wes-1"]


@pytest.mark.slow  # two uvicorn worker processes under load
def test_no_event_is_lost_with_two_workers(tmp_path: Path) -> None:
    """uvicorn --workers 2 on one port; 200 concurrent interactions; every accepted one is in
    the log exactly once, and a session's state is shared by both workers."""
    catalogue = build_catalogue(tmp_path)
    with socket_port() as port:
        env = {
            **os.environ,
            "RECFLOW_HOME": str(tmp_path),
            "RECFLOW_CATALOGUE": CATALOGUE,
            "PYTHONPATH": str(REPO),
        }
        env.pop("RECFLOW_CONFIG", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--workers", "2",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, timeout=240, what="2 workers")
            items = [str(i) for i in catalogue.data.item_ids]

            def send(n: int) -> str:
                with httpx.Client(base_url=url, timeout=30) as c:  # new connections: both workers
                    body = {"item_id": items[n % len(items)], "event": "click", "session": f"s{n % 5}"}
                    response = c.post("/interact", json=body)
                    assert response.status_code == 200, response.text
                    return str(response.json()["event_id"])

            with ThreadPoolExecutor(16) as pool:
                accepted = list(pool.map(send, range(200)))
            with httpx.Client(base_url=url, timeout=30) as c:
                counts = {
                    c.get("/feed", cookies={"recflow_session": "s1"}).json()["session_events"]
                    for _ in range(8)
                }
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=60)  # as test_serving_hardening's: busy cores
    logged = [e.event_id for e in read_events(catalogue.settings.events_dir)]
    assert sorted(logged) == sorted(accepted)
    assert counts == {40}, "every worker sees the session's 40 events"
    assert b"Traceback" not in err


class socket_port:
    """A free TCP port on 127.0.0.1 (closed again before the server binds it)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_event_log_appends_from_threads_and_skips_a_torn_tail(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    events = [Event.new(session=f"s{i % 3}", item_id=str(i), event="click") for i in range(300)]
    threads = [
        threading.Thread(target=lambda chunk=events[i::6]: [log.append(e) for e in chunk]) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(e.event_id for e in read_events(tmp_path)) == sorted(e.event_id for e in events)
    day_file = next(tmp_path.glob("*.jsonl"))
    with day_file.open("ab") as fh:  # a crash cut the last write short
        fh.write(b'{"event_id": "torn", "ts": 1')
    later = Event.new(session="s", item_id="x", event="like", ts=events[0].ts)
    written_to = EventLog(tmp_path).append(later)
    assert written_to != day_file and written_to.name.endswith(".1.jsonl")
    ids = [e.event_id for e in read_events(tmp_path)]
    assert "torn" not in ids and later.event_id in ids and len(ids) == 301


def test_session_store_is_shared_between_handles(tmp_path: Path) -> None:
    a, b = SessionStore(tmp_path / "s.sqlite"), SessionStore(tmp_path / "s.sqlite")
    a.record(Event.new(session="x", item_id="1", event="like"))
    assert b.state("x").positives == ["1"]
    b.record(Event.new(session="x", item_id="2", event="skip"))
    state = a.state("x")
    assert state.positives == ["1"] and state.touched == {"1", "2"}
    assert [w for _, w in state.weights] == [1.0, -0.5]
    a.close()
    b.close()


# Hot reload under traffic, with the admin key ----------------------------------------------
def test_reload_under_concurrent_traffic_fails_nothing(tmp_path: Path) -> None:
    catalogue = build_catalogue(
        tmp_path, serving={"admin_api_key": ADMIN_KEY, "reload_check_s": 3600.0}
    )  # no polling: only /admin/reload swaps
    store = ArtifactStore(catalogue.settings.bundles_dir)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer(url: str, n: int) -> None:
        paths = ["/recommend/u1", "/feed", "/search?q=space", "/items/sci-0/similar", "/recommend/lonely"]
        with httpx.Client(base_url=url, timeout=30) as own:
            i = n
            while not stop.is_set():
                statuses.append(own.get(paths[i % len(paths)]).status_code)
                statuses.append(
                    own.post(
                        "/interact", json={"item_id": "sci-1", "event": "click", "session": f"h{n}"}
                    ).status_code
                )
                i += 1

    with serve(catalogue.settings) as (_app, c):
        v1 = c.get("/health").json()["bundle_version"]
        url = str(c.base_url)
        threads = [threading.Thread(target=hammer, args=(url, i)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(statuses) > 40, what="traffic")
            from storage.warehouse import connect

            con = connect(catalogue.settings.warehouse_path)
            v2 = publish_with_pool(store, con, make_split(seed=3), catalogue.vectors, None)
            con.close()
            swapped = c.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY}).json()
            assert swapped == {"bundle_version": v2, "previous_version": v1, "changed": True, "refused": {}}
            seen = len(statuses)
            wait_for(lambda: len(statuses) > seen + 40, what="traffic after the swap")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert set(statuses) == {200}, f"non-200 answers: {sorted(set(statuses))}"
        assert c.get("/feed").json()["pool_date"] is None  # v2 has no pool: the fallback serves


@pytest.mark.parametrize("dense_below", [0, 50_000], ids=["slot-table", "dense-row"])
@pytest.mark.parametrize("name", ["itemknn", "itemknn-recency"])
def test_neighbourhood_ranker_agrees_with_the_models_own_scores(name: str, dense_below: int) -> None:
    from models.registry import build_model
    from serving.cascade import ModelRanker, NeighbourhoodRanker
    from tasks.training import fit_for_serving

    params = {"neighbors": 20, **({"decay": 0.6} if name == "itemknn-recency" else {})}
    model = fit_for_serving(make_split(), name, params)
    assert type(model) is type(build_model(name, **params))
    fast, full = NeighbourhoodRanker(model, dense_below=dense_below), ModelRanker(model)
    assert fast.dense == (dense_below > 37)
    rng = np.random.default_rng(0)
    for _ in range(20):
        history = rng.integers(0, 37, rng.integers(1, 30))  # repeats included, lengths growing
        candidates = rng.permutation(37)[: rng.integers(1, 37)]
        np.testing.assert_allclose(
            fast.score(history, candidates), full.score(history, candidates), rtol=1e-5, atol=1e-6
        )
        assert (fast._slots() == -1).all()  # the table is clean for the next call
    # another thread gets its own table and the same answer
    box: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: box.append(fast.score(history, candidates)))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(box[0], fast.score(history, candidates))


def test_settings_reject_a_bad_update_mode() -> None:
    with pytest.raises(ValueError, match="update_mode"):
        Settings(serving={"update_mode": "public"})


def reference_mmr(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lam: float,
    threshold: float,
    explore: bool,
    seed: int,
    by_relevance: bool = False,
) -> tuple[list[int], list[str], int]:
    """MMR as the definition reads, one pair at a time: the spec the vectorised code must match.
    The exploration slot is the seed's novel candidate, or (``by_relevance``) the most relevant.

    Returns picked positions (into ``relevance``), their stages and the duplicates dropped.
    """
    rel01 = (relevance - relevance.min()) / (relevance.max() - relevance.min())
    sim = (vectors @ vectors.T).tolist()
    size = len(relevance)
    explore = explore and k >= 3 and size > k
    slots = k - 1 if explore else k
    max_sim, blocked, picks, duplicates = [-1.0] * size, [False] * size, [], 0
    for _ in range(slots):
        best, j = -np.inf, -1
        for i in range(size):
            if not blocked[i]:
                value = lam * rel01[i] - (1.0 - lam) * max(max_sim[i], 0.0) if picks else rel01[i]
                if value > best:
                    best, j = value, i
        if j < 0:
            break
        picks.append(j)
        blocked[j] = True
        for i in range(size):
            if sim[j][i] > threshold and not blocked[i]:
                blocked[i] = True
                duplicates += 1
            max_sim[i] = max(max_sim[i], sim[j][i])
    stages = ["ranker" if j < slots else "mmr" for j in picks]
    rest = [i for i in range(size) if not blocked[i]]
    if explore and rest:
        mean = sum(max_sim[i] for i in rest) / len(rest)
        novel = [i for i in rest if max_sim[i] <= mean]
        picks.append(max(novel, key=lambda i: relevance[i]) if by_relevance else novel[seed % len(novel)])
        stages.append("exploration")
    return picks, stages, duplicates


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_vectorised_mmr_matches_the_pairwise_definition(lam: float) -> None:
    from serving.cascade import (
        MMR_DEPTH_PER_SLOT,
        MMR_MIN_DEPTH,
        CascadeParams,
        CascadeResult,
        diversify,
        unit_rows,
    )

    rng = np.random.default_rng(int(lam * 10))
    for trial in range(30):
        n = int(rng.integers(5, 60))
        base = rng.standard_normal((n, 16)).astype(np.float32)
        base[: n // 4] = base[0] + 0.05 * rng.standard_normal((n // 4, 16))  # a clump of near-copies
        vectors = unit_rows(base)
        relevance = rng.random(n)
        relevance[rng.integers(0, n, 3)] = relevance[0]  # ties
        k = int(rng.integers(1, 15))
        params = CascadeParams(
            k=k, candidates=n, mmr_lambda=lam, retrieval_weight=0.0,
            duplicate_threshold=0.97, explore=bool(trial % 2), seed=trial,
        )  # fmt: skip
        result = CascadeResult("personalized")
        # diversify sorts and keeps the head; the reference takes that head as given
        order = np.argsort(-relevance, kind="stable")[: max(MMR_DEPTH_PER_SLOT * k, MMR_MIN_DEPTH)]
        by_relevance = trial % 4 == 1  # a learned rank stage orders the exploration slot
        diversify(
            np.arange(n),
            relevance,
            vectors,
            params,
            result,
            base_stage="ranker",
            explore_by_relevance=by_relevance,
        )
        picks, stages, duplicates = reference_mmr(
            relevance[order], vectors[order], min(k, n), lam, 0.97, params.explore, trial, by_relevance
        )
        assert result.indices == [int(order[j]) for j in picks]
        assert result.stages == stages
        assert result.duplicates_removed == duplicates


def test_unit_rows_shares_rows_that_are_unit_already_and_scales_the_others() -> None:
    from serving.cascade import unit_rows

    rng = np.random.default_rng(3)
    raw = rng.standard_normal((100, 8))
    scaled = unit_rows(raw)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), 1.0, atol=1e-6)
    assert unit_rows(scaled) is scaled  # no second 128 MB copy of a 500k catalogue
    zero = unit_rows(np.zeros((2, 8)))
    assert np.isfinite(zero).all() and not zero.any()


def test_metrics_count_each_request_once_per_label_set() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from serving.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    for status, seconds in [("200", 0.001), ("200", 0.003), ("404", 0.0004)]:
        metrics.observe("/recommend/{user_id}", "GET", status, seconds)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    ok = (("endpoint", "/recommend/{user_id}"), ("method", "GET"), ("status", "200"))
    missing = (("endpoint", "/recommend/{user_id}"), ("method", "GET"), ("status", "404"))
    assert samples[("recflow_http_requests_total", ok)] == 2
    assert samples[("recflow_http_requests_total", missing)] == 1
    timing = (("endpoint", "/recommend/{user_id}"), ("method", "GET"))
    assert samples[("recflow_http_request_duration_seconds_count", timing)] == 3
    assert samples[("recflow_http_request_duration_seconds_sum", timing)] == pytest.approx(0.0044)


@pytest.mark.parametrize("enabled", [False, True])
def test_fastapi_opentelemetry_follows_the_setting(tmp_path: Path, enabled: bool) -> None:
    from serving.app import create_app

    app = create_app(Settings(home=tmp_path, serving={"opentelemetry": enabled}))
    flags = app._telemetry  # FastAPI's own record of the configuration it was given
    assert (flags["tracing"], flags["metrics"], flags["logs"]) == (enabled, enabled, enabled)


def test_big_files_are_memory_mapped_and_serve_the_same(
    catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ``MAP_ABOVE_BYTES`` the vectors and the index are mapped from the bundle's files
    (shared by the worker processes), and the lists are exactly the ones read into memory give."""
    import serving.bundle as bundle_module

    store = ArtifactStore(catalogue.settings.bundles_dir)
    version = str(store.current_version())
    read = bundle_module.load_bundle(store, version)
    monkeypatch.setattr(bundle_module, "MAP_ABOVE_BYTES", 0)
    mapped = bundle_module.load_bundle(store, version)
    assert read.vectors is not None and mapped.vectors is not None

    def is_mapped(array: np.ndarray) -> bool:
        while array is not None:
            if isinstance(array, np.memmap):
                return True
            array = array.base  # type: ignore[assignment]
        return False

    assert not is_mapped(read.vectors) and is_mapped(mapped.vectors)
    np.testing.assert_array_equal(read.vectors, mapped.vectors)
    for user in catalogue.data.user_ids[:10]:
        got, want = mapped.recommend(str(user), 6), read.recommend(str(user), 6)
        assert got.indices.tolist() == want.indices.tolist() and got.strategy == want.strategy
