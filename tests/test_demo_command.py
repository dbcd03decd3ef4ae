"""``recflow demo`` (what ``make demo`` runs) on a temporary home: MovieLens and news prepared
by their flows, served by one process each, both stopped by Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow  # two nightlies, a scrape, a harvest and two services

REPO = Path(__file__).resolve().parents[1]


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _free_pair() -> int:
    """A port p with p + 1 free too (the demo serves catalogue i on p + i)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65535 and _free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def _small_movielens(source: Path, target: Path) -> None:
    """ml-100k's files under their own names (so the demo's fetch finds them), first 120 users."""
    target.mkdir(parents=True)
    lines = (source / "ml-100k.inter").read_text().splitlines()
    kept = [r for r in lines[1:] if int(r.split("\t", 1)[0]) <= 120]
    (target / "ml-100k.inter").write_text("\n".join([lines[0], *kept]) + "\n")
    for name in ("ml-100k.item", "ml-100k.user"):
        shutil.copy(source / name, target / name)


def test_demo_serves_movielens_and_news_until_ctrl_c(ml100k_dir: Path, tmp_path: Path) -> None:
    _small_movielens(ml100k_dir, tmp_path / "var" / "data" / "ml-100k")
    port, feed_port = _free_pair(), _free_pair()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RECFLOW_", "PREFECT_HOME", "PREFECT_API_URL"))
    }
    env |= {
        "PYTHONPATH": str(REPO),
        "RECFLOW_FEEDS__DEMO_PORT": str(feed_port),
        "RECFLOW_MODEL__NAME": "itemknn-recency",  # one cheap model: not about choosing one
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = tmp_path / "demo.log"
    cmd = [sys.executable, "-m", "deployments.cli", "demo", "--port", str(port), "--feed-days", "1"]
    demo = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    movielens = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    news = httpx.Client(base_url=f"http://127.0.0.1:{port + 1}", timeout=30)
    try:
        deadline = time.monotonic() + 1500
        while "Ctrl-C stops everything" not in log.read_text():
            assert demo.poll() is None, f"recflow demo exited {demo.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, (
                f"recflow demo not serving in time:\n{log.read_text()[-4000:]}"
            )
            time.sleep(2)

        assert movielens.get("/health").json()["catalogue"] == "movielens-100k"
        assert news.get("/health").json()["catalogue"] == "news"
        assert not _free(feed_port)  # the demo feeds keep publishing in the background
        recommended = movielens.get("/recommend/1", params={"k": 3}).json()
        assert [item["rank"] for item in recommended["items"]] == [1, 2, 3]

        feed = news.get("/feed", params={"k": 5}).json()
        assert len(feed["items"]) == 5
        for story in feed["items"]:
            assert story["title"] and story["outlet"] and story["why"], story
            assert story["link"].startswith("http"), story
            assert datetime.fromisoformat(story["published"]).tzinfo is not None, story
        # Each service reads only its own bundle: a news story is unknown to MovieLens.
        assert movielens.get(f"/items/{feed['items'][0]['item_id']}").status_code == 404

        demo.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.wait(timeout=90) == 0, log.read_text()[-4000:]
        assert _free(port) and _free(port + 1) and _free(feed_port), "a child outlived recflow demo"
    finally:
        movielens.close()
        news.close()
        if demo.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
