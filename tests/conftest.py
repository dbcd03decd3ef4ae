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


# Test files that take longest (seconds each took in `pytest -n 2 --dist loadfile -v` on 2 busy
# cores, most of it waiting on subprocesses, servers and Prefect), longest first.
LONGEST_FILES = (
    "test_reliability.py",  # 222 s: the reliability harness, short settings
    "test_demo_command.py",  # 168 s: `recflow demo`, both catalogues
    "test_deployments.py",  # 149 s
    "test_two_tower.py",  # 142 s
    "test_flow_train.py",  # 141 s
    "test_flow_nightly.py",  # 136 s
    "test_serving_hardening.py",  # 113 s
    "test_serving_cascade.py",  # 99 s
    "test_wheel.py",  # 92 s: builds and installs the wheel
    "test_prefect_home.py",  # 83 s
    "test_serving.py",  # 77 s
    "test_scrape.py",  # 71 s
    "test_tune.py",  # 69 s
    "test_flow_gate.py",  # 62 s
    "test_harvest.py",  # 61 s
    "test_simulate.py",  # 59 s
    "test_nrms.py",  # 57 s
    "test_flow_fresh.py",  # 53 s
    "test_embedding.py",  # 52 s
    "test_flow_impressions.py",  # 50 s
    "test_cluster.py",  # 46 s
    "test_nrms_pipeline.py",  # 43 s
    "test_serving_browser.py",  # 39 s
    "test_embedding_precision.py",  # 36 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first, the rest in their usual order after them. With `make test`'s
    `--dist loadfile --no-loadscope-reorder`, xdist hands files to workers in this order, so
    the last minutes are short files spread over every worker rather than one long file on
    one (xdist's own order, most tests first, ran the one-test end-to-end files last)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
