"""The ``build-index`` flow: rebuild the live bundle's FAISS index with today's settings.

The index is checked against exact search (recall@k on sampled queries) before anything is
written; below the floor the flow fails and ``CURRENT`` stays on the live bundle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings
from tasks.indexing import ItemIndex, build_index
from tasks.publish import PublishResult, publish_reindexed


@task(name="build-and-publish-index")
def build_index_task(settings: Settings, run_id: str | None) -> PublishResult:
    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)

    def builder(vectors: np.ndarray, item_ids: list[str]) -> ItemIndex:
        return build_index(vectors, item_ids, settings.index)

    return publish_reindexed(store, builder, run_id)


@flow(name="build-index")
def build_index_flow(catalogue: str | None = None, overrides: dict[str, Any] | None = None) -> PublishResult:
    """Build, check and publish the item index of ``catalogue`` (None: the settings' own); the
    UI shows its kind, size and recall."""
    settings = catalogue_settings(catalogue, overrides)
    result = build_index_task(settings, str(flow_run.get_id()) if flow_run.get_id() else None)
    store = ArtifactStore(settings.bundles_dir)
    meta = store.manifest(result.version).get("index", {}) if result.version else {}
    get_run_logger().info("published %s (%s): index %s", result.version, result.reason, meta)
    rows = "\n".join(f"| {k} | {v} |" for k, v in meta.items() if not isinstance(v, dict))
    create_markdown_artifact(
        markdown=f"### Item index in `{result.version}`\n\n| field | value |\n|---|---|\n{rows}\n",
        key="item-index",
        description="Kind, size and measured recall of the published index",
    )
    return result
