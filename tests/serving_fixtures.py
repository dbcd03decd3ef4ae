"""A small real catalogue for the serving tests: real text vectors, an index, a daily pool.

Films in six genres (real all-MiniLM-L6-v2 vectors of their text), users who each like one
or two genres, an exact duplicate (the same film under two ids, as feeds carry one story
under several ids) and a ``daily_pool`` table as contract C2 puts it into ``catalog.duckdb``.
Each film is also a story as the scraper stores one (summary, canonical URL, published time,
outlets in ``item_outlets``): :data:`FRESH` was published minutes before the fixture was built.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI

from models.ann import build_index
from serving.app import create_app
from serving.bundle import DailyPool, LoadedBundle
from storage.artifacts import ArtifactStore
from storage.settings import EmbeddingSettings, IndexSettings, Settings
from storage.warehouse import connect
from tasks.embedding import embed_items, item_vectors
from tasks.load import upsert_items
from tasks.publish import write_catalog
from tasks.training import SplitData, fit_for_serving

CATALOGUE = "cascadetest"
GENRES: dict[str, list[str]] = {
    "Sci-Fi": [
        "Star Wars",
        "The Empire Strikes Back",
        "Return of the Jedi",
        "Blade Runner",
        "Dune",
        "Interstellar",
    ],
    "Animation": ["Toy Story", "A Bug's Life", "The Lion King", "Finding Nemo", "Shrek", "Up"],
    "Romance": [
        "Pride and Prejudice",
        "Sense and Sensibility",
        "Notting Hill",
        "Titanic",
        "Casablanca",
        "Emma",
    ],
    "Crime": ["The Godfather", "The Godfather: Part II", "Goodfellas", "Heat", "Casino", "Scarface"],
    "Horror": ["The Shining", "Halloween", "Alien", "The Exorcist", "Psycho", "Scream"],
    "Western": ["Unforgiven", "Tombstone", "Stagecoach", "Rio Bravo", "High Noon", "The Searchers"],
}
DUPLICATE = ("toy-story-again", "Toy Story", "Animation")
"""The same film under a second id: near-duplicate removal must never list both."""
PUBLISHED_BASE = 1_795_420_800  # 2026-11-23T06:00:00Z: item ``i`` was published ``i`` × 10 minutes before
FRESH = "wes-4"
"""Published 10 minutes before the catalogue was built: "new this hour"."""
OUTLET = "Daily Planet"
"""Every film's representative outlet; ``sci-0`` is also carried earlier by :data:`OTHER_OUTLET`
under another URL, which must not make that one the representative."""
OTHER_OUTLET = "Other Times"


def story_of(item_id: str, title: str, genre: str) -> dict[str, str]:
    """The summary and canonical URL the fixture gives each film."""
    return {"summary": f"{title}, a {genre.lower()} story.", "link": f"https://planet.example/{item_id}"}


def film_rows() -> list[tuple[str, str, str]]:
    rows = [
        (f"{genre[:3].lower()}-{i}", title, genre)
        for genre, titles in GENRES.items()
        for i, title in enumerate(titles)
    ]
    return [*rows, DUPLICATE]


def make_split(seed: int = 0) -> SplitData:
    """12 users who like one genre (8 of its films... all 6 plus 2 from a second genre), and
    ``lonely`` with a single interaction (below the fallback threshold)."""
    rows = film_rows()
    ids = [r[0] for r in rows]
    by_genre = {g: [i for i, r in enumerate(rows) if r[2] == g] for g in GENRES}
    genres = list(GENRES)
    rng = np.random.default_rng(seed)
    users, histories = [], []
    for u in range(12):
        main, second = genres[u % 6], genres[(u + 1 + u // 6) % 6]
        picks = rng.choice(by_genre[main], 5, replace=False).tolist()
        picks += rng.choice(by_genre[second], 3, replace=False).tolist()
        rng.shuffle(picks)
        users.append(f"u{u}")
        histories.append(np.array(picks, dtype=np.int64))
    users.append("lonely")
    histories.append(np.array([by_genre["Western"][0]], dtype=np.int64))
    return SplitData(
        "leave_last_out",
        np.array(users, dtype=object),
        np.array(ids, dtype=object),
        [h[:-2] if len(h) > 2 else h for h in histories],
        [h[-2:-1] if len(h) > 2 else h[:0] for h in histories],
        [h[-1:] if len(h) > 2 else h[:0] for h in histories],
    )


@dataclass
class Catalogue:
    settings: Settings
    data: SplitData
    vectors: np.ndarray
    pool_ids: list[str]
    genre_of: dict[str, str]


def pool_for(data: SplitData) -> pd.DataFrame:
    """Today's pool (C2 columns): every other film, the duplicate pair included, in rank order."""
    rows = film_rows()
    chosen = [r for i, r in enumerate(rows) if i % 2 == 0 or r[1] == "Toy Story"]
    return pd.DataFrame(
        {
            "pool_date": pd.to_datetime(["2026-11-23"] * len(chosen)).date,
            "rank": range(1, len(chosen) + 1),
            "item_id": [r[0] for r in chosen],
            "topic": [r[2] for r in chosen],
            "cluster": range(len(chosen)),
            "source": "test",
            "reason": ["fresh"] * len(chosen),
            "score": np.linspace(1.0, 0.5, len(chosen)),
        }
    )


def build_catalogue(home: Path, *, with_pool: bool = True, serving: dict | None = None) -> Catalogue:
    """Embed the films, fit ItemKNN and publish one bundle (with a pool) under ``home``."""
    settings = Settings(
        home=home,
        catalogue=CATALOGUE,
        serving={"reload_check_s": 0.1, "max_k": 50, **(serving or {})},
    )
    rows = film_rows()
    con = connect(settings.warehouse_path)
    upsert_items(
        con,
        pd.DataFrame(
            {
                "item_id": [r[0] for r in rows],
                "title": [r[1] for r in rows],
                "categories": [[r[2]] for r in rows],
                "year": pd.array([None] * len(rows), dtype="Int64"),
                "description": None,
                "url": None,
                "row_number": range(len(rows)),
            }
        ),
        "films",
    )
    embedding = EmbeddingSettings()
    embed_items(con, embedding, progress=False)
    data = make_split()
    ids = [str(i) for i in data.item_ids]
    vectors = item_vectors(con, embedding, ids)
    add_stories(con, rows)  # after embedding: the vectors stay those of the titles alone
    pool = pool_for(data)
    publish_with_pool(ArtifactStore(settings.bundles_dir), con, data, vectors, pool if with_pool else None)
    con.close()
    return Catalogue(settings, data, vectors, pool["item_id"].tolist(), {r[0]: r[2] for r in rows})


def add_stories(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, str]]) -> None:
    """Give each film what the scraper stores of a story: a description, a canonical URL, a
    published time and its outlets (``tasks/scrape/store.py``'s columns)."""
    fresh_ts = int(time.time()) - 600
    for i, (item_id, title, genre) in enumerate(rows):
        story = story_of(item_id, title, genre)
        published = fresh_ts if item_id == FRESH else PUBLISHED_BASE - 600 * i
        con.execute(
            "UPDATE items SET description = ?, url = ?, published_ts = ? WHERE item_id = ?",
            [story["summary"], story["link"], published, item_id],
        )
        con.execute(
            "INSERT INTO item_outlets (item_id, feed_url, entry_url, source, title, published_ts, merged_by)"
            " VALUES (?, 'https://planet.example/feed', ?, ?, ?, ?, 'new')",
            [item_id, story["link"], OUTLET, title, published],
        )
    con.execute(
        "INSERT INTO item_outlets (item_id, feed_url, entry_url, source, title, published_ts, merged_by)"
        " VALUES ('sci-0', 'https://times.example/feed', 'https://times.example/sw', ?, 'Star Wars', ?, 'url')",
        [OTHER_OUTLET, PUBLISHED_BASE - 7200],
    )


STORY_COLUMNS = ("summary", "link", "outlet", "published")


def publish_with_pool(
    store: ArtifactStore,
    con: duckdb.DuckDBPyConnection,
    data: SplitData,
    vectors: np.ndarray,
    pool: pd.DataFrame | None,
    *,
    story_columns: bool = True,
) -> str:
    """A bundle laid out as tasks/publish.py writes it, plus the C2 ``daily_pool`` table;
    without ``story_columns``, its catalog is one written before items had them."""
    ids = [str(i) for i in data.item_ids]
    model = fit_for_serving(data, "itemknn", {"neighbors": 20})
    index = build_index(vectors, ids, IndexSettings())
    with store.staging() as staged:
        write_catalog(staged / "catalog.duckdb", con, data)
        if not story_columns:
            with duckdb.connect(str(staged / "catalog.duckdb")) as cat:
                for column in STORY_COLUMNS:
                    cat.execute(f"ALTER TABLE items DROP COLUMN {column}")
                cat.execute("CHECKPOINT")
        if pool is not None:
            with duckdb.connect(str(staged / "catalog.duckdb")) as cat:
                cat.register("pool_df", pool)
                cat.execute(
                    "CREATE TABLE daily_pool AS SELECT CAST(pool_date AS DATE) AS pool_date,"
                    " CAST(rank AS INTEGER) AS rank, item_id, topic, CAST(cluster AS INTEGER) AS cluster,"
                    " source, reason, CAST(score AS DOUBLE) AS score FROM pool_df"
                )
                cat.execute("CHECKPOINT")
        model.save(staged / "model")
        np.save(staged / "item_vectors.npy", vectors.astype(np.float32))
        index.save(staged / "index")
        manifest = {
            "model": {"name": "itemknn", "params": model.params()},
            "metrics": {"valid": {"ndcg@10": 0.1}},
            "embedding": {"model": EmbeddingSettings().model},
            "index": index.metadata(),
        }
        return store.commit(staged, manifest)


# A real server ------------------------------------------------------------------------------
class ServerThread:
    """uvicorn serving ``app`` on a free port of 127.0.0.1, in a daemon thread."""

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
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@contextmanager
def serve(settings: Settings) -> Iterator[tuple[FastAPI, httpx.Client]]:
    app = create_app(settings)
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield app, client


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if condition():
                return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def pool_bundle(
    ids: list[str],
    vectors: np.ndarray,
    categories: list[list[str]],
    published_s: np.ndarray,
    pool: np.ndarray,
    model_name: str,
    **fields: Any,
) -> LoadedBundle:
    """A :class:`LoadedBundle` in memory, no files: ``ids`` with their unit text ``vectors``,
    categories and publication times, today's ``pool`` (item indices), no user histories;
    ``fields`` sets the rest (a ranker, an index...)."""
    n = len(ids)
    return LoadedBundle(
        version="v1",
        path=Path("."),
        manifest={"model": {"name": model_name}},
        items=pd.DataFrame({"item_id": ids}),
        item_index={i: k for k, i in enumerate(ids)},
        histories={},
        popularity=np.zeros(n, np.int64),
        popular_order=np.arange(n),
        popular_rank=np.arange(n),
        model=None,
        item_ids=ids,
        titles=ids,
        categories=categories,
        years=[None] * n,
        vectors=vectors,
        unit_vectors=vectors,
        published_s=published_s,
        pool=DailyPool("2026-11-23", pool, [None] * len(pool), [None] * len(pool)),
        **fields,
    )
