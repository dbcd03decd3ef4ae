"""The ``scrape-feeds`` flow: pull every configured feed into the news warehouse.

Orchestration only (the work is :func:`tasks.scrape.scrape`). Meant to run hourly; with
``only_due=True`` it can run more often and fetch only feeds that are due (wishlist feeds
are due ``wishlist_boost`` times as often). When the feed list points at the demo address
and nothing listens there, the demo feeds are started in-process for the run, so the
embedded default works on a fresh machine with no internet.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.fresh import publish_fresh_task
from storage.settings import Settings, catalogue_settings
from storage.warehouse import open_warehouse
from tasks.scrape import ScrapeSummary, ensure_demo_server, scrape


@task(name="fetch-parse-store", retries=3, retry_delay_seconds=[5, 15, 45])
def scrape_task(settings: Settings, only_due: bool) -> ScrapeSummary:
    logger = get_run_logger()
    with open_warehouse(settings.warehouse_path) as con:
        summary = scrape(con, settings.feeds, only_due=only_due, progress=logger.info)
    logger.info("scrape: %s", summary.log_line())
    for feed in summary.problems:
        logger.warning(
            "feed %s (%s): %s%s %s",
            feed.name,
            feed.url,
            feed.status,
            " — PAUSED" if feed.paused else f" ({feed.consecutive_failures} failures in a row)",
            feed.detail,
        )
    create_markdown_artifact(
        markdown=summary.markdown(),
        key="scrape-summary",
        description="Feeds fetched, their status and items added",
    )
    return summary


@flow(name="scrape-feeds", log_prints=True)
def scrape_feeds(
    catalogue: str = "news", only_due: bool = False, overrides: dict[str, Any] | None = None
) -> ScrapeSummary:
    """Fetch the configured feeds of ``catalogue`` and store new items; bad feeds are reported."""
    settings = catalogue_settings(catalogue, overrides)
    logger = get_run_logger()
    server = ensure_demo_server(settings.feeds)
    if server is not None:
        logger.info(
            "nothing listened on %s:%d, where the configured feeds point: started the demo feeds "
            "in-process for this run (`recflow demo-feeds` serves them permanently)",
            settings.feeds.demo_host,
            settings.feeds.demo_port,
        )
    try:
        summary = scrape_task(settings, only_due)
    finally:
        if server is not None:
            server.stop()
    if server is not None:
        summary.demo_server = server.base_url
    # New stories go live now, as a delta of the live bundle, not at the next nightly.
    summary.fetched_at = datetime.now(UTC)
    summary.delta = publish_fresh_task(settings).log_line()
    return summary
