"""The ``merge-checkpoints`` flow: average several torch checkpoints, evaluate, gate, publish.

Orchestration only (logic in :mod:`tasks.merge` and :mod:`models.checkpoint`): inputs are
bundle versions and/or checkpoint directories with weights; the merged model is recorded in
``model_runs`` and published only if it is not worse than the live bundle beyond
``tolerance``, exactly like a trained one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.nightly import kcore_task, split_task
from flows.train import TrainOutcome, _flow_run_id, _load, announce
from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings
from storage.warehouse import open_warehouse
from tasks.merge import check_anchor_matches, evaluate_merged, merge_into, resolve_inputs
from tasks.prepare import KCORE_TABLE
from tasks.train_models import publish_champion, record_config_run
from tasks.training import data_fingerprint


@task(name="merge-evaluate-publish", timeout_seconds=3600, persist_result=False, cache_policy=NONE)
def merge_task(
    settings: Settings,
    bundles: list[str] | None,
    checkpoints: list[str] | None,
    weights: list[float] | None,
    anchor: int,
    tolerance: float,
) -> TrainOutcome:
    logger = get_run_logger()
    store = ArtifactStore(settings.bundles_dir, keep=settings.bundles_keep)
    inputs = resolve_inputs(store, bundles, checkpoints)
    weights = weights or [1.0] * len(inputs)
    if len(weights) != len(inputs):
        raise ValueError(
            f"{len(weights)} weights given for {len(inputs)} checkpoints ({[i.label for i in inputs]})"
        )
    if not 0 <= anchor < len(inputs):
        raise ValueError(f"anchor {anchor} is not an index into the {len(inputs)} checkpoints")
    logger.info(
        "merging %s with weights %s (anchor %s)", [i.label for i in inputs], weights, inputs[anchor].label
    )
    with (
        open_warehouse(settings.warehouse_path) as con,
        tempfile.TemporaryDirectory(prefix="recflow-merge-") as tmp,
    ):
        data, proto = _load(settings, con)
        check_anchor_matches(inputs, anchor, data)
        evaluated = merge_into(inputs, weights, anchor, "eval", Path(tmp) / "eval")
        served = merge_into(inputs, weights, anchor, "serve", Path(tmp) / "serve")
        logger.info(
            "averaged %d tensors, kept the anchor's %s",
            len(evaluated.averaged),
            evaluated.kept_anchor or "none",
        )
        run = evaluate_merged(evaluated, data, list(settings.eval.ks), weights)
        fingerprint = data_fingerprint(con, KCORE_TABLE, {"merge": run.config["merge"], "flow": "merge"})
        record_config_run(con, run, proto, fingerprint, _flow_run_id())
        logger.info(
            "merged %s: valid ndcg@10 %.4f, test ndcg@10 %.4f hr@10 %.4f (run %s)",
            run.model_name,
            run.valid.get("ndcg@10", float("nan")),
            run.test.get("ndcg@10", float("nan")),
            run.test.get("hr@10", float("nan")),
            run.run_id,
        )
        from models.registry import load_model

        outcome = publish_champion(
            con,
            store,
            settings,
            data,
            proto,
            [run],
            run,
            tolerance=tolerance,
            warm_start=False,
            source_run=_flow_run_id(),
            fingerprint=fingerprint,
            log=logger.info,
            serving=load_model(served.directory),
            title=f"merge-checkpoints: {', '.join(i.label for i in inputs)}",
        )
    return announce(outcome, [run], run, "merge", "Merged model")


@flow(name="merge-checkpoints", log_prints=True)
def merge_checkpoints(
    catalogue: str | None = None,
    bundles: list[str] | None = None,
    checkpoints: list[str] | None = None,
    weights: list[float] | None = None,
    anchor: int = 0,
    tolerance: float = 0.0,
    overrides: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Weighted average of the checkpoints of ``bundles`` (versions) then ``checkpoints``
    (directories) in ``catalogue`` (None: the settings' own); the tensor of checkpoint number
    ``anchor`` is kept where shapes differ."""
    settings = catalogue_settings(catalogue, overrides)
    kcore_task(settings)
    split_task(settings)
    return merge_task(settings, bundles, checkpoints, weights, anchor, tolerance)
