"""Impressions (issue 14, item 5): every ``/feed`` and ``/recommend`` answer is logged, through
a real uvicorn server, with its request id, positions, model and bundle version; the writer
batches without blocking answers, drops (and counts) rather than grows, and several writers
share one file without tearing lines."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from serving.events import read_events
from serving.impressions import ImpressionLog, impression_line
from tests.serving_fixtures import Catalogue, build_catalogue, serve, wait_for


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("impressions"), serving={"impression_flush_s": 0.05})


def logged(directory: Path) -> dict[str, dict]:
    """Every complete impression line under ``directory`` by request id."""
    out: dict[str, dict] = {}
    for path in sorted(directory.glob("*.jsonl")):
        for raw in path.read_bytes().split(b"\n")[:-1]:
            record = json.loads(raw)
            out[record["request_id"]] = record
    return out


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_each_answer_is_logged_with_positions_model_and_version(catalogue: Catalogue) -> None:
    settings = catalogue.settings
    with serve(settings) as (_app, client):
        feed = client.get("/feed", params={"k": 5, "session": "imp-reader-1"}).json()
        user = client.get("/recommend/u0", params={"k": 4, "session": "imp-reader-1"}).json()
        adhoc = client.post("/recommend", json={"item_ids": ["sci-0", "sci-1", "sci-2"], "k": 3}).json()
        answers = {"/feed": feed, "/recommend/{user_id}": user, "/recommend": adhoc}
        ids = {a["request_id"] for a in answers.values()}
        assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
        wait_for(lambda: ids <= set(logged(settings.impressions_dir)), what="the three impressions")
        text = client.get("/metrics").text
    records = logged(settings.impressions_dir)
    for endpoint, answer in answers.items():
        record = records[answer["request_id"]]
        assert record["endpoint"] == endpoint
        assert record["bundle_version"] == answer["bundle_version"]
        assert record["strategy"] == answer["strategy"]
        assert record["model"] == "itemknn" and "delta_seq" in record
        assert record["items"] == [
            {"item_id": it["item_id"], "position": it["rank"], "stage": it["stage"]} for it in answer["items"]
        ]
        assert [it["position"] for it in record["items"]] == list(range(1, len(answer["items"]) + 1))
        assert isinstance(record["ts"], float)
    assert records[feed["request_id"]]["session"] == "imp-reader-1"
    assert records[user["request_id"]]["user_id"] == "u0"
    assert records[user["request_id"]]["session"] == "imp-reader-1"
    assert records[adhoc["request_id"]]["session"] is None and records[adhoc["request_id"]]["user_id"] is None
    assert metric(text, "recflow_impressions_written_total") >= 3
    assert metric(text, "recflow_impressions_dropped_total") == 0
    # Impressions never leak into the event log that the nightly reads as interactions.
    assert read_events(settings.events_dir) == []


def test_a_shutdown_flushes_what_is_queued(catalogue: Catalogue) -> None:
    """A flush interval far longer than the test: only the shutdown can have written them."""
    settings = catalogue.settings.model_copy(
        update={"serving": catalogue.settings.serving.model_copy(update={"impression_flush_s": 60.0})}
    )
    before = set(logged(settings.impressions_dir))
    with serve(settings) as (_app, client):
        ids = {client.get("/feed", params={"k": 3}).json()["request_id"] for _ in range(5)}
        assert not ids & set(logged(settings.impressions_dir)), "nothing written before the flush"
    after = set(logged(settings.impressions_dir))
    assert ids <= after - before


def test_impressions_can_be_turned_off(catalogue: Catalogue) -> None:
    settings = catalogue.settings.model_copy(
        update={"serving": catalogue.settings.serving.model_copy(update={"impressions": False})}
    )
    before = set(logged(settings.impressions_dir))
    with serve(settings) as (_app, client):
        answer = client.get("/feed", params={"k": 3}).json()
        assert re.fullmatch(r"[0-9a-f]{32}", answer["request_id"]), "the id is returned either way"
    assert set(logged(settings.impressions_dir)) == before


def pending(n: int, tag: str) -> list:
    ids = [f"item-{i}" for i in range(20)]
    return [
        (f"{tag}{i:06d}", 1_795_420_800.0 + i, "/feed", "s", None, ids, list(range(10)), ["ranker"] * 10,
         "itemknn", "v1", None, "personalized")
        for i in range(n)
    ]  # fmt: skip


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = ImpressionLog(tmp_path, max_queue=3, flush_s=60.0, on_dropped=dropped.append)
    accepted = [log.log(p) for p in pending(5, "q")]  # the writer is not running: nothing drains
    assert accepted == [True, True, True, False, False]
    assert log.dropped == 2 and sum(dropped) == 2
    assert log.flush() == 3
    log.close()
    assert sorted(logged(tmp_path)) == ["q000000", "q000001", "q000002"]


def test_workers_sharing_a_file_never_tear_a_line(tmp_path: Path) -> None:
    """Two writers (as two uvicorn workers: separate descriptors, O_APPEND) flushing batches
    at the same time: every line is whole and none is lost."""
    logs = [ImpressionLog(tmp_path, max_queue=100_000, flush_s=0.001) for _ in range(2)]

    def work(log: ImpressionLog, tag: str) -> None:
        for chunk in range(20):
            for p in pending(200, f"{tag}{chunk:02d}-"):
                log.log(p)
            log.flush()

    threads = [threading.Thread(target=work, args=(log, tag)) for log, tag in zip(logs, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1, "one file per day, shared"
    lines = files[0].read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == 2 * 20 * 200
    assert all(json.loads(raw)["items"][9]["position"] == 10 for raw in lines[:-1])
    assert impression_line(pending(1, "x")[0]).endswith(b"\n")


def test_a_tail_another_worker_is_still_writing_is_not_torn(tmp_path: Path) -> None:
    """A worker that opens the day's file while another's append is half visible must not take
    the cut tail for a crash (and move to ``.1``); a tail that stays cut is torn."""
    import os
    import time

    from serving.events import TORN_TAIL_SETTLE_S, _torn_tail

    path = tmp_path / "20261123.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": ')
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        assert _torn_tail(fd), "nobody finishes this line: torn"

        def finish() -> None:
            time.sleep(TORN_TAIL_SETTLE_S / 2)
            with path.open("ab") as f:
                f.write(b"2}\n")

        writer = threading.Thread(target=finish)
        writer.start()
        assert not _torn_tail(fd), "the line is finished while we look: not torn"
        writer.join()
    finally:
        os.close(fd)
