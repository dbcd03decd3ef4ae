"""The nightly flow ingests what serving logged as impressions, on a real slice of MovieLens-100K
against a temporary Prefect API: once by request id, with clicks from positives only."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pytest

from serving.events import Event, EventLog
from serving.impressions import ImpressionLog
from storage.settings import Settings

pytestmark = pytest.mark.slow  # whole flows on a Prefect API


def test_nightly_ingests_impressions_once_and_derives_training_rows(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    from flows.nightly import nightly_refresh

    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "ml-slice",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "itemknn-recency"},  # one model: not about choosing one
    }
    settings = Settings(**overrides)
    shown_at = time.time() - 2 * settings.events.impression_click_window_s  # its window has closed
    ids = [str(i) for i in range(1, 11)]
    log = ImpressionLog(settings.impressions_dir, flush_s=60.0)
    log.log(("req-flow-1", shown_at, "/recommend/{user_id}", "s-flow", "7", ids, list(range(5)),
             ["ranker"] * 5, "itemknn-recency", "v0", None, "personalized"))  # fmt: skip
    log.log(("req-anon", shown_at, "/recommend", None, None, ids, [5, 6], ["ranker"] * 2,
             "itemknn-recency", "v0", None, "personalized"))  # fmt: skip
    log.close()
    events = EventLog(settings.events_dir)
    for item, event in [("2", "click"), ("3", "skip"), ("3", "skip")]:
        events.append(Event.new(session="s-flow", user_id="7", item_id=item, event=event, ts=shown_at + 30))  # type: ignore[arg-type]
    events.close()

    def stored() -> tuple[list[tuple], list[tuple]]:
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            served = con.execute(
                "SELECT request_id, endpoint, len(item_ids), derived FROM served_impressions ORDER BY request_id"
            ).fetchall()
            rows = con.execute(
                "SELECT impression_id, user_id, shown, clicked FROM impressions WHERE source = 'served'"
            ).fetchall()
        return served, rows

    nightly_refresh(overrides=overrides)
    served, rows = stored()
    assert served == [("req-anon", "/recommend", 2, False), ("req-flow-1", "/recommend/{user_id}", 5, True)]
    assert rows == [("req-flow-1", "7", ids[:5], [False, True, False, False, False])], "a skip is no click"
    with get_client(sync_client=True) as client:
        assert "impression-log-ingestion" in {a.key for a in client.read_artifacts()}

    nightly_refresh(overrides=overrides)
    assert stored() == (served, rows), "a second night adds nothing"
