"""The ``morning-harvest`` flow: demand analysis, then today's pool of stories.

Orchestration only: :func:`tasks.demand.compute_wishlist` turns recent engagement into the
wishlist, :func:`tasks.harvest.harvest` picks the pool and writes ``daily_pool``; both show
their result as Prefect artifacts. The pool goes live at once: ``publish-fresh`` publishes it
(with the stories the live bundle lacks) as a delta the service hot-loads, so the pool served
at 06:05 is the 06:00 pool; the next nightly bundle carries it too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.fresh import publish_fresh_task
from storage.settings import Settings, catalogue_settings
from storage.warehouse import open_warehouse
from tasks.demand import Wish, compute_wishlist, wishlist_markdown
from tasks.harvest import Pool, harvest


@task(name="demand-analysis", retries=3, retry_delay_seconds=[5, 15, 45])
def demand_task(settings: Settings) -> list[Wish]:
    h = settings.harvest
    with open_warehouse(settings.warehouse_path) as con:
        wishes = compute_wishlist(
            con, h.demand_days, min_ratio=h.wishlist_min_ratio, min_events=h.wishlist_min_events
        )
    get_run_logger().info(
        "wishlist: %s", ", ".join(f"{w.kind} {w.value} (×{w.ratio:.2f})" for w in wishes) or "empty"
    )
    create_markdown_artifact(
        markdown=wishlist_markdown(wishes), key="wishlist", description="Under-supplied demand"
    )
    return wishes


@task(name="pick-pool", retries=3, retry_delay_seconds=[5, 15, 45])
def pool_task(settings: Settings) -> Pool:
    with open_warehouse(settings.warehouse_path) as con:
        pool = harvest(con, settings.harvest, settings.embedding)
    logger = get_run_logger()
    logger.info("%s", pool.log_line())
    if not pool.rows:
        logger.warning(
            "no items published in the last %d hours: run scrape-feeds first", settings.harvest.window_hours
        )
    create_markdown_artifact(
        markdown=pool.markdown(), key="daily-pool", description="Today's pool of stories"
    )
    return pool


@flow(name="morning-harvest", log_prints=True)
def morning_harvest(catalogue: str = "news", overrides: dict[str, Any] | None = None) -> Pool:
    """Recompute the wishlist from recent engagement and pick today's pool of stories."""
    settings = catalogue_settings(catalogue, overrides)
    demand_task(settings)
    pool = pool_task(settings)
    publish_fresh_task(settings, harvested_at=datetime.now(UTC))
    return pool
