"""Merging torch checkpoints from bundles or directories into one model that is evaluated,
recorded and gated like any trained one.

A bundle holds two checkpoints of its model: ``train_model/`` (fitted on the training part)
and ``model/`` (fitted on everything, served). The merge is done twice with the same
weights: the merged training-part checkpoints are what is evaluated — they never saw the
valid or test events — and the merged serving checkpoints are what is published.

Rows of ID tables are aligned by id before averaging: a checkpoint from a bundle whose
catalogue differs from the anchor's is first mapped onto the anchor's ids (rows of ids it
lacks are the anchor's own). The anchor's catalogue must be the warehouse's current one,
since that is what the merged model is evaluated and served on.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from models.checkpoint import (
    STATE_FILE,
    CheckpointError,
    grow_state,
    has_state,
    load_meta,
    load_state,
    merge_metadata,
    merge_state_dicts,
)
from models.registry import load_model
from storage.artifacts import ArtifactStore, file_sha256
from tasks.train_models import (
    SERVING_MODEL_DIR,
    TRAIN_MODEL_DIR,
    RunResult,
    catalog_ids,
    data_ids,
    is_torch_model,
)
from tasks.training import SplitData, evaluate


@dataclass(frozen=True)
class MergeInput:
    """One checkpoint to merge: where its evaluated and served states are, and its ids."""

    label: str
    eval_dir: Path
    serve_dir: Path
    ids: dict[str, list[str]] | None
    """Item and user ids in index order (None for a bare directory: assumed the anchor's)."""


def resolve_inputs(
    store: ArtifactStore, bundles: list[str] | None, checkpoints: list[str] | None
) -> list[MergeInput]:
    """Bundle versions first, then checkpoint directories, in the order given."""
    inputs: list[MergeInput] = []
    for version in bundles or []:
        base = store.root / version
        if not (base / "manifest.json").is_file():
            raise FileNotFoundError(
                f"bundle {version!r} not found under {store.root}; published: {store.versions()}"
            )
        serve, train = base / SERVING_MODEL_DIR, base / TRAIN_MODEL_DIR
        if not has_state(serve):
            raise CheckpointError(
                f"bundle {version} serves a model without state.pt: only torch models merge"
            )
        if not has_state(train):
            raise CheckpointError(
                f"bundle {version} has no {TRAIN_MODEL_DIR}/ checkpoint, so a merge with it could not be "
                "evaluated on unseen events; publish it with train-models first"
            )
        inputs.append(MergeInput(f"bundle {version}", train, serve, catalog_ids(base)))
    for raw in checkpoints or []:
        path = Path(raw)
        if not has_state(path):
            raise CheckpointError(f"checkpoint directory {path} needs model.json and state.pt")
        ids = catalog_ids(path.parent) if (path.parent / "catalog.duckdb").is_file() else None
        inputs.append(MergeInput(str(path), path, path, ids))
    if len(inputs) < 2:
        raise ValueError(f"merge needs at least two checkpoints, got {len(inputs)}")
    return inputs


@dataclass(frozen=True)
class MergedCheckpoint:
    directory: Path
    averaged: list[str]
    kept_anchor: list[str]
    meta: dict[str, Any]


def merge_into(
    inputs: list[MergeInput],
    weights: list[float],
    anchor: int,
    which: Literal["eval", "serve"],
    out_dir: Path,
) -> MergedCheckpoint:
    """Merge the ``which`` checkpoints of ``inputs`` into ``out_dir`` (a loadable model dir)."""
    dirs = [i.eval_dir if which == "eval" else i.serve_dir for i in inputs]
    metas = [load_meta(d) for d in dirs]
    names = {m.get("name") for m in metas}
    if len(names) > 1:
        raise CheckpointError(f"cannot merge different models {sorted(map(str, names))}")
    states = [load_state(d) for d in dirs]
    base = inputs[anchor]
    probe = load_model(dirs[anchor])
    tables = probe.id_tables() if is_torch_model(probe) else {}  # type: ignore[attr-defined]
    if base.ids is not None and tables:
        for n, inp in enumerate(inputs):
            if n == anchor or inp.ids is None:
                continue
            kinds = {kind for kind, _ in tables.values()}
            if all(inp.ids[k] == base.ids[k] for k in kinds):
                continue
            states[n], _ = grow_state(states[n], tables, inp.ids, base.ids, fresh_state=states[anchor])
    result = merge_state_dicts(states, weights, anchor)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(dirs[anchor], out_dir)
    torch.save(result.state, out_dir / STATE_FILE)
    meta = merge_metadata(metas, [i.label for i in inputs], weights, anchor)
    meta["merge"]["sha256"] = [file_sha256(d / STATE_FILE) for d in dirs]
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2))
    return MergedCheckpoint(out_dir, result.averaged, result.kept_anchor, meta)


def check_anchor_matches(inputs: list[MergeInput], anchor: int, data: SplitData) -> None:
    """The merged model is evaluated and served on today's catalogue: the anchor must match it."""
    ids = inputs[anchor].ids
    if ids is None:
        return
    current = data_ids(data)
    if ids["item"] != current["item"] or ids["user"] != current["user"]:
        raise ValueError(
            f"anchor {inputs[anchor].label} covers {len(ids['item'])} items / {len(ids['user'])} users, "
            f"the warehouse now {data.n_items} / {data.n_users}: make the newest bundle the anchor, or "
            "run train-models --warm-start first"
        )


def evaluate_merged(
    merged: MergedCheckpoint, data: SplitData, ks: list[int], weights: list[float]
) -> RunResult:
    """Metrics of the merged (training-part) checkpoint, as a run ready to record and gate."""
    model = load_model(merged.directory)
    if getattr(model, "n_items", data.n_items) != data.n_items:
        raise ValueError(f"merged model has {model.n_items} items, the data {data.n_items}")  # type: ignore[attr-defined]
    params = model.params()
    return RunResult(
        run_id=uuid.uuid4().hex,
        model_name=model.name,
        params=params,
        valid=evaluate(model, data, "valid", ks),
        test=evaluate(model, data, "test", ks),
        train_seconds=0.0,
        model=model,
        config={
            "model": model.name,
            "params": params,
            "seed": params.get("seed"),
            "split": data.split_name,
            "merge": {**merged.meta["merge"], "weights": weights, "averaged": merged.averaged},
            "warm_start": None,
        },
    )
