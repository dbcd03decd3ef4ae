"""The news schedules' order on a real Prefect API while the service runs (issue 14, item 3).

scrape → harvest → nightly build the first bundle; then, with the service up and no nightly:
a scrape's new stories are servable within seconds (``/items``, ``/interact``, the feed's
freshness slot), and a morning harvest's pool is the pool ``/feed`` serves right after it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from demo.feeds import FEED_UPDATE_SECONDS, DemoFeedServer
from storage.settings import Settings
from storage.warehouse import connect
from tests.serving_fixtures import serve, wait_for

pytestmark = pytest.mark.slow  # flows on a Prefect API, a nightly, a server


def test_scraped_stories_and_the_morning_pool_go_live_without_a_nightly(
    prefect_api: None, tmp_path: Path
) -> None:
    from flows.harvest import morning_harvest
    from flows.nightly import nightly_refresh
    from flows.scrape import scrape_feeds

    # The outlets' clock lags the real one by a batch, so the batch published below is dated in
    # the past: the harvest takes only stories dated up to ten minutes ahead of the real clock.
    clock = [datetime.now(UTC) - timedelta(seconds=FEED_UPDATE_SECONDS + 60)]
    with DemoFeedServer(port=0, days=1, clock=lambda: clock[0]) as srv:
        overrides = {
            "home": str(tmp_path),
            "feeds": {"feeds": srv.feed_configs(), "allow_hosts": ["127.0.0.1"]},
            "harvest": {"pool_size": 30},
            "model": {"name": "itemknn-recency"},  # one cheap model: the test is about deltas
        }
        first = scrape_feeds(catalogue="news", overrides=overrides)
        assert first.delta is not None and first.delta.startswith("no delta published")  # no bundle yet
        old_pool = morning_harvest(catalogue="news", overrides=overrides)
        nightly_refresh(overrides={"catalogue": "news", **overrides})
        settings = Settings(catalogue="news", **{**overrides, "serving": {"reload_check_s": 0.1}})
        with serve(settings) as (_, client):
            bundle = client.get("/health").json()
            assert bundle["delta_seq"] is None
            with connect(settings.warehouse_path) as con:
                known = {r[0] for r in con.execute("SELECT item_id FROM items").fetchall()}

            # The demo outlets publish their next batch; the hourly scrape fetches it.
            clock[0] += timedelta(seconds=FEED_UPDATE_SECONDS + 60)
            scraped = scrape_feeds(catalogue="news", overrides=overrides)
            assert scraped.items_added > 0 and scraped.delta is not None
            with connect(settings.warehouse_path) as con:
                new = [r[0] for r in con.execute("SELECT item_id FROM items").fetchall() if r[0] not in known]
            assert len(new) == scraped.items_added
            wait_for(lambda: client.get("/health").json()["delta_seq"] is not None, what="the scrape's delta")
            health = client.get("/health").json()
            assert health["bundle_version"] == bundle["bundle_version"]  # no nightly ran
            for item_id in new:
                assert client.get(f"/items/{item_id}").status_code == 200
            listed = client.get("/feed", params={"k": 200, "session": uuid.uuid4().hex}).json()["items"]
            assert set(new) <= {i["item_id"] for i in listed if i["stage"] == "fresh"}
            reader = uuid.uuid4().hex
            r = client.post("/interact", json={"session": reader, "item_id": new[0], "event": "click"})
            assert r.status_code == 200, r.text

            # The morning harvest: its pool is what /feed serves as soon as the flow returns.
            pool = morning_harvest(catalogue="news", overrides=overrides)
            assert {r.item_id for r in pool.rows} != {r.item_id for r in old_pool.rows}
            wait_for(
                lambda: client.get("/health").json()["delta_seq"] != health["delta_seq"],
                what="the harvest's delta",
            )
            answer = client.get("/feed", params={"k": 200, "session": uuid.uuid4().hex}).json()
            assert answer["pool_date"] == str(pool.pool_date)
            served = [i["item_id"] for i in answer["items"] if i["stage"] != "fresh"]
            assert set(served) <= {r.item_id for r in pool.rows}
            assert set(served) - {r.item_id for r in old_pool.rows}  # the new pool, not the bundle's
            assert len(served) + answer["cascade"]["duplicates_removed"] == len(pool.rows)
