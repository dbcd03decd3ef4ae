"""The ``ab-test`` flow, and what happens between simulated days (scrape, nightly).

``ab-test`` serves two arms of one catalogue side by side (one uvicorn server per arm on
127.0.0.1, each with its own settings overrides), sends simulated readers to them split by
a stable hash of their session (:mod:`tasks.simulate`), and reports per arm click-through,
like and skip rates, dwell, catalogue coverage and the age of clicked stories with 95 %
bootstrap intervals (:mod:`tasks.ab`): markdown + PNG as a Prefect artifact, and the same
files with a JSON of the numbers under ``<home>/<catalogue>/ab/<run>/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from storage.settings import catalogue_settings
from tasks.ab import Arm, assignment, compare, parse_arm, plot_arms, report_markdown, serve_arms
from tasks.simulate import (
    DaySummary,
    ReaderConfig,
    SimulationResult,
    personas_for,
    simulate,
    stable_arm,
    warehouse_items,
)
from tasks.tune import png_markdown


def between_days(
    catalogue: str,
    overrides: dict[str, Any] | None = None,
    *,
    scrape: bool = True,
    nightly_every: int = 0,
    before: Callable[[int], object] | None = None,
) -> Callable[[int], None]:
    """What runs after simulated day ``d``: ``before(d)`` (e.g. the demo outlets' clock moves
    on), the scrape (new stories arrive as a delta the services hot-load), and every
    ``nightly_every`` days the nightly refresh (it ingests the day's events and impressions)."""
    settings = catalogue_settings(catalogue, overrides)
    feeds = settings.source.kind == "feeds"

    def hook(day: int) -> None:
        if before is not None:
            before(day)
        if scrape and feeds:
            from flows.scrape import scrape_feeds

            scrape_feeds(catalogue=catalogue, overrides=overrides)
        if nightly_every and (day + 1) % nightly_every == 0:
            from flows.nightly import nightly_refresh

            nightly_refresh(catalogue=catalogue, overrides=overrides)

    return hook


@dataclass(frozen=True)
class AbOutcome:
    """What an ab-test run measured and where its report went."""

    run: str
    arms: list[str]
    comparison: dict[str, Any]
    report_dir: str
    days: list[dict[str, Any]]
    sessions: dict[str, dict[str, Any]]
    """Session → its arm, visits and the most session events its arm applied."""


def run_ab(
    catalogue: str,
    a: Arm,
    b: Arm,
    *,
    personas: int,
    days: int,
    seed: int,
    k: int = 10,
    run: str | None = None,
    overrides: dict[str, Any] | None = None,
    scrape: bool = True,
    on_day: Callable[[DaySummary], object] | None = None,
    progress: bool = True,
    hook: Callable[[int], object] | None = None,
) -> tuple[SimulationResult, dict[str, Any], Path, str]:
    """Serve both arms, simulate, compare and write the report; returns (simulation,
    comparison, report directory, markdown)."""
    if a.name == b.name:
        raise ValueError(f"the two arms need different names, both are {a.name!r}")
    settings = catalogue_settings(catalogue, overrides)
    run = run or f"ab{seed}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    crowd = personas_for(warehouse_items(settings), personas, seed, ReaderConfig().persona)
    names = (a.name, b.name)
    with serve_arms(catalogue, overrides, [a, b]) as urls:
        clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in urls.items()}
        try:
            health = clients[a.name].get("/health").json()
            size = int(health["counts"]["items"]) + int(health.get("fresh_items") or 0)

            def route(session: str) -> tuple[str, httpx.Client]:
                arm = stable_arm(session, names)
                return arm, clients[arm]

            result = simulate(
                route,
                crowd,
                days=days,
                seed=seed,
                run=run,
                config=ReaderConfig(k=k),
                between_days=hook or between_days(catalogue, overrides, scrape=scrape),
                on_day=on_day,
                progress=progress,
            )
        finally:
            for client in clients.values():
                client.close()
    comparison = compare(result, names, size, seed)
    out = settings.catalogue_dir / "ab" / run
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "catalogue": catalogue,
        "run": run,
        "personas": personas,
        "days": days,
        "seed": seed,
        "k": k,
        "catalogue size": size,
        "bundle": health.get("bundle_version"),
        "split": "stable hash of the session id",
    }
    markdown = report_markdown(f"A/B test `{a.name}` vs `{b.name}` ({catalogue})", comparison, [a, b], meta)
    png = plot_arms(comparison, [a, b], out / "report.png")
    (out / "report.md").write_text(markdown + "\n![per-arm metrics](report.png)\n")
    (out / "result.json").write_text(
        json.dumps(
            {
                **meta,
                "arms_overrides": {a.name: a.overrides, b.name: b.overrides},
                **comparison,
                "sessions": assignment(result),
            },
            indent=2,
        )
        + "\n"
    )
    return result, comparison, out, markdown + "\n" + png_markdown(png, "per-arm metrics")


@flow(name="ab-test", log_prints=True)
def ab_test(
    catalogue: str = "news",
    a: str = "",
    b: str = "",
    personas: int = 50,
    days: int = 1,
    seed: int = 0,
    k: int = 10,
    run: str | None = None,
    scrape: bool = True,
    overrides: dict[str, Any] | None = None,
) -> AbOutcome:
    """Two arms (``[name:]key=value,…`` settings overrides; empty: the catalogue's settings)
    served side by side, simulated readers split by session hash, a report per arm with
    95 % intervals (Prefect artifact ``ab-<catalogue>`` and files under
    ``<home>/<catalogue>/ab/<run>/``)."""
    logger = get_run_logger()
    arm_a, arm_b = parse_arm(a, "a"), parse_arm(b, "b")
    started = time.monotonic()
    result, comparison, out, artifact = run_ab(
        catalogue,
        arm_a,
        arm_b,
        personas=personas,
        days=days,
        seed=seed,
        k=k,
        run=run,
        overrides=overrides,
        scrape=scrape,
        on_day=lambda d: logger.info(
            "day %d: %d visits, CTR %.3f, %d likes, %d skips", d.day + 1, d.visits, d.ctr, d.likes, d.skips
        ),
        progress=False,
    )
    create_markdown_artifact(key=f"ab-{catalogue}".lower(), markdown=artifact, description="A/B test report")
    logger.info(
        "A/B %s vs %s: CTR lift %+.1f%% (intervals %s) in %.0f s; report in %s",
        arm_a.name,
        arm_b.name,
        100 * comparison["ctr_lift"],
        "overlap" if comparison["ctr_intervals_overlap"] else "do not overlap",
        time.monotonic() - started,
        out,
    )
    return AbOutcome(
        run=out.name,
        arms=[arm_a.name, arm_b.name],
        comparison=comparison,
        report_dir=str(out),
        days=[d.__dict__ | {"ctr": d.ctr} for d in result.summary()],
        sessions=assignment(result),
    )
