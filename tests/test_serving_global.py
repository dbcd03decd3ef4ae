"""``update_mode: global`` (issue 14, item 6), through real uvicorn servers on one catalogue.

Reader A's clicks lift an item in reader B's feed (and say "trending"); in ``private`` mode
they do not; the lift is read back from the event log by a restarted service; the counts
decay with time and stay within ``global_max_items``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.events import Event, EventLog
from serving.global_signals import GlobalSignals
from serving.impressions import ImpressionLog
from storage.settings import ServingSettings, Settings
from tests.serving_fixtures import Catalogue, build_catalogue, serve, wait_for

LIFTED = "wes-2"
"""A western near the end of today's pool: a new reader's first five never hold it unaided."""


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("global"))


def mode(catalogue: Catalogue, update_mode: str, **serving: Any) -> Settings:
    """The catalogue's settings in ``update_mode``, trending weighed heavily enough to show."""
    knobs = {"update_mode": update_mode, "global_trending_weight": 2.0, "global_poll_s": 0.05, **serving}
    return catalogue.settings.model_copy(
        update={"serving": catalogue.settings.serving.model_copy(update=knobs)}
    )


def new_reader_feed(client: httpx.Client) -> list[dict[str, Any]]:
    """A new reader's first five (no cookie, no exploration slot: the list is deterministic)."""
    with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
        body = fresh.get("/feed", params={"k": 5, "explore": "false"}).json()
    assert body["strategy"] == "fresh_popular_fallback"
    return list(body["items"])


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [it["item_id"] for it in items]


def click(client: httpx.Client, session: str, item: str, *events: str) -> None:
    for event in events:
        answer = client.post("/interact", json={"item_id": item, "event": event, "session": session})
        assert answer.status_code == 200, answer.text


def test_clicks_lift_an_item_for_other_readers_only_in_global_mode(catalogue: Catalogue) -> None:
    with serve(mode(catalogue, "private")) as (_app, client):
        assert LIFTED not in ids(new_reader_feed(client))
        click(client, "reader-a", LIFTED, "click", "like")
        answer = client.post("/interact", json={"item_id": LIFTED, "event": "share", "session": "reader-a"})
        assert answer.json()["update_mode"] == "private"
        assert LIFTED not in ids(new_reader_feed(client)), "private: A's clicks stay A's"
    # A global service started afterwards replays the log: B sees what A liked, and why.
    with serve(mode(catalogue, "global")) as (_app, client):
        items = new_reader_feed(client)
        assert LIFTED in ids(items)
        lifted = items[ids(items).index(LIFTED)]
        assert lifted["why"] == "trending now in Western"
        # Skips never make an item trend.
        for n in range(5):
            click(client, f"skipper-{n}", "hor-4", "skip")
        # A's next clicks, while the service runs, lift another item for the next reader.
        assert "rom-4" not in ids(new_reader_feed(client))
        click(client, "reader-a2", "rom-4", "click", "like", "share", "click")
        wait_for(lambda: "rom-4" in ids(new_reader_feed(client)), what="rom-4 lifted for a new reader")
        assert "hor-4" not in ids(new_reader_feed(client))
        answer = client.post("/interact", json={"item_id": "cri-2", "event": "click", "session": "reader-c"})
        assert answer.json()["update_mode"] == "global" and answer.json()["applied"] is True
    # Restarted: the first answer already has the lift (the window is replayed before serving).
    with serve(mode(catalogue, "global")) as (_app, client):
        assert {"rom-4", LIFTED} <= set(ids(new_reader_feed(client)))


def test_a_reader_with_history_gets_the_lift_in_the_cascade(catalogue: Catalogue) -> None:
    """A known user's personalised list (``/recommend``) is lifted too, not only the fallback."""
    with serve(mode(catalogue, "private")) as (_app, client):
        plain = client.get("/recommend/u3", params={"k": 5, "explore": "false"}).json()
        click(client, "reader-h", LIFTED, "click", "like")  # logged in any mode
    with serve(mode(catalogue, "global", global_trending_weight=5.0)) as (_app, client):
        lifted = client.get("/recommend/u3", params={"k": 5, "explore": "false"}).json()
    assert plain["strategy"] == lifted["strategy"] == "personalized"
    assert LIFTED not in ids(plain["items"]), "u3 reads crime and horror, not westerns"
    assert LIFTED in ids(lifted["items"]), ids(lifted["items"])


def test_counts_stay_within_the_memory_bound(catalogue: Catalogue) -> None:
    with serve(mode(catalogue, "global", global_max_items=3)) as (_app, client):
        for item in ("sci-1", "ani-1", "rom-1", "cri-1", "hor-1", "wes-1"):
            click(client, "reader-many", item, "click")

        def held() -> float:
            match = re.search(r"^recflow_global_items (\S+)$", client.get("/metrics").text, re.MULTILINE)
            assert match
            return float(match.group(1))

        wait_for(lambda: held() == 3.0, what="three items held")
        assert held() <= 3.0


def test_counts_decay_by_their_half_life_and_shows_make_a_rate(tmp_path: Path) -> None:
    now = 1_795_420_800.0
    events = EventLog(tmp_path / "events", fsync=False)
    for ts, item, event in [
        (now - 3600.0, "old", "click"),  # one half-life ago
        (now - 10.0, "new", "click"),
        (now - 10.0, "new", "skip"),  # a skip is not a positive
        (now - 20.0, "new", "dwell"),  # no duration: a weak negative
        (now - 5 * 86400.0, "ancient", "click"),  # beyond the window
    ]:
        events.append(Event.new(session="s", item_id=item, event=event, ts=ts, dwell_s=None))  # type: ignore[arg-type]
    events.close()
    impressions = ImpressionLog(tmp_path / "events" / "impressions", flush_s=60.0)
    item_ids = ["old", "new", "never"]
    for i in range(4):
        impressions.log((f"r{i}", now - 5.0, "/feed", "s", None, item_ids, [1, 2], ["ranker"] * 2,
                         "m", "v", None, "personalized"))  # fmt: skip
    impressions.close()
    serving = ServingSettings(global_half_life_h=1.0, global_window_h=48.0, global_ctr_prior=0.0)
    signals = GlobalSignals(tmp_path / "events", tmp_path / "events" / "impressions", serving)
    assert signals.poll(now)
    snap = signals.snapshot
    got = dict(zip(snap.item_ids, snap.positives.tolist(), strict=True))
    assert set(got) == {"old", "new", "never"}, "ancient is outside the window"
    assert got["old"] == pytest.approx(0.5, rel=1e-6)
    assert got["new"] == pytest.approx(math.exp(-10.0 / (3600.0 / math.log(2))), rel=1e-6)
    shows = dict(zip(snap.item_ids, snap.shows.tolist(), strict=True))
    assert shows["never"] == pytest.approx(4.0, rel=1e-3) and shows["old"] == 0.0
    trending = dict(zip(snap.item_ids, snap.trending.tolist(), strict=True))
    assert trending["new"] == 1.0 and 0 < trending["old"] < 1.0 and trending["never"] == 0.0
    ctr = dict(zip(snap.item_ids, snap.ctr.tolist(), strict=True))
    assert ctr["old"] == 1.0, "clicked every time it counted as shown (no prior)"
    assert ctr["never"] == 0.0 and 0 < ctr["new"] < 1.0
