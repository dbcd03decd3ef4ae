"""``make ab-news``: an A/B test of the news service with simulated readers, from scratch.

Builds a news home the real way (the demo outlets on 127.0.0.1 with their clock a day
back → ``scrape-feeds`` → ``morning-harvest`` → ``nightly-refresh``), then runs the
``ab-test`` flow: arm ``learns`` (the settings as configured: the session's clicks change
its next feed) against arm ``frozen`` (``serving.update_mode=none``, no exploration: every
reader gets the same feed every visit). The outlets' clock moves two hours on before the
run, so the scrape after day 1 brings new stories (later days' scrapes find none).
Prints the per-arm table; the report is under ``<home>/news/ab/<run>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

FROZEN = "frozen:serving.update_mode=none,serving.exploration=false"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--personas", type=int, default=60)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--a", default="learns:", help="arm A ([name:]key=value,…)")
    parser.add_argument("--b", default=FROZEN, help="arm B ([name:]key=value,…)")
    parser.add_argument("--home", type=Path, default=Path("var/bench/ab-home"))
    args = parser.parse_args()

    home = args.home.resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))

    from demo.feeds import FEED_UPDATE_SECONDS, DemoFeedServer
    from flows.ab import ab_test
    from flows.harvest import morning_harvest
    from flows.nightly import nightly_refresh
    from flows.scrape import scrape_feeds
    from tasks.ab import METRICS, estimate_text

    clock = [datetime.now(UTC) - timedelta(days=1)]
    with DemoFeedServer(port=0, days=1, clock=lambda: clock[0]) as feeds:
        overrides: dict[str, Any] = {
            "home": str(home),
            "feeds": {"feeds": feeds.feed_configs(), "allow_hosts": ["127.0.0.1"]},
            "harvest": {"pool_size": 40},
            "model": {"name": "itemknn-recency"},
        }
        print("building the first bundle: scrape, morning harvest, nightly …", flush=True)
        scrape_feeds(catalogue="news", overrides=overrides)
        morning_harvest(catalogue="news", overrides=overrides)
        nightly_refresh(catalogue="news", overrides=overrides)
        # The outlets publish their next batches; the flow's scrape after day 1 fetches them.
        clock[0] += timedelta(seconds=4 * FEED_UPDATE_SECONDS)
        outcome = ab_test(
            catalogue="news",
            a=args.a,
            b=args.b,
            personas=args.personas,
            days=args.days,
            seed=args.seed,
            run=f"ab-news-seed{args.seed}",
            overrides=overrides,
        )
    per = outcome.comparison["arms"]
    arms = outcome.arms
    print(f"| metric | {' | '.join(arms)} |\n|---|{'---|' * len(arms)}")
    for key in ("sessions", "visits", "clicks"):
        print(f"| {key} | " + " | ".join(str(per[a][key]) for a in arms) + " |")
    for key, label in METRICS.items():
        print(f"| {label} | " + " | ".join(estimate_text(per[a][key]) for a in arms) + " |")
    print(
        f"CTR of {arms[1]} vs {arms[0]}: {outcome.comparison['ctr_lift']:+.1%}, 95 % intervals "
        f"{'overlap' if outcome.comparison['ctr_intervals_overlap'] else 'do not overlap'}; "
        f"report in {outcome.report_dir}"
    )
    print(json.dumps({"days": outcome.days}, default=str))


if __name__ == "__main__":
    main()


TEXT_ARM = "text-similarity"
STACK_ARM = "nrms+ranker"


def stack_vs_text_similarity(
    home: Path,
    *,
    warmup_personas: int = 600,
    warmup_days: int = 2,
    personas: int = 1200,
    days: int = 2,
    seed: int = 1,
    nrms_epochs: int = 3,
) -> dict[str, Any]:
    """The served news stack against text similarity, through the real service (``ab-test``).

    A fresh news home as in :func:`main`; simulated warm-up days on the first bundle
    (a cold-start popularity one) log impressions; the nightly ingests them and trains NRMS with its
    rank stage on them (bundle V). Then both arms serve V: ``text-similarity``
    (``serving.rank_stage=text-similarity``: text retrieval and cosine ranking, nothing
    learned) and ``nrms+ranker`` (V as published). Returns the flow's comparison plus the
    bundle and run."""
    home = home.resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))

    import time

    from demo.feeds import DemoFeedServer
    from flows.ab import ab_test
    from flows.harvest import morning_harvest
    from flows.nightly import nightly_refresh
    from flows.scrape import scrape_feeds
    from storage.artifacts import ArtifactStore

    when = datetime.now(UTC) - timedelta(days=1)
    with DemoFeedServer(port=0, days=1, clock=lambda: when) as feeds:
        overrides: dict[str, Any] = {
            "home": str(home),
            "feeds": {"feeds": feeds.feed_configs(), "allow_hosts": ["127.0.0.1"]},
            "model": {"name": "itemknn-recency"},  # the harvest's pool as configured (150 stories)
            "events": {"impression_click_window_s": 1},
        }
        print("building the first bundle: scrape, morning harvest, nightly …", flush=True)
        scrape_feeds(catalogue="news", overrides=overrides)
        morning_harvest(catalogue="news", overrides=overrides)
        nightly_refresh(catalogue="news", overrides=overrides)
        print(f"warm-up: {warmup_personas} readers for {warmup_days} days on the first bundle …", flush=True)
        ab_test(
            catalogue="news",
            a="warmup-a:",
            b="warmup-b:",
            personas=warmup_personas,
            days=warmup_days,
            seed=seed + 1000,
            run=f"warmup-seed{seed}",
            scrape=False,
            overrides=overrides,
        )
        time.sleep(2)  # the impressions' click window (1 s) closes: the nightly derives them all
        stack = {**overrides, "model": {"candidates": ["nrms"]}}
        stack["nrms"] = {"epochs": nrms_epochs, "device": "cpu", "progress": False, "seed": seed}
        print("nightly: NRMS and the ranker on the logged impressions …", flush=True)
        published = nightly_refresh(catalogue="news", overrides=stack)
        version = published.version
        served = (
            ArtifactStore(home / "news" / "bundles").manifest(version).get("model", {}).get("name")
            if version
            else None
        )
        if served != "nrms":
            raise RuntimeError(
                f"the nightly after the warm-up published {served!r} (bundle {version}), not NRMS: "
                "too few logged impressions? raise the warm-up readers or days"
            )
        outcome = ab_test(
            catalogue="news",
            a=f"{TEXT_ARM}:bundle={version},serving.rank_stage=text-similarity",
            b=f"{STACK_ARM}:bundle={version}",
            personas=personas,
            days=days,
            seed=seed,
            run=f"eval-news-ab-seed{seed}",
            scrape=False,
            overrides=overrides,
        )
    return {
        "bundle": version,
        "model": served,
        "run": outcome.run,
        "report_dir": outcome.report_dir,
        "personas": personas,
        "warmup_personas": warmup_personas,
        "warmup_days": warmup_days,
        "days": days,
        "seed": seed,
        **outcome.comparison,
    }
