"""The news catalogue end to end on a real Prefect API: scrape → harvest → nightly bundle."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pytest

from demo.feeds import DemoFeedServer
from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import connect

pytestmark = pytest.mark.slow  # the news nightly on a Prefect API


def test_news_nightly_publishes_items_vectors_index_and_pool(prefect_api: None, tmp_path: Path) -> None:
    from flows.harvest import morning_harvest
    from flows.nightly import nightly_refresh
    from flows.scrape import scrape_feeds

    with DemoFeedServer(port=0, days=1) as srv:
        overrides = {
            "home": str(tmp_path),
            "feeds": {"feeds": srv.feed_configs(), "allow_hosts": ["127.0.0.1"]},
            "harvest": {"pool_size": 30},
        }
        scraped = scrape_feeds(catalogue="news", overrides=overrides)
    assert scraped.items_added > 300 and scraped.demo_server is None
    pool = morning_harvest(catalogue="news", overrides=overrides)
    assert len(pool.rows) == 30

    settings = Settings(catalogue="news", home=tmp_path)
    assert settings.source.kind == "feeds"
    first = nightly_refresh(overrides={"catalogue": "news", **overrides})
    bundle = ArtifactStore(settings.bundles_dir).root / str(first.live)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["name"] == "popularity"  # no interactions yet: cold start
    with duckdb.connect(str(bundle / "catalog.duckdb"), read_only=True) as cat:
        n_items = cat.execute("SELECT count(*) FROM items").fetchall()[0][0]
        served_pool = [r[0] for r in cat.execute("SELECT item_id FROM daily_pool ORDER BY rank").fetchall()]
    assert n_items == scraped.items_added
    assert served_pool == [r.item_id for r in pool.rows]
    assert np.load(bundle / "item_vectors.npy").shape == (n_items, 384)
    assert manifest["index"]["n"] == n_items

    # Serving logged some events: the next nightly ingests them (once) and publishes again.
    events = settings.events_dir
    events.mkdir(parents=True)
    lines = [
        {"event_id": uuid.uuid4().hex, "ts": 1.0e9 + i, "session": f"s{i % 3}", "user_id": None,
         "item_id": pool.rows[i].item_id, "event": "click", "dwell_s": None}
        for i in range(12)
    ]  # fmt: skip
    (events / "w1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    second = nightly_refresh(overrides={"catalogue": "news", **overrides})
    assert second.version is not None and second.version != first.version
    nightly_refresh(overrides={"catalogue": "news", **overrides})
    with connect(settings.warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 12
        assert con.execute("SELECT count(DISTINCT user_id) FROM interactions").fetchall()[0][0] == 3
