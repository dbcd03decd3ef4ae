"""Every recflow flow as a Prefect deployment per configured catalogue: names, schedules,
parameters, limits.

A deployment is named ``<flow>/<catalogue>`` (``nightly-refresh/news``,
``train-models/movielens-100k``) and passes its catalogue as the flow's default ``catalogue``
parameter, so the Prefect UI's run form shows which catalogue a run refreshes. The flows are
one table (:data:`FLOWS`): a new flow is one more row. The same definitions are served by one
local process (``recflow deploy serve``) and, through ``prefect.yaml``, by workers of a
process, Docker or Kubernetes work pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
from storage.settings import ScheduleSettings, Settings, catalogue_settings


@dataclass(frozen=True)
class FlowDeployment:
    """One flow's deployment, made once per catalogue it applies to."""

    flow: Any
    tag: str
    description: str
    cron: Callable[[ScheduleSettings], str | None] = lambda schedule: None
    """The schedule from the catalogue's settings; None: on demand only."""
    feeds_only: bool = False
    """Only for catalogues whose source is ``feeds`` (scraping, the morning harvest)."""


FLOWS: list[FlowDeployment] = [
    FlowDeployment(
        nightly_refresh,
        "nightly",
        "Load, validate, embed, k-core, split, train, evaluate, index and publish.",
        lambda s: s.nightly_cron,
    ),
    FlowDeployment(
        scrape_feeds,
        "feeds",
        "Fetch every configured feed (conditional GET) into the news catalogue; bad feeds reported.",
        lambda s: s.scrape_cron,
        feeds_only=True,
    ),
    FlowDeployment(
        morning_harvest,
        "feeds",
        "Recompute the wishlist and pick today's pool of fresh, diverse stories for /feed.",
        lambda s: s.harvest_cron,
        feeds_only=True,
    ),
    FlowDeployment(
        embed_items_flow,
        "embedding",
        "Embed new or changed item texts (cached by model and text hash).",
        lambda s: s.embed_cron,
    ),
    FlowDeployment(
        build_index_flow, "index", "Rebuild the live bundle's FAISS index; refused below the recall floor."
    ),
    FlowDeployment(
        train_models,
        "training",
        "Train models (optionally warm), evaluate, record, gate against the live bundle, publish.",
    ),
    FlowDeployment(
        merge_checkpoints,
        "training",
        "Weighted average of torch checkpoints, evaluated and gated like a trained model.",
    ),
]


def deployment_name(flow: Any, catalogue: str) -> str:
    """The full name Prefect knows a deployment by: ``<flow name>/<catalogue>``."""
    return f"{flow.name}/{catalogue}"


def build_deployments(settings: Settings, overrides: dict[str, Any] | None = None) -> list[RunnerDeployment]:
    """The deployments of every catalogue in ``settings.catalogues``; ``overrides`` become every
    deployment's default ``overrides`` parameter (so one served process can run another
    home's or config's catalogues). Schedules come from each catalogue's own settings."""
    # Two nightly refreshes must never overlap: the second waits, it is not dropped.
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    deployments = []
    for catalogue in settings.catalogues:
        own = catalogue_settings(catalogue, overrides)
        params: dict[str, Any] = {"catalogue": catalogue, **({"overrides": overrides} if overrides else {})}
        for spec in FLOWS:
            if spec.feeds_only and own.source.kind != "feeds":
                continue
            cron = spec.cron(own.schedule)
            deployments.append(
                spec.flow.to_deployment(
                    name=catalogue,
                    schedules=[Cron(cron, timezone=own.schedule.timezone)] if cron else None,
                    concurrency_limit=one_at_a_time,
                    parameters=params,
                    tags=["recflow", catalogue, spec.tag],
                    description=f"{spec.description} Catalogue: {catalogue}.",
                )
            )
    return deployments


def serve_deployments(settings: Settings | None = None, overrides: dict[str, Any] | None = None) -> None:
    """Register the deployments and run their flows in this process until SIGTERM."""
    from prefect import serve

    settings = settings or Settings(**(overrides or {}))
    serve(*build_deployments(settings, overrides), print_starting_message=True)
