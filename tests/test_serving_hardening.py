"""The service under hostile or careless use (issue 16): non-finite numbers in bodies,
sessions that grow without bound, client retries, open admin endpoints, anonymous clients.

Everything goes through a real uvicorn server on 127.0.0.1 (two worker processes for the
idempotency key); the session store's bounds are checked on its state, not on timings.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.app import create_app
from serving.dependencies import OpenAdminError
from serving.events import Event, read_events
from serving.sessions import SessionStore, event_weight
from storage.settings import Settings
from tasks.events import parse_event
from tests.serving_fixtures import CATALOGUE, Catalogue, build_catalogue, serve, wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("hardening"))


def fresh(catalogue: Catalogue, home: Path, **serving: Any) -> Settings:
    """Settings for a new home holding a copy of the catalogue's bundles (own log and sessions)."""
    shutil.copytree(catalogue.settings.bundles_dir, home / CATALOGUE / "bundles")
    return Settings(home=home, catalogue=CATALOGUE, serving={"reload_check_s": 0.1, "max_k": 50, **serving})


def items(catalogue: Catalogue) -> list[str]:
    return [str(i) for i in catalogue.data.item_ids]


# 5. NaN / Infinity in a JSON body ----------------------------------------------------------
def _strict(text: str) -> Any:
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _float_fields(spec: dict[str, Any]) -> dict[str, list[str]]:
    """POST path → the number fields of its JSON body, from the OpenAPI document."""
    found: dict[str, list[str]] = {}
    for path, operations in spec["paths"].items():
        post = operations.get("post", {})
        ref = post.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        if "$ref" not in ref:
            continue
        schema = spec["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
        for name, prop in schema["properties"].items():
            kinds = [prop.get("type")] + [option.get("type") for option in prop.get("anyOf", [])]
            if "number" in kinds:
                found.setdefault(path, []).append(name)
    return found


def test_non_finite_numbers_get_a_422_that_names_the_field(catalogue: Catalogue, tmp_path: Path) -> None:
    """Every number field of every POST body, sent as NaN, Infinity or -Infinity (which
    Python's JSON parser accepts), is refused with a 422 whose body is valid JSON."""
    item = items(catalogue)[0]
    bases = {"/interact": {"item_id": item, "event": "dwell"}, "/recommend": {"item_ids": [item]}}
    with serve(fresh(catalogue, tmp_path)) as (app, c):
        fields = _float_fields(app.openapi())
        assert fields == {"/interact": ["dwell_s"], "/recommend": ["mmr_lambda", "category_boost"]}
        cases = [(path, name) for path, names in fields.items() for name in names]
        cases += [("/interact", "item_id"), ("/recommend", "k")]  # echoed by other errors too
        for path, name in cases:
            for token in ("NaN", "Infinity", "-Infinity"):
                raw = json.dumps({k: v for k, v in bases[path].items() if k != name})[:-1]
                raw += f', "{name}": {token}}}'
                response = c.post(path, content=raw, headers={"Content-Type": "application/json"})
                assert response.status_code == 422, (path, name, token, response.text)
                errors = _strict(response.text)["detail"]
                assert any(e["loc"] == ["body", name] for e in errors), errors
                assert all(e["input"] == token for e in errors if e["loc"] == ["body", name])
                if name in fields.get(path, []):
                    assert any("finite number" in e["msg"] for e in errors), errors
        for token in ("nan", "inf", "-inf"):
            response = c.get("/recommend/u0", params={"mmr_lambda": token})
            assert response.status_code == 422 and _strict(response.text)["detail"][0]["loc"] == [
                "query",
                "mmr_lambda",
            ]
        assert c.get("/health").status_code == 200  # and the server is still there


# 10. Bounded sessions --------------------------------------------------------------------------
def _like(session: str, item: str, n: int, ts: float | None = None) -> Event:
    return Event.new(session=session, item_id=item, event="like" if n % 7 else "skip", ts=ts)


def test_a_long_session_folds_into_a_bounded_summary_that_keeps_its_taste(tmp_path: Path) -> None:
    """5,000 events into one session: the state a request works on stays bounded, the folded
    weights per item are exactly the unfolded ones, and a reopened store has the same state."""
    store = SessionStore(tmp_path / "s.sqlite", max_events=50)
    catalogue = [f"i{j}" for j in range(40)]  # fewer items than the summary holds: folding is exact
    expected: dict[str, float] = {}
    for n in range(5_000):
        event = _like("long", catalogue[n % len(catalogue)], n)
        expected[event.item_id] = expected.get(event.item_id, 0.0) + event_weight(event.event, None)
        state = store.record(event)
        assert len(state.weights) <= 100 and len(state.positives) <= 100
    assert len(state) == 5_000
    got: dict[str, float] = {}
    for item, weight in state.weights:
        got[item] = got.get(item, 0.0) + weight
    assert got.keys() == expected.keys()
    assert all(math.isclose(got[i], expected[i]) for i in expected)
    before = (state.summary, state.events, len(state))
    store.close()
    reopened = SessionStore(tmp_path / "s.sqlite", max_events=50)
    again = reopened.state("long")
    assert (again.summary, again.events, len(again)) == before
    reopened.close()


def test_the_summary_keeps_the_strongest_items(tmp_path: Path) -> None:
    """More distinct items than the cap: the summary keeps the most-liked ones."""
    store = SessionStore(tmp_path / "s.sqlite", max_events=10)
    for n in range(10):
        for _ in range(5):
            store.record(Event.new(session="s", item_id="fav", event="like"))
        store.record(Event.new(session="s", item_id=f"once{n}", event="click"))
    for n in range(30):
        state = store.record(Event.new(session="s", item_id=f"late{n}", event="click"))
    assert state.size <= 20
    assert state.summary["fav"][0] == pytest.approx(50.0)
    store.close()


def test_folded_sessions_answer_the_same_after_a_restart(catalogue: Catalogue, tmp_path: Path) -> None:
    settings = fresh(catalogue, tmp_path, session_max_events=8)
    ids = items(catalogue)
    with serve(settings) as (app, c):
        for n in range(40):
            body = {"item_id": ids[n % 12], "event": "like", "session": "reader"}
            assert c.post("/interact", json=body).status_code == 200
        state = app.state.sessions.state("reader")
        assert len(state) == 40 and state.size <= 16
        before = c.get("/recommend/nobody", params={"session": "reader", "k": 5}).json()
    assert before["strategy"] == "personalized"
    with serve(settings) as (app, c):
        after = c.get("/recommend/nobody", params={"session": "reader", "k": 5}).json()
        assert c.get("/feed", cookies={"recflow_session": "reader"}).json()["session_events"] == 40
    assert after["items"] == before["items"]


def test_cookie_less_visits_store_and_cache_nothing(catalogue: Catalogue, tmp_path: Path) -> None:
    """3,000 GETs without a cookie (or naming sessions nobody used) leave no session behind."""
    with serve(fresh(catalogue, tmp_path)) as (app, c):
        for n in range(3_000):
            response = c.get("/feed", params={"k": 3}) if n % 2 else c.get(f"/recommend/u0?session=x{n}&k=3")
            assert response.status_code == 200
            c.cookies.clear()
        sessions: SessionStore = app.state.sessions
        assert sessions.count() == 0
        assert sessions.cached == 0


def test_the_store_keeps_at_most_max_sessions(catalogue: Catalogue, tmp_path: Path) -> None:
    """Cookie-less interactions each start a session; the least recently active are evicted."""
    with serve(fresh(catalogue, tmp_path, session_max_sessions=50)) as (app, c):
        item = items(catalogue)[0]
        for _ in range(120):
            assert c.post("/interact", json={"item_id": item, "event": "click"}).status_code == 200
            c.cookies.clear()
        sessions: SessionStore = app.state.sessions
        assert sessions.count() <= 50
        assert sessions.cached <= 50


def test_a_forgotten_session_started_again_does_not_bring_back_its_past(tmp_path: Path) -> None:
    """Two stores on one file, as two workers: one evicts a session the other caches; a new
    session under the same name starts empty in both."""
    a = SessionStore(tmp_path / "s.sqlite", max_sessions=1)
    for n in range(3):
        a.record(_like("reused", f"old{n}", 1, ts=time.time() - 60))
    assert len(a.state("reused")) == 3
    b = SessionStore(tmp_path / "s.sqlite", max_sessions=1)
    b.record(_like("other", "x", 1))  # over the cap: the least recently active goes
    assert a.count() == 1  # "reused" is gone from the file (a still caches it)
    b.record(_like("reused", "new", 1))
    assert [item for item, _, _ in a.state("reused").events] == ["new"]
    a.close()
    b.close()


def test_sessions_and_keys_expire_after_the_retention_window(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.sqlite", ttl_hours=1.0)
    old = time.time() - 2 * 3600
    store.record(_like("stale", "a", 1, ts=old))
    store.record(_like("live", "b", 1))
    assert store.claim("key-0001")[0] == "new"
    store.settle("key-0001", {"event_id": "key-0001"})
    store.close()
    reopened = SessionStore(tmp_path / "s.sqlite", ttl_hours=1.0)  # eviction runs at open
    assert reopened.count() == 1
    assert len(reopened.state("stale")) == 0 and len(reopened.state("live")) == 1
    assert reopened.claim("key-0001")[0] == "done"  # claimed just now: inside the window
    reopened.close()
    time.sleep(0.05)
    gone = SessionStore(tmp_path / "s.sqlite", ttl_hours=1e-6)  # a 3.6 ms window: all expired
    assert gone.count() == 0 and gone.claim("key-0001")[0] == "new"
    gone.close()


# 11. Idempotency keys ----------------------------------------------------------------------------
def test_a_retry_with_the_same_event_id_is_a_no_op(catalogue: Catalogue, tmp_path: Path) -> None:
    settings = fresh(catalogue, tmp_path)
    item = items(catalogue)[0]
    body = {"item_id": item, "event": "like", "session": "retrier", "event_id": "retry-key-0001"}
    with serve(settings) as (_app, c):
        first = c.post("/interact", json=body)
        second = c.post("/interact", json=body)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json() and first.json()["event_id"] == "retry-key-0001"
        assert first.json()["session_events"] == 1
        assert c.get("/feed", cookies={"recflow_session": "retrier"}).json()["session_events"] == 1
        for bad in ("short", "x" * 65, "has space!", "dots.are.not.ok"):
            response = c.post("/interact", json={**body, "event_id": bad})
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "event_id"]
    with serve(settings) as (_app, c):  # after a restart, inside the retention window
        third = c.post("/interact", json={k: v for k, v in body.items() if k != "session"})
        assert third.status_code == 200 and third.json() == first.json()
        assert third.cookies.get("recflow_session") == "retrier"
        assert c.get("/feed", cookies={"recflow_session": "retrier"}).json()["session_events"] == 1
    assert [e.event_id for e in read_events(settings.events_dir)] == ["retry-key-0001"]


@pytest.mark.slow  # two uvicorn worker processes
def test_retries_are_no_ops_across_two_workers(catalogue: Catalogue, tmp_path: Path) -> None:
    """40 keys, each sent 4 times at once on new connections to two workers: every key is
    logged once and applied once, and every answer for a key is the same."""
    settings = fresh(catalogue, tmp_path)
    ids = items(catalogue)
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

            def send(n: int) -> dict[str, Any]:
                key = f"key-{n // 4:04d}-abcdef"
                body = {
                    "item_id": ids[n // 4 % len(ids)],
                    "event": "click",
                    "session": "shared",
                    "event_id": key,
                }
                with httpx.Client(base_url=url, timeout=30) as c:
                    for _ in range(200):
                        response = c.post("/interact", json=body)
                        if response.status_code != 409:  # the first is still in flight
                            break
                        time.sleep(0.05)
                    assert response.status_code == 200, response.text
                    return dict(response.json())

            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(send, range(160)))
            with httpx.Client(base_url=url, timeout=30) as c:
                counts = {
                    c.get("/feed", cookies={"recflow_session": "shared"}).json()["session_events"]
                    for _ in range(8)
                }
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                raise AssertionError(f"the workers did not stop: {err.decode()[-2000:]}") from None
    for key in range(40):
        assert len({json.dumps(a, sort_keys=True) for a in answers[4 * key : 4 * key + 4]}) == 1
    logged = sorted(e.event_id for e in read_events(settings.events_dir))
    assert logged == sorted(f"key-{n:04d}-abcdef" for n in range(40))
    assert counts == {40}
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


# 12. Open admin beyond loopback; client keys -------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org"])
def test_a_service_beyond_loopback_needs_an_admin_key_to_start(tmp_path: Path, host: str) -> None:
    with pytest.raises(OpenAdminError, match=r"serving\.admin_api_key"):
        create_app(Settings(home=tmp_path, serving={"host": host}))
    create_app(Settings(home=tmp_path, serving={"host": host, "admin_api_key": "k" * 16}))
    create_app(Settings(home=tmp_path, serving={"host": host, "allow_open_admin": True}))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_service_may_leave_admin_open(tmp_path: Path, host: str) -> None:
    create_app(Settings(home=tmp_path, serving={"host": host}))


def test_recflow_serve_refuses_an_open_admin_beyond_loopback(tmp_path: Path) -> None:
    env = {**os.environ, "RECFLOW_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("RECFLOW_CONFIG", None)
    run = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "serving.admin_api_key" in " ".join((run.stdout + run.stderr).split())


def test_interact_needs_a_client_key_when_keys_are_set(catalogue: Catalogue, tmp_path: Path) -> None:
    keys = {"web": "web-key-0123456789", "ios": "ios-key-0123456789"}
    settings = fresh(catalogue, tmp_path, client_keys=keys)
    body = {"item_id": items(catalogue)[0], "event": "click", "session": "app-reader"}
    with serve(settings) as (_app, c):
        assert c.post("/interact", json=body).status_code == 401
        assert c.post("/interact", json=body, headers={"X-Client-Key": "web-key-wrong"}).status_code == 401
        assert c.post("/interact", json=body, headers={"X-Client-Key": keys["ios"]}).status_code == 200
        assert c.get("/recommend/u0", params={"k": 3}).status_code == 200  # reading needs no key
    logged = read_events(settings.events_dir)
    assert [e.client for e in logged] == ["ios"]
    (path,) = settings.events_dir.glob("*.jsonl")
    assert json.loads(path.read_text())["client"] == "ios"


def test_anonymous_events_say_so_and_old_lines_still_read(catalogue: Catalogue, tmp_path: Path) -> None:
    settings = fresh(catalogue, tmp_path)
    with serve(settings) as (_app, c):
        body = {"item_id": items(catalogue)[0], "event": "click", "session": "anon"}
        assert c.post("/interact", json=body).status_code == 200
    (path,) = settings.events_dir.glob("*.jsonl")
    line = json.loads(path.read_text())
    assert line["client"] is None
    old = {k: v for k, v in line.items() if k != "client"}  # a line from before the field
    path.write_text(json.dumps(old) + "\n")
    (event,) = read_events(settings.events_dir)
    assert event.client is None and event.item_id == body["item_id"]
    assert parse_event(json.dumps(old))["event_id"] == line["event_id"]
    assert parse_event(json.dumps(line))["event_id"] == line["event_id"]
