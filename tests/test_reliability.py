"""The reliability harness itself (``make test-reliability``), with short settings: two kills
of the service under ``/interact`` load, three bundle swaps under ``/recommend`` load and a
20-second soak, on real processes. Each scenario must pass, print its line and land in the
JSON report; a harness that stopped counting (no acknowledged events, no requests) fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reliability_harness_short_run(tmp_path: Path) -> None:
    out = tmp_path / "reliability.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "benchmarks.reliability",
        "--only", "kill9-service-under-interact", "hot-swap-under-load", "soak",
        "--kills", "2", "--events-between-kills", "200", "--swaps", "3",
        "--soak-seconds", "20", "--soak-rate", "100", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    by_name = {s["name"]: s for s in report["scenarios"]}
    assert set(by_name) == {"kill9-service-under-interact", "hot-swap-under-load", "soak"}
    assert report["passed"] and all(s["passed"] for s in by_name.values())
    for name in by_name:
        assert any(line.startswith(name) and " PASS " in line for line in done.stdout.splitlines())

    kill9 = by_name["kill9-service-under-interact"]["details"]
    assert kill9["kills"] == 2 and kill9["acknowledged"] >= 600 and kill9["lost_count"] == 0
    swap = by_name["hot-swap-under-load"]["details"]
    assert swap["failed"] == 0 and swap["requests"] > 0
    assert all(s["served"] for s in swap["swaps"]) and len(swap["swaps"]) == 3
    soak = by_name["soak"]["details"]
    assert soak["failed"] == 0 and soak["sent"] == 2000
    assert abs(soak["rss_drift"]) <= 0.10 and len(soak["rss_samples"]) >= 3
