"""Shared fixtures: the fetched MovieLens-100K copy and small real slices of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The fetched MovieLens-100K (RecBole atomic files); fetched once if missing.

    Never committed: MovieLens may not be redistributed, so tests read the local copy.
    """
    from tasks.demo_data import fetch_movielens_100k

    return fetch_movielens_100k(REPO / "var" / "data" / "ml-100k")


@pytest.fixture(scope="session")
def ml100k_slice(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real slice of MovieLens-100K: the ratings of the first 120 users, all items."""
    out = tmp_path_factory.mktemp("ml-slice")
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    kept = [r for r in rows if int(r.split("\t", 1)[0]) <= 120]
    (out / "ml-slice.inter").write_text("\n".join([header, *kept]) + "\n")
    (out / "ml-slice.item").write_text((ml100k_dir / "ml-100k.item").read_text())
    return out


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect API for every flow test (it takes ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
