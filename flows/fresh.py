"""The ``publish-fresh`` task, shared by ``scrape-feeds`` and ``morning-harvest``.

After a scrape it makes the new stories servable within a minute (no nightly needed); after
the harvest it puts the new pool live at once. Both publish a delta of the live bundle
(:func:`tasks.freshness.publish_delta`), which the service hot-loads like a bundle.
"""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task

from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.freshness import DeltaSummary, publish_delta


@task(name="publish-fresh", retries=2, retry_delay_seconds=[5, 15])
def publish_fresh_task(settings: Settings, harvested_at: datetime | None = None) -> DeltaSummary:
    """Publish the stories (and pool) the live bundle lacks as its next delta."""
    logger = get_run_logger()
    if not settings.embedding.enabled:
        summary = DeltaSummary(
            None, None, 0, None, 0.0, "embedding is disabled: fresh stories need text vectors"
        )
    else:
        store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
        with open_warehouse(settings.warehouse_path) as con:
            summary = publish_delta(
                con, store, settings.embedding, settings.harvest.window_hours, harvested_at=harvested_at
            )
    logger.info("%s", summary.log_line())
    return summary
