"""Torch checkpoints across catalogue changes: warm start with grown ID tables, and merging.

A model's ID tables (contract C4, ``id_tables()``) are state-dict tensors whose rows are
users or items: ``n_special`` rows first (padding, cold-start), then one row per dense index.
Dense indices are positions in a bundle's catalogue, so they shift whenever the catalogue
changes; the original dataset ids are what persist. Both operations here therefore work
through ids:

* :func:`grow_state` maps an old checkpoint onto a new catalogue: rows of ids present in
  both are copied (learned rows are kept), special rows are copied, rows of new ids come from
  a freshly initialized model (or are drawn like the old table's rows), rows of ids that left
  the catalogue are dropped. Everything that is not an ID table is copied when its shape
  still fits.
* :func:`merge_state_dicts` averages, with weights, every floating-point tensor that has the
  same name and shape in several checkpoints; where they differ the anchor's tensor is kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

STATE_FILE = "state.pt"
MODEL_FILE = "model.json"

IdKind = Literal["item", "user"]
IdTables = Mapping[str, tuple[IdKind, int]]


class CheckpointError(ValueError):
    """A checkpoint is missing, not a torch checkpoint, or does not fit the ids it is given."""


def has_state(directory: Path) -> bool:
    """True when ``directory`` holds a torch checkpoint (``state.pt`` beside ``model.json``)."""
    return (directory / STATE_FILE).is_file() and (directory / MODEL_FILE).is_file()


def load_state(directory: Path) -> dict[str, torch.Tensor]:
    """The CPU state dict of a saved torch model."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: {directory} is not a torch checkpoint (only torch models, which "
            "write state.pt, can be warm-started or merged)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_meta(directory: Path) -> dict[str, Any]:
    path = directory / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a saved recflow model")
    return json.loads(path.read_text())


@dataclass
class GrowReport:
    """What happened to each ID table: rows kept from the old checkpoint, new, dropped."""

    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)
    """Non-table tensors copied from the old checkpoint."""
    reset: list[str] = field(default_factory=list)
    """Tensors left as freshly initialized (shape changed, e.g. a new embedding size)."""

    def summary(self) -> str:
        parts = [
            f"{key}: kept {t['kept']}, new {t['new']}, dropped {t['dropped']}"
            for key, t in self.tables.items()
        ]
        if self.reset:
            parts.append(f"reset (shape changed): {', '.join(self.reset)}")
        return "; ".join(parts) or "no ID tables"


def _draw_rows(old: torch.Tensor, n_rows: int, generator: torch.Generator) -> torch.Tensor:
    """Rows drawn like the old table's (its mean and std), for models without a fresh state."""
    body = old.detach().double()
    mean = body.mean(dim=0) if body.shape[0] else torch.zeros(body.shape[1:], dtype=torch.float64)
    std = body.std().nan_to_num(0.0) if body.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    noise = torch.randn((n_rows, *old.shape[1:]), generator=generator, dtype=torch.float64)
    return (mean + noise * std).to(old.dtype)


def remap_rows(
    old: torch.Tensor,
    n_special: int,
    old_ids: Sequence[str],
    new_ids: Sequence[str],
    fresh: torch.Tensor,
    key: str = "table",
) -> tuple[torch.Tensor, dict[str, int]]:
    """``fresh`` with the special rows and the rows of persisting ids taken from ``old``."""
    if old.shape[0] != n_special + len(old_ids):
        raise CheckpointError(
            f"{key}: {old.shape[0]} rows, expected {n_special} special rows + {len(old_ids)} ids"
        )
    if fresh.shape[0] != n_special + len(new_ids) or fresh.shape[1:] != old.shape[1:]:
        raise CheckpointError(
            f"{key}: fresh rows have shape {tuple(fresh.shape)}, expected "
            f"({n_special + len(new_ids)}, {', '.join(map(str, old.shape[1:]))})"
        )
    out = fresh.detach().clone().to(old.dtype)
    out[:n_special] = old[:n_special]
    position = {str(i): p for p, i in enumerate(old_ids)}
    pairs = [(j, position[str(i)]) for j, i in enumerate(new_ids) if str(i) in position]
    if pairs:
        new_rows = torch.tensor([n_special + j for j, _ in pairs])
        old_rows = torch.tensor([n_special + p for _, p in pairs])
        out[new_rows] = old[old_rows]
    kept = len(pairs)
    return out, {"kept": kept, "new": len(new_ids) - kept, "dropped": len(old_ids) - kept}


def grow_state(
    old_state: Mapping[str, torch.Tensor],
    id_tables: IdTables,
    old_ids: Mapping[str, Sequence[str]],
    new_ids: Mapping[str, Sequence[str]],
    fresh_state: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], GrowReport]:
    """Map ``old_state`` (over ``old_ids``) onto ``new_ids``; see the module docstring.

    ``old_ids`` / ``new_ids`` map an id kind (``"item"``, ``"user"``) to the ids in dense
    index order. ``fresh_state`` is a freshly initialized state for the new sizes: new rows
    come from it, and any tensor whose shape changed is taken from it. Without it, new rows
    are drawn from the old table's distribution with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    report = GrowReport()
    out: dict[str, torch.Tensor] = {}
    for key, old in old_state.items():
        fresh = fresh_state.get(key) if fresh_state is not None else None
        if key in id_tables:
            kind, n_special = id_tables[key]
            if kind not in old_ids or kind not in new_ids:
                raise CheckpointError(f"{key} is a {kind} table but no {kind} ids were given to map it")
            n_new = n_special + len(new_ids[kind])
            if fresh is None:
                fresh = torch.cat(
                    [old[:n_special], _draw_rows(old[n_special:], len(new_ids[kind]), generator)]
                )
            if fresh.shape[1:] != old.shape[1:]:
                out[key] = fresh.detach().clone()
                report.reset.append(key)
                continue
            if fresh.shape[0] != n_new:
                raise CheckpointError(f"{key}: fresh state has {fresh.shape[0]} rows, expected {n_new}")
            out[key], report.tables[key] = remap_rows(
                old, n_special, old_ids[kind], new_ids[kind], fresh, key
            )
        elif fresh is not None and fresh.shape != old.shape:
            out[key] = fresh.detach().clone()
            report.reset.append(key)
        else:
            out[key] = old.detach().clone()
            report.copied.append(key)
    missing = sorted(set(id_tables) - set(old_state))
    if missing:
        raise CheckpointError(f"id tables {missing} are not in the checkpoint (it has {sorted(old_state)})")
    return out, report


@dataclass
class MergeResult:
    state: dict[str, torch.Tensor]
    averaged: list[str]
    """Tensors averaged over every checkpoint that has them with the anchor's shape."""
    kept_anchor: list[str]
    """Tensors no other checkpoint matches (missing, other shape, or not floating point)."""
    contributors: dict[str, int]
    """Per averaged tensor, how many checkpoints contributed."""


def merge_state_dicts(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None, anchor: int = 0
) -> MergeResult:
    """Weighted average of the tensors that match the anchor's in name and shape.

    Weights are normalized over the checkpoints that contribute to each tensor, so a tensor
    present in only some checkpoints is still an average, not a shrunken sum. Integer
    tensors (counters, index buffers) are never averaged: the anchor's is kept.
    """
    if not states:
        raise CheckpointError("merge needs at least one checkpoint")
    weights = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states):
        raise CheckpointError(f"{len(weights)} weights given for {len(states)} checkpoints")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise CheckpointError(f"weights must be ≥ 0 with a positive sum, got {weights}")
    if not 0 <= anchor < len(states):
        raise CheckpointError(f"anchor {anchor} is not one of the {len(states)} checkpoints")
    merged: dict[str, torch.Tensor] = {}
    averaged: list[str] = []
    kept: list[str] = []
    contributors: dict[str, int] = {}
    for key, base in states[anchor].items():
        if not torch.is_floating_point(base):
            merged[key] = base.clone()
            kept.append(key)
            continue
        parts = [
            (w, s[key])
            for w, s in zip(weights, states, strict=True)
            if key in s and s[key].shape == base.shape and torch.is_floating_point(s[key]) and w > 0
        ]
        total = sum(w for w, _ in parts)
        if len(parts) < 2 or total <= 0:
            merged[key] = base.clone()
            kept.append(key)
            continue
        acc = torch.zeros(base.shape, dtype=torch.float64)
        for w, tensor in parts:
            acc += (w / total) * tensor.detach().to(torch.float64)
        merged[key] = acc.to(base.dtype)
        averaged.append(key)
        contributors[key] = len(parts)
    return MergeResult(merged, averaged, kept, contributors)


def merge_metadata(
    metas: Sequence[Mapping[str, Any]], sources: Sequence[str], weights: Sequence[float], anchor: int = 0
) -> dict[str, Any]:
    """The anchor's ``model.json`` plus a ``merge`` record naming every input and its weight."""
    base = dict(metas[anchor])
    base["merge"] = {
        "anchor": sources[anchor],
        "inputs": [
            {"source": src, "weight": float(w), "name": m.get("name"), "params": m.get("params")}
            for src, w, m in zip(sources, weights, metas, strict=True)
        ],
    }
    return base
