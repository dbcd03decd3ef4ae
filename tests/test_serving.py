"""The serving app against real bundles, through a real uvicorn server on a free port.

Bundles are built with the pipeline's own code path (warehouse → SplitData → ItemKNN →
``publish_bundle``), so a change to the bundle layout on either side breaks these tests
rather than production. Requests go over TCP with a reused ``httpx.Client``, as a caller's
app would send them; nothing is called in-process through a test client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from models.base import Recommender
from serving.app import create_app
from serving.bundle import BundleHolder, LoadedBundle, first_not_in, load_bundle, rank_unseen
from serving.cascade import CascadeParams
from storage.artifacts import CURRENT, ArtifactStore, file_sha256
from storage.settings import ServingSettings, Settings
from storage.warehouse import connect
from tasks.publish import publish_bundle
from tasks.training import SplitData, fit_for_serving

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = "servetest"
N_ITEMS = 30
CHECK_S = 0.1  # reload interval used by the servers below: keeps the tests quick
MAX_K = 50


# Building real bundles -------------------------------------------------------------------
def item_id(i: int) -> str:
    return str(1000 + i)


def make_split(n_users: int, seed: int, extra_users: tuple[str, ...] = ()) -> SplitData:
    """Users with 8 distinct items each (6 train, 1 valid, 1 test), drawn from two taste
    clusters so ItemKNN finds real neighbours."""
    rng = np.random.default_rng(seed)
    user_ids = [f"u{u}" for u in range(n_users)] + list(extra_users)
    train, valid, test = [], [], []
    for u in range(len(user_ids)):
        own = np.arange(0, 15) if u % 2 == 0 else np.arange(15, 30)
        other = np.setdiff1d(np.arange(N_ITEMS), own)
        picks = np.concatenate([rng.choice(own, 6, replace=False), rng.choice(other, 2, replace=False)])
        rng.shuffle(picks)
        picks = picks.astype(np.int64)
        train.append(picks[:-2])
        valid.append(picks[-2:-1])
        test.append(picks[-1:])
    return SplitData(
        "leave_last_out",
        np.array(user_ids, dtype=object),
        np.array([item_id(i) for i in range(N_ITEMS)], dtype=object),
        train,
        valid,
        test,
    )


def publish(store: ArtifactStore, con: duckdb.DuckDBPyConnection, data: SplitData, ndcg: float = 0.1) -> str:
    """Fit ItemKNN on ``data`` and publish it exactly as the nightly flow does."""
    model = fit_for_serving(data, "itemknn", {"neighbors": 10})
    result = publish_bundle(
        store,
        con,
        data,
        model,
        {
            "model": {"name": "itemknn", "params": model.params()},
            "metrics": {"valid": {"ndcg@10": ndcg}},
        },
    )
    assert result.version is not None
    return result.version


def point_current(store: ArtifactStore, version: str) -> None:
    """Move ``CURRENT`` atomically *without* verifying, as a buggy or hostile writer might."""
    tmp = store.root / ".CURRENT-test"
    tmp.write_text(version + "\n")
    os.replace(tmp, store.root / CURRENT)


def make_settings(home: Path) -> Settings:
    return Settings(
        home=home,
        catalogue=CATALOGUE,
        serving={"reload_check_s": CHECK_S, "max_k": MAX_K},
    )


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """A real warehouse with 30 items; some lack categories or a year, as real data does."""
    con = connect(tmp_path_factory.mktemp("warehouse") / "w.duckdb")
    for i in range(N_ITEMS):
        con.execute(
            "INSERT INTO items (item_id, title, categories, year) VALUES (?, ?, ?, ?)",
            [
                item_id(i),
                f"Title {i}",
                None if i % 7 == 0 else ["Drama", "Comedy"][: 1 + i % 2],
                None if i % 5 == 0 else 1980 + i,
            ],
        )
    yield con
    con.close()


@pytest.fixture(scope="module")
def data() -> SplitData:
    return make_split(n_users=8, seed=0)


# A real server in a background thread ------------------------------------------------------
class ServerThread:
    """uvicorn serving ``app`` on a socket bound to a free port, in a daemon thread.

    The socket is bound here and handed to uvicorn, so there is no window in which another
    process could take the port between choosing and binding it.
    """

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        wait_for(lambda: httpx.get(f"{self.url}/health").status_code in (200, 503))
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``condition`` until true; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if condition():
                return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


@dataclass
class Live:
    client: httpx.Client
    store: ArtifactStore
    version: str
    data: SplitData
    app: FastAPI

    @property
    def holder(self) -> BundleHolder:
        return self.app.state.holder


@contextmanager
def serve(home: Path) -> Iterator[tuple[FastAPI, str, httpx.Client]]:
    """Run the app for ``home`` in a thread; yield it, its URL and one reused client."""
    app = create_app(make_settings(home))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield app, url, client


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    warehouse: duckdb.DuckDBPyConnection,
    data: SplitData,
) -> Iterator[Live]:
    """One published bundle and one server for the read-only tests of this module."""
    home = tmp_path_factory.mktemp("live")
    store = ArtifactStore(make_settings(home).bundles_dir)
    version = publish(store, warehouse, data)
    with serve(home) as (app, _url, client):
        yield Live(client, store, version, data, app)


@pytest.fixture
def fresh(tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData) -> Iterator[Live]:
    """A server of its own, for tests that move ``CURRENT``."""
    store = ArtifactStore(make_settings(tmp_path).bundles_dir)
    version = publish(store, warehouse, data)
    with serve(tmp_path) as (app, _url, client):
        yield Live(client, store, version, data, app)


def history_ids(data: SplitData, user: int) -> list[str]:
    return [item_id(i) for i in data.histories(("train", "valid", "test"))[user]]


def popularity(data: SplitData) -> np.ndarray:
    return np.bincount(np.concatenate(data.histories(("train", "valid", "test"))), minlength=N_ITEMS)


# The read-only endpoints -------------------------------------------------------------------
def test_health_reports_the_live_bundle(live: Live) -> None:
    response = live.client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["catalogue"] == CATALOGUE  # one process per catalogue: which one this is
    assert body["bundle_version"] == live.version
    assert body["model"] == "itemknn"
    assert body["counts"] == {"users": 8, "items": N_ITEMS, "interactions": 64}
    assert body["loaded_at"]
    assert body["detail"] is None


def test_recommend_known_user_excludes_history_and_sorts_by_score(live: Live) -> None:
    for u, user in enumerate(live.data.user_ids):
        response = live.client.get(f"/recommend/{user}", params={"k": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user_id"] == user
        assert body["strategy"] == "personalized"
        assert body["reason"] is None
        assert body["bundle_version"] == live.version
        assert body["model"] == "itemknn"
        items = body["items"]
        assert len(items) == 5
        ids = [it["item_id"] for it in items]
        assert len(set(ids)) == 5
        assert not set(ids) & set(history_ids(live.data, u))
        scores = [it["score"] for it in items]
        assert scores == sorted(scores, reverse=True)
        assert [it["rank"] for it in items] == [1, 2, 3, 4, 5]
        # The scores are the model's best unseen scores, computed independently here.
        model = fit_for_serving(live.data, "itemknn", {"neighbors": 10})
        hist = live.data.histories(("train", "valid", "test"))[u]
        expected = model.score([hist])[0].astype(np.float64)
        expected[hist] = -np.inf
        assert scores == pytest.approx(sorted(expected, reverse=True)[:5])
        assert items[0]["title"].startswith("Title ")


def test_recommend_returns_every_unseen_item_when_k_exceeds_them(live: Live) -> None:
    body = live.client.get("/recommend/u0", params={"k": MAX_K}).json()
    assert len(body["items"]) == N_ITEMS - len(set(history_ids(live.data, 0)))


def test_unknown_user_gets_the_popularity_fallback(live: Live) -> None:
    response = live.client.get("/recommend/nobody-42", params={"k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "popularity_fallback"
    assert "nobody-42" in body["reason"]
    pop = popularity(live.data)
    order = sorted(range(N_ITEMS), key=lambda i: (-pop[i], i))[:4]
    assert [it["item_id"] for it in body["items"]] == [item_id(i) for i in order]
    assert [it["score"] for it in body["items"]] == [float(pop[i]) for i in order]


@pytest.mark.parametrize("k", ["0", "-1", str(MAX_K + 1), "100000", "abc", "1.5", ""])
def test_bad_k_is_a_422_with_a_message(live: Live, k: str) -> None:
    response = live.client.get("/recommend/u0", params={"k": k})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["query", "k"]
    assert detail[0]["msg"]


def test_recommend_documents_the_query_it_validates_itself(live: Live) -> None:
    """GET /recommend validates its query as one model (serving.routers.recommend.parse_query); the schema
    must still name every parameter with its bounds, and each bound must be enforced."""
    operation = live.client.get("/openapi.json").json()["paths"]["/recommend/{user_id}"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["user_id"]["in"] == "path" and params["user_id"]["required"] is True
    assert {n: p["in"] for n, p in params.items() if n != "user_id"} == dict.fromkeys(
        ["k", "mmr_lambda", "explore", "session", "categories", "mode", "category_boost"], "query"
    )
    assert params["k"]["schema"]["maximum"] == MAX_K and params["k"]["schema"]["minimum"] == 1
    assert "422" in operation["responses"]
    for query, name in [({"mmr_lambda": "1.5"}, "mmr_lambda"), ({"explore": "maybe"}, "explore"),
                        ({"session": "bad session!"}, "session"), ({"mode": "loose"}, "mode"),
                        ({"category_boost": "1.5"}, "category_boost")]:  # fmt: skip
        response = live.client.get("/recommend/u0", params=query)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["query", name]
    ok = live.client.get("/recommend/u0", params={"k": "3", "explore": "false", "mmr_lambda": "0.5"})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3


def test_unknown_item_and_user_are_404s_naming_the_id(live: Live) -> None:
    response = live.client.get("/items/no-such-item")
    assert response.status_code == 404
    assert "no-such-item" in response.json()["detail"]
    response = live.client.get("/users/ghost/history")
    assert response.status_code == 404
    assert "ghost" in response.json()["detail"]
    assert live.client.get("/nowhere").status_code == 404
    assert live.client.get("/admin/reload").status_code == 405


def test_item_endpoint(live: Live) -> None:
    body = live.client.get(f"/items/{item_id(1)}").json()
    assert body == {
        "item_id": item_id(1),
        "title": "Title 1",
        "categories": ["Drama", "Comedy"],
        "year": 1981,
        "bundle_version": live.version,
        "popularity": int(popularity(live.data)[1]),
    }
    nulls = live.client.get(f"/items/{item_id(0)}").json()
    assert nulls["categories"] == [] and nulls["year"] is None


def test_history_is_in_time_order_and_limit_keeps_the_latest(live: Live) -> None:
    expected = history_ids(live.data, 2)
    body = live.client.get("/users/u2/history").json()
    assert body["total"] == len(expected)
    assert [it["item_id"] for it in body["items"]] == expected
    assert all(it["title"] for it in body["items"])
    body = live.client.get("/users/u2/history", params={"limit": 3}).json()
    assert [it["item_id"] for it in body["items"]] == expected[-3:]
    assert [it["position"] for it in body["items"]] == [5, 6, 7]
    assert live.client.get("/users/u2/history", params={"limit": 0}).status_code == 422


def test_admin_reload_without_change_and_openapi(live: Live) -> None:
    body = live.client.post("/admin/reload").json()
    assert body["bundle_version"] == live.version
    assert body["changed"] is False
    spec = live.client.get("/openapi.json").json()
    assert spec["info"]["title"] == "recflow"
    assert {
        "/health",
        "/recommend/{user_id}",
        "/users/{user_id}/history",
        "/items/{item_id}",
        "/admin/reload",
    } <= set(spec["paths"])
    assert "Recommendation" in spec["components"]["schemas"]


# Before any bundle, and the factory path -------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_503_until_the_first_bundle_then_serves_it_without_restart(
    tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData
) -> None:
    """Started as deployments start it (uvicorn factory, settings from RECFLOW_* env)."""
    port = free_port()
    env = {
        **os.environ,
        "RECFLOW_HOME": str(tmp_path),
        "RECFLOW_CATALOGUE": CATALOGUE,
        "RECFLOW_SERVING__RELOAD_CHECK_S": "0.2",
    }
    env.pop("RECFLOW_CONFIG", None)
    code = (
        "import uvicorn; uvicorn.run('serving.app:create_app', factory=True, "
        f"host='127.0.0.1', port={port}, log_level='warning')"
    )
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_for(
                lambda: client.get("/health").status_code == 503,
                timeout=120,  # a fresh interpreter importing torch: over 30 s on busy cores
                what="the service to answer",
            )
            for path in ("/health", "/recommend/u0", "/items/1000", "/users/u0/history"):
                response = client.get(path)
                assert response.status_code == 503, path
                assert "recflow run nightly" in response.json()["detail"]
                assert response.headers["retry-after"] == "1"
            assert client.post("/admin/reload").status_code == 503

            store = ArtifactStore(tmp_path / CATALOGUE / "bundles")
            version = publish(store, warehouse, data)
            wait_for(lambda: client.get("/health").status_code == 200, what="the first bundle")
            assert client.get("/health").json()["bundle_version"] == version
            assert client.get("/recommend/u0").json()["strategy"] == "personalized"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


# Hot reload -------------------------------------------------------------------------------
def test_hot_reload_under_load_fails_no_request(
    tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData
) -> None:
    """A new bundle goes live while 4 threads hammer /recommend; retention deletes the old
    bundle's directory at once (keep=1), which must not matter: it is all in memory."""
    store = ArtifactStore(make_settings(tmp_path).bundles_dir, keep=1)
    v1 = publish(store, warehouse, data)
    data2 = make_split(n_users=8, seed=1, extra_users=("newbie",))
    users = [*data2.user_ids.tolist(), "stranger"]
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer(url: str, offset: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as own:
            n = offset
            while not stop.is_set():
                response = own.get(f"/recommend/{users[n % len(users)]}", params={"k": 10})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["bundle_version"])
                n += 1

    with serve(tmp_path) as (_app, url, client):
        threads = [threading.Thread(target=hammer, args=(url, i)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(statuses) > 50, what="traffic before the publish")
            v2 = publish(store, warehouse, data2)
            assert not (store.root / v1).exists(), "retention should have removed v1"
            wait_for(
                lambda: client.get("/health").json()["bundle_version"] == v2,
                what="the new bundle to go live",
            )
            seen = len(statuses)
            wait_for(lambda: len(statuses) > seen + 50, what="traffic after the swap")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert statuses and set(statuses) == {200}, f"non-200 answers: {set(statuses)}"
        assert versions == {v1, v2}
        body = client.get("/recommend/newbie").json()
        assert body["strategy"] == "personalized" and body["bundle_version"] == v2
        assert client.get("/health").json()["counts"]["users"] == 9


def corrupt_truncate(store: ArtifactStore, version: str) -> None:
    path = store.root / version / "catalog.duckdb"
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def corrupt_missing_model(store: ArtifactStore, version: str) -> None:
    (store.root / version / "model" / "similarity.npz").unlink()


def corrupt_but_checksums_match(store: ArtifactStore, version: str) -> None:
    """Checksums pass, loading fails: the loader must refuse it too, not only verify()."""
    base = store.root / version
    (base / "model" / "model.json").write_text(json.dumps({"name": "no-such-model"}))
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["checksums"]["model/model.json"] = file_sha256(base / "model" / "model.json")
    (base / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("corrupt", "expected_error"),
    [
        (corrupt_truncate, "checksum mismatch"),
        (corrupt_missing_model, "missing"),
        (corrupt_but_checksums_match, "no-such-model"),
    ],
)
def test_a_corrupt_bundle_is_refused_once_and_the_old_one_keeps_serving(
    fresh: Live,
    warehouse: duckdb.DuckDBPyConnection,
    caplog: pytest.LogCaptureFixture,
    corrupt: Callable[[ArtifactStore, str], None],
    expected_error: str,
) -> None:
    caplog.set_level(logging.INFO, logger="recflow.serving")
    # Published with a worse metric, so publish_bundle keeps it off CURRENT; then corrupted
    # and forced live behind the store's back.
    bad = publish(fresh.store, warehouse, fresh.data, ndcg=0.0)
    assert fresh.store.current_version() == fresh.version
    corrupt(fresh.store, bad)
    point_current(fresh.store, bad)

    wait_for(lambda: bad in fresh.holder.refused, what="the corrupt bundle to be refused")
    time.sleep(10 * CHECK_S)  # ten more checks: none may retry it
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and bad in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert expected_error in refusals[0].getMessage()

    health = fresh.client.get("/health").json()
    assert health["bundle_version"] == fresh.version
    assert health["status"] == "degraded"
    assert bad in health["detail"] and expected_error in health["detail"]
    response = fresh.client.get("/recommend/u1")
    assert response.status_code == 200
    assert response.json()["bundle_version"] == fresh.version

    forced = fresh.client.post("/admin/reload").json()
    assert forced["bundle_version"] == fresh.version and forced["changed"] is False
    assert bad in forced["refused"]

    # A good bundle published afterwards goes live as usual.
    good = publish(fresh.store, warehouse, fresh.data, ndcg=0.2)
    wait_for(
        lambda: fresh.client.get("/health").json()["bundle_version"] == good,
        what="recovery on the next good bundle",
    )
    assert fresh.client.get("/health").json()["status"] == "ok"


# The pieces, without a server --------------------------------------------------------------
def test_holder_without_poller_checks_lazily_and_remembers_refusals(
    tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData
) -> None:
    store = ArtifactStore(tmp_path / "bundles")
    calls: list[str] = []

    def counting(s: ArtifactStore, version: str) -> LoadedBundle:
        calls.append(version)
        return load_bundle(s, version)

    holder = BundleHolder(store, check_interval_s=0.0, loader=counting)
    with pytest.raises(Exception, match="recflow run nightly"):
        holder.get()
    v1 = publish(store, warehouse, data)
    assert holder.get().version == v1
    bad = publish(store, warehouse, data, ndcg=0.0)
    corrupt_truncate(store, bad)
    point_current(store, bad)
    for _ in range(5):
        assert holder.get().version == v1
    assert calls == [v1, bad]
    holder.reload()  # an explicit reload retries it
    assert calls == [v1, bad, bad]


def test_a_swapped_out_bundle_is_freed_and_the_live_one_is_frozen(
    tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData
) -> None:
    """The holder freezes each bundle it swaps in out of the garbage collector's sight; the
    old bundle must still be freed (by reference counting) once nothing uses it."""
    import gc
    import weakref

    store = ArtifactStore(tmp_path / "bundles")
    holder = BundleHolder(store, check_interval_s=0.0)
    try:
        publish(store, warehouse, data)
        first = weakref.ref(holder.get())
        assert gc.get_freeze_count() > 0
        v2 = publish(store, warehouse, make_split(n_users=8, seed=1))
        assert holder.get().version == v2
        assert first() is None, "the swapped-out bundle is still alive"
        assert holder.get().cascade_ms < float("inf") and holder.get().warm_history > 0
    finally:
        holder.stop()
    assert gc.get_freeze_count() == 0


def test_a_reused_version_name_is_loaded_not_mistaken_for_the_live_bundle(
    tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData
) -> None:
    """ArtifactStore can give a pruned bundle's name to a new bundle published in the same
    second; the holder must notice the different bundle behind the same name."""
    store = ArtifactStore(tmp_path / "bundles")
    holder = BundleHolder(store, check_interval_s=0.0)
    first = publish(store, warehouse, data)
    assert holder.get().counts["users"] == 8
    second = publish(store, warehouse, make_split(n_users=8, seed=1, extra_users=("newbie",)))
    shutil.rmtree(store.root / first)
    os.rename(store.root / second, store.root / first)
    point_current(store, first)
    bundle = holder.get()
    assert bundle.version == first
    assert bundle.counts["users"] == 9 and "newbie" in bundle.histories


def test_rank_unseen_breaks_ties_by_popularity_and_skips_seen() -> None:
    scores = np.array([0.0, 2.0, 0.0, 1.0, 0.0, 0.0])
    tiebreak = np.array([5, 0, 4, 1, 2, 3])  # popularity rank: item 1 most popular
    top = rank_unseen(scores.copy(), np.array([3]), 4, tiebreak)
    assert top.tolist() == [1, 4, 5, 2]
    assert rank_unseen(scores.copy(), np.arange(6), 3, tiebreak).tolist() == []
    assert len(rank_unseen(scores.copy(), np.array([0, 1]), 10, tiebreak)) == 4


def test_first_not_in_lists_what_a_mask_over_every_item_would() -> None:
    """The popularity fallback reads only a prefix of the popular order: the same items, in
    the same order, as masking the exclusions out of the whole order (what it did before)."""
    rng = np.random.default_rng(3)
    for n_items in (1, 2, 7, 300):
        order = rng.permutation(n_items)
        for _ in range(60):
            exclude = rng.integers(0, n_items, int(rng.integers(0, 2 * n_items + 1)))  # repeats too
            n = int(rng.integers(0, n_items + 3))
            keep = np.ones(n_items, dtype=bool)
            keep[exclude] = False
            want = order[keep[order]][:n]
            got = first_not_in(order, exclude.astype(np.int32), n)
            assert got.tolist() == want.tolist(), (n_items, n, sorted(set(exclude.tolist())))


def test_popularity_fallback_skips_the_excluded_items(
    tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData
) -> None:
    store = ArtifactStore(tmp_path / "bundles")
    bundle = load_bundle(store, publish(store, warehouse, data))
    exclude = bundle.popular_order[[0, 2, 3]]
    top, scores = bundle.popular(4, exclude)
    assert top.tolist() == bundle.popular_order[[1, 4, 5, 6]].tolist()
    assert scores.tolist() == bundle.popularity[top].astype(float).tolist()
    params = CascadeParams.from_settings(ServingSettings(), 3, explore=False)
    result = bundle.fallback("user 'x'", 1, params, exclude, 3)
    assert result.strategy == "popularity_fallback" and result.indices
    assert not set(result.indices) & set(exclude.tolist())


def test_loaded_bundle_survives_its_directory_being_deleted(
    tmp_path: Path, warehouse: duckdb.DuckDBPyConnection, data: SplitData
) -> None:
    store = ArtifactStore(tmp_path / "bundles")
    version = publish(store, warehouse, data)
    bundle = load_bundle(store, version)
    shutil.rmtree(store.root / version)
    ranked = bundle.recommend("u0", 5)
    assert ranked.strategy == "personalized" and len(ranked.indices) == 5
    assert isinstance(bundle.model, Recommender)


# --- similar items and text search over the bundle's FAISS index -------------------------

FILMS = [
    ("Star Wars", ["Sci-Fi", "Adventure"]),
    ("The Empire Strikes Back", ["Sci-Fi", "Adventure"]),
    ("Return of the Jedi", ["Sci-Fi", "Adventure"]),
    ("Alien", ["Sci-Fi", "Horror"]),
    ("Aliens", ["Sci-Fi", "Action"]),
    ("Toy Story", ["Animation", "Comedy"]),
    ("A Bug's Life", ["Animation", "Comedy"]),
    ("The Lion King", ["Animation", "Musical"]),
    ("Pride and Prejudice", ["Romance", "Drama"]),
    ("Sense and Sensibility", ["Romance", "Drama"]),
    ("The Godfather", ["Crime", "Drama"]),
    ("The Godfather: Part II", ["Crime", "Drama"]),
]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, np.ndarray]]:
    """A bundle with real text vectors (all-MiniLM-L6-v2) and its index, served over HTTP."""
    import pandas as pd

    from models.ann import build_index
    from storage.settings import EmbeddingSettings, IndexSettings
    from tasks.embedding import embed_items, item_vectors
    from tasks.load import upsert_items

    home = tmp_path_factory.mktemp("indexed")
    settings = make_settings(home)
    con = connect(settings.warehouse_path)
    ids = [str(i) for i in range(len(FILMS))]
    upsert_items(
        con,
        pd.DataFrame(
            {
                "item_id": ids,
                "title": [t for t, _ in FILMS],
                "categories": [c for _, c in FILMS],
                "year": pd.array([None] * len(FILMS), dtype="Int64"),
                "description": None,
                "url": None,
                "row_number": range(len(FILMS)),
            }
        ),
        "films",
    )
    embedding = EmbeddingSettings()
    embed_items(con, embedding, progress=False)
    rng = np.random.default_rng(1)
    histories = [rng.choice(len(FILMS), 4, replace=False) for _ in range(5)]
    data = SplitData(
        "leave_last_out",
        np.array([f"u{u}" for u in range(5)], dtype=object),
        np.array(ids, dtype=object),
        [h[:2] for h in histories],
        [h[2:3] for h in histories],
        [h[3:] for h in histories],
    )
    vectors = item_vectors(con, embedding, ids)
    index = build_index(vectors, ids, IndexSettings())
    model = fit_for_serving(data, "itemknn", {"neighbors": 5})
    publish_bundle(
        ArtifactStore(settings.bundles_dir),
        con,
        data,
        model,
        {"model": {"name": "itemknn"}, "embedding": {"model": embedding.model}},
        vectors=vectors,
        index=index,
    )
    con.close()
    with serve(home) as (_app, _url, client):
        yield client, vectors


def test_similar_items_are_the_nearest_vectors(indexed: tuple[httpx.Client, np.ndarray]) -> None:
    client, vectors = indexed
    response = client.get("/items/0/similar", params={"k": 3})
    assert response.status_code == 200, response.text
    got = [item["item_id"] for item in response.json()["items"]]
    expected = [str(i) for i in np.argsort(-(vectors @ vectors[0])) if i != 0][:3]
    assert got == expected
    assert "0" not in got
    # A person would agree: Star Wars' neighbours are its sequels.
    assert {"1", "2"} <= set(got)


def test_text_search_finds_the_described_items(indexed: tuple[httpx.Client, np.ndarray]) -> None:
    client, _ = indexed
    response = client.get("/search", params={"q": "the mafia family saga", "k": 2})
    assert response.status_code == 200, response.text
    assert {item["title"] for item in response.json()["items"]} == {"The Godfather", "The Godfather: Part II"}


def test_similar_and_search_reject_bad_requests(indexed: tuple[httpx.Client, np.ndarray]) -> None:
    client, _ = indexed
    assert client.get("/items/999/similar").status_code == 404
    assert client.get("/items/0/similar", params={"k": 0}).status_code == 422
    assert client.get("/search", params={"q": "   "}).status_code == 422
    assert client.get("/search").status_code == 422
    assert client.get("/search", params={"q": "x" * 501}).status_code == 422


def test_bundle_without_index_says_so(live: Live) -> None:
    response = live.client.get(f"/items/{item_id(0)}/similar")
    assert response.status_code == 503
    assert "no item vectors or index" in response.json()["detail"]
