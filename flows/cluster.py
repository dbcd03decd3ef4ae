"""Past one machine: the Prefect task runner the fan-out stages (embedding batches, export
shards) run on, from ``settings.cluster``.

One place decides it, so every entry point (the ``embed-items`` and ``export-recommendations``
flows and deployments, the nightly's embedding step, ``recflow embed`` and ``recflow export``)
fans out the same way: over a running Dask scheduler when ``cluster.dask_address`` is set,
over a local cluster of ``cluster.dask_workers`` processes otherwise, and not at all (the
flow's own process, sequentially) when neither is. The stages ship plain data to the workers
and get plain data back, so nothing in them depends on where a task runs; what they share is
the filesystem under ``home`` (bundles are read there, export parts written there).
"""

from __future__ import annotations

from typing import Any

from storage.settings import Settings


def fanout_configured(settings: Settings, local_workers: int = 0) -> bool:
    """Whether the fan-out stages should run on Dask: an address, or local workers (the
    cluster's, or a stage's own older setting such as ``embedding.dask_workers``)."""
    cluster = settings.cluster
    return bool(cluster.dask_address) or cluster.dask_workers > 0 or local_workers > 0


def dask_runner(settings: Settings, local_workers: int = 0) -> Any:
    """prefect-dask's ``DaskTaskRunner`` for the configured cluster, or None (no fan-out).

    With an address it connects to that scheduler; otherwise it starts a local cluster of
    ``cluster.dask_workers`` (else ``local_workers``) processes with one thread each (the
    tasks are numpy/torch work that uses its own threads) and closes it when the flow ends.
    """
    if not fanout_configured(settings, local_workers):
        return None
    from prefect_dask import DaskTaskRunner

    if settings.cluster.dask_address:
        return DaskTaskRunner(address=settings.cluster.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.cluster.dask_workers or local_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def worker_count(settings: Settings, local_workers: int = 0) -> int:
    """How many workers the fan-out has: the scheduler's (asked), or the local cluster's; 1
    without fan-out."""
    if settings.cluster.dask_address:
        from distributed import Client

        with Client(settings.cluster.dask_address, timeout=30) as client:
            return max(len(client.scheduler_info().get("workers", {})), 1)
    return max(settings.cluster.dask_workers or local_workers, 1)
