"""Past one machine: export and embedding fan out over a running Dask cluster through Prefect.

A real two-worker ``distributed.LocalCluster`` (processes on 127.0.0.1) plays the team's
cluster; the flows get only its address (``cluster.dask_address``), as they would a remote
scheduler's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.cluster import dask_runner, fanout_configured
from flows.export import shard_bounds
from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import connect
from tasks.export import export_recommendations
from tasks.load import upsert_items
from tasks.publish import publish_bundle
from tasks.training import SplitData, fit_for_serving


def test_shards_cover_every_user_once_in_order() -> None:
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]  # never an empty shard
    assert shard_bounds(7, 1) == [(0, 7)]
    for n, k in [(1, 1), (1000, 7), (31, 31)]:
        bounds = shard_bounds(n, k)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in itertools.pairwise(bounds))


def test_no_cluster_configured_means_no_fanout() -> None:
    assert dask_runner(Settings()) is None and not fanout_configured(Settings())
    assert fanout_configured(Settings(cluster={"dask_address": "tcp://127.0.0.1:8786"}))
    assert dask_runner(Settings(cluster={"dask_workers": 2})) is not None
    with pytest.raises(ValueError, match="dask_workers"):
        Settings(cluster={"dask_workers": -1})


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    """Two worker processes with one thread each on 127.0.0.1; yields the scheduler address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def small_bundle(home: Path) -> Settings:
    """An ItemKNN bundle of 40 items and 30 users under ``home/c``."""
    settings = Settings(home=home, catalogue="c")
    n_items, n_users = 40, 30
    rng = np.random.default_rng(5)
    picks = [rng.choice(n_items, 6, replace=False) for _ in range(n_users)]
    data = SplitData(
        "leave_last_out",
        np.array([f"u{u}" for u in range(n_users)], dtype=object),
        np.array([f"m{i}" for i in range(n_items)], dtype=object),
        [p[:4].astype(np.int64) for p in picks],
        [p[4:5].astype(np.int64) for p in picks],
        [p[5:].astype(np.int64) for p in picks],
    )
    with connect(settings.warehouse_path) as con:
        for i in range(n_items):
            con.execute("INSERT INTO items (item_id, title) VALUES (?, ?)", [f"m{i}", f"Film {i}"])
        model = fit_for_serving(data, "itemknn", {"neighbors": 5})
        manifest = {"model": {"name": "itemknn", "params": model.params()}, "metrics": {"valid": {}}}
        assert publish_bundle(ArtifactStore(settings.bundles_dir), con, data, model, manifest).version
    return settings


@pytest.mark.slow  # a Dask cluster and Prefect flows
def test_export_fans_out_over_the_cluster_and_writes_the_one_process_file(
    prefect_api: None, dask_cluster: str, tmp_path: Path
) -> None:
    from distributed import Client, get_task_stream

    from flows.export import export_recommendations_flow

    settings = small_bundle(tmp_path)
    alone = tmp_path / "alone.parquet"
    export_recommendations(ArtifactStore(settings.bundles_dir), alone, k=7, progress=False)
    fanned = tmp_path / "exports" / "top.parquet"
    overrides = {"home": str(tmp_path), "cluster": {"dask_address": dask_cluster, "export_shards": 4}}
    with Client(dask_cluster) as client, get_task_stream(client) as stream:
        summary = export_recommendations_flow(fanned, k=7, batch_size=3, catalogue="c", overrides=overrides)
        workers = set(client.scheduler_info()["workers"])
    assert pq.read_table(fanned).equals(pq.read_table(alone))  # row for row, shard order = user order
    assert (summary.users, summary.rows, summary.k) == (30, 30 * 7, 7)
    assert len(stream.data) >= 4  # the four shards ran as tasks on the cluster's workers
    assert {t["worker"] for t in stream.data} <= workers and len(workers) == 2
    assert sorted(p.name for p in fanned.parent.iterdir()) == ["top.parquet"]  # no parts left over


@pytest.mark.slow  # MiniLM on each worker, a Dask cluster and a Prefect flow
def test_embedding_fans_out_over_the_cluster(prefect_api: None, dask_cluster: str, tmp_path: Path) -> None:
    from distributed import Client, get_task_stream

    from flows.embed import run_embed_items

    overrides = {
        "home": str(tmp_path),
        "catalogue": "dask",
        "embedding": {"fanout_batch": 1},
        "cluster": {"dask_address": dask_cluster},
    }
    items = pd.DataFrame(
        {
            "item_id": ["b0", "b1", "b2"],
            "title": ["Heat", "Alien", "Fargo"],
            "categories": [["Crime"], ["Horror"], ["Crime", "Comedy"]],
            "year": pd.array([1995, 1979, 1996], dtype="Int64"),
            "description": [None, None, None],
            "url": [None, None, None],
            "row_number": [1, 2, 3],
        }
    )
    with connect(Settings(**overrides).warehouse_path) as con:
        upsert_items(con, items, "test")
    with Client(dask_cluster) as client, get_task_stream(client) as stream:
        summary = run_embed_items(overrides)
    assert (summary.encoded, summary.cached) == (3, 0)
    assert len(stream.data) >= 3  # one encode-batch task per text, on the cluster
    with connect(Settings(**overrides).warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM item_vectors").fetchone() == (3,)
