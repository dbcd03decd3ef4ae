"""Freshness without retraining (issue 14, item 2), through a real uvicorn server.

Stories added to the warehouse after the bundle was built are published as a delta
(:func:`tasks.freshness.publish_delta`, what ``scrape-feeds`` runs after each scrape); the
running service hot-loads it: ``/items`` answers, ``/interact`` accepts them, ``/feed`` ranks
them in its freshness slot by the reader's taste. A corrupt delta is refused and the live state
stays; a new bundle supersedes the deltas of the old one.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from storage.artifacts import MANIFEST, ArtifactStore
from storage.deltas import LATEST, VECTORS, delta_dir
from storage.warehouse import connect
from tasks.freshness import publish_delta
from tasks.load import upsert_items
from tests.serving_fixtures import Catalogue, build_catalogue, publish_with_pool, serve, wait_for

NEW_SCIFI = ("news-scifi", "A new Star Wars film: the Jedi return to the desert planet", "Sci-Fi")
NEW_ROMANCE = ("news-romance", "A new Jane Austen romance: love and marriage in Regency England", "Romance")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("fresh"))


@pytest.fixture(scope="module")
def client(catalogue: Catalogue) -> Iterator[httpx.Client]:
    with serve(catalogue.settings) as (_, client):
        yield client


def add_news(catalogue: Catalogue, rows: list[tuple[str, str, str]]) -> int | None:
    """Store ``rows`` as just-scraped stories and publish the delta; returns its sequence."""
    settings = catalogue.settings
    con = connect(settings.warehouse_path)
    try:
        upsert_items(
            con,
            pd.DataFrame(
                {
                    "item_id": [r[0] for r in rows],
                    "title": [r[1] for r in rows],
                    "categories": [[r[2]] for r in rows],
                    "year": pd.array([None] * len(rows), dtype="Int64"),
                    "description": [f"{r[1]}." for r in rows],
                    "url": [f"https://news.example/{r[0]}" for r in rows],
                    "row_number": range(len(rows)),
                }
            ),
            "news",
        )
        now = int(time.time())
        for item_id, _, _ in rows:
            con.execute("UPDATE items SET published_ts = ? WHERE item_id = ?", [now - 60, item_id])
        summary = publish_delta(
            con, ArtifactStore(settings.bundles_dir), settings.embedding, settings.harvest.window_hours
        )
    finally:
        con.close()
    return summary.seq


def feed(client: httpx.Client, session: str, k: int = 20) -> dict:
    answer = client.get("/feed", params={"k": k, "session": session})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_scraped_story_is_servable_without_a_nightly(catalogue: Catalogue, client: httpx.Client) -> None:
    before = client.get("/health").json()
    assert client.get(f"/items/{NEW_SCIFI[0]}").status_code == 404
    seq = add_news(catalogue, [NEW_SCIFI, NEW_ROMANCE])
    assert seq is not None
    wait_for(lambda: client.get("/health").json()["delta_seq"] == seq, what="the delta to go live")
    health = client.get("/health").json()
    assert health["bundle_version"] == before["bundle_version"]  # no new bundle, no nightly
    assert health["fresh_items"] == 2

    item = client.get(f"/items/{NEW_SCIFI[0]}")
    assert item.status_code == 200 and item.json()["title"] == NEW_SCIFI[1]

    # A new reader sees both in the freshness slot, with why in plain words and the story fields.
    anonymous = feed(client, uuid.uuid4().hex)
    fresh = {i["item_id"]: i for i in anonymous["items"] if i["stage"] == "fresh"}
    assert set(fresh) == {NEW_SCIFI[0], NEW_ROMANCE[0]}
    assert fresh[NEW_SCIFI[0]]["why"] == "new this hour"
    assert fresh[NEW_SCIFI[0]]["link"] == f"https://news.example/{NEW_SCIFI[0]}"
    assert "fresh" in anonymous["cascade"]["pipeline"]

    # A sci-fi reader gets the sci-fi story first among the fresh ones (ranked by taste).
    session = uuid.uuid4().hex
    for film in ("sci-0", "sci-1", "sci-3"):
        r = client.post("/interact", json={"session": session, "item_id": film, "event": "like"})
        assert r.status_code == 200, r.text
    ranked = [i["item_id"] for i in feed(client, session, k=8)["items"] if i["stage"] == "fresh"]
    assert ranked[0] == NEW_SCIFI[0]

    # /interact accepts a fresh story; once read it is not offered again, and it counts as history.
    r = client.post("/interact", json={"session": session, "item_id": NEW_SCIFI[0], "event": "click"})
    assert r.status_code == 200 and r.json()["applied"] is True
    after = feed(client, session, k=8)
    assert NEW_SCIFI[0] not in [i["item_id"] for i in after["items"]]
    assert after["session_events"] == 4


def test_a_corrupt_delta_is_refused_and_the_live_state_stays(
    catalogue: Catalogue, client: httpx.Client
) -> None:
    good = add_news(catalogue, [("news-western", "A new western: a sheriff rides into a town", "Western")])
    assert good is not None
    wait_for(lambda: client.get("/health").json()["delta_seq"] == good, what="the good delta")
    store = ArtifactStore(catalogue.settings.bundles_dir)
    root = delta_dir(store, str(store.current_version()))
    # The next delta reaches the disk damaged (a bad disk, a bad copy): its vectors no longer
    # match the checksum its manifest recorded.
    bad = root / f"{good + 1:06d}"
    shutil.copytree(root / f"{good:06d}", bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    (bad / MANIFEST).write_text(json.dumps({**manifest, "seq": good + 1}))
    vectors = bad / VECTORS
    vectors.write_bytes(vectors.read_bytes()[:-8] + np.float32([1, 2]).tobytes())
    (root / LATEST).write_text(f"{good + 1}\n")
    time.sleep(1.0)  # ten reload checks
    health = client.get("/health").json()
    assert health["delta_seq"] == good and health["status"] == "ok"
    assert client.get("/items/news-western").status_code == 200
    # The next good delta (cumulative) goes live over the refused one.
    fixed = add_news(catalogue, [("news-horror", "A new horror film: a haunted hotel in winter", "Horror")])
    assert fixed == good + 2
    wait_for(lambda: client.get("/health").json()["delta_seq"] == fixed, what="the delta after the bad one")
    assert client.get("/items/news-horror").status_code == 200
    assert client.get("/items/news-western").status_code == 200


def test_a_new_bundle_supersedes_the_deltas(tmp_path: Path) -> None:
    catalogue = build_catalogue(tmp_path)
    store = ArtifactStore(catalogue.settings.bundles_dir)
    with serve(catalogue.settings) as (_, client):
        seq = add_news(catalogue, [NEW_SCIFI])
        wait_for(lambda: client.get("/health").json()["delta_seq"] == seq, what="the delta")
        con = connect(catalogue.settings.warehouse_path)
        try:
            version = publish_with_pool(store, con, catalogue.data, catalogue.vectors, None)
        finally:
            con.close()
        wait_for(lambda: client.get("/health").json()["bundle_version"] == version, what="the new bundle")
        health = client.get("/health").json()
        assert health["delta_seq"] is None and health["fresh_items"] == 0
        assert client.get(f"/items/{NEW_SCIFI[0]}").status_code == 404
