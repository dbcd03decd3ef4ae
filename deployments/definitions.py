"""Every recflow flow as a Prefect deployment: names, schedules, parameters, limits.

The same definitions are served by one local process (``recflow deploy serve``) and, through
``prefect.yaml``, by workers of a process, Docker or Kubernetes work pool.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.build_index import build_index_flow
from flows.embed import embed_items_flow
from flows.harvest import morning_harvest
from flows.merge import merge_checkpoints
from flows.nightly import nightly_refresh
from flows.scrape import scrape_feeds
from flows.train import train_models
from flows.tune import tune_models
from storage.settings import Settings

NIGHTLY = "nightly-refresh/nightly"
EMBED = "embed-items/on-demand"
BUILD_INDEX = "build-index/on-demand"
TRAIN = "train-models/on-demand"
MERGE = "merge-checkpoints/on-demand"
TUNE = "tune-models/on-demand"
SCRAPE = "scrape-feeds/hourly"
HARVEST = "morning-harvest/morning"


def build_deployments(settings: Settings, overrides: dict[str, Any] | None = None) -> list[RunnerDeployment]:
    """The deployments for ``settings``; ``overrides`` become every deployment's default
    ``overrides`` parameter (so one served process can run another catalogue's config)."""
    params = {"overrides": overrides} if overrides else {}
    tz = settings.schedule.timezone
    # Two nightly refreshes must never overlap: the second waits, it is not dropped.
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    tags = ["recflow", settings.catalogue]

    def deployment(flow: Any, name: str, tag: str, description: str, cron: str | None) -> RunnerDeployment:
        return flow.to_deployment(
            name=name,
            schedules=[Cron(cron, timezone=tz)] if cron else None,
            concurrency_limit=one_at_a_time,
            parameters=params,
            tags=[*tags, tag],
            description=description,
        )

    return [
        deployment(
            nightly_refresh,
            "nightly",
            "nightly",
            "Load, validate, embed, k-core, split, train, evaluate, index and publish.",
            settings.schedule.nightly_cron,
        ),
        deployment(
            scrape_feeds,
            "hourly",
            "feeds",
            "Fetch every configured feed (conditional GET) into the news catalogue; bad feeds reported.",
            settings.schedule.scrape_cron,
        ),
        deployment(
            morning_harvest,
            "morning",
            "feeds",
            "Recompute the wishlist and pick today's pool of fresh, diverse stories for /feed.",
            settings.schedule.harvest_cron,
        ),
        deployment(
            embed_items_flow,
            "on-demand",
            "embedding",
            "Embed new or changed item texts (cached by model and text hash).",
            settings.schedule.embed_cron,
        ),
        deployment(
            build_index_flow,
            "on-demand",
            "index",
            "Rebuild the live bundle's FAISS index; refused below the recall floor.",
            None,
        ),
        deployment(
            train_models,
            "on-demand",
            "training",
            "Train models (optionally warm), evaluate, record, gate against the live bundle, publish.",
            None,
        ),
        deployment(
            merge_checkpoints,
            "on-demand",
            "training",
            "Weighted average of torch checkpoints, evaluated and gated like a trained model.",
            None,
        ),
        deployment(
            tune_models,
            "on-demand",
            "training",
            "Optuna search (TPE, pruned on validation NDCG@10); the best config becomes the default.",
            None,
        ),
    ]


def serve_deployments(settings: Settings | None = None, overrides: dict[str, Any] | None = None) -> None:
    """Register the deployments and run their flows in this process until SIGTERM."""
    from prefect import serve

    settings = settings or Settings(**(overrides or {}))
    serve(*build_deployments(settings, overrides), print_starting_message=True)
