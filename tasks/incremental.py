"""Incremental nights: reuse the live bundle's fit when tonight's data grew only a little.

At 25M ratings the ItemKNN fit is most of the nightly's cost, and a night with 1 % new
events changes the item similarities very little. The bundle's user histories are what the
service scores from, so tonight's events reach every user's recommendations as soon as the
bundle carries tonight's histories, whether or not the similarities are fitted again.

The nightly therefore reuses the live model (no fit) when all of these hold:

* the live bundle's model is one of tonight's candidates, with the same parameters;
* its served model was fitted on its training part only (``serving_fit`` is ``train``, what
  the nightly serves above ``model.refit_max_interactions``), so it never saw tonight's
  validation or test targets: leave-last-out training parts only grow, and an evaluation of
  it on tonight's split is as honest as a fresh fit's;
* tonight's catalogue is the live one, item for item (a new item has no similarities yet);
* interactions grew by at most ``model.reuse_max_new_share`` since that fit, and fewer
  than ``model.reuse_max_nights`` nights in a row have reused it.

The reused model is still evaluated on tonight's split (the sampled users) and goes through
the same gate; the manifest records ``reused`` (the bundle the fit came from, the nights in a
row, the growth), so the next fit is never far away.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from models.base import Recommender
from models.registry import build_model, load_model
from storage.artifacts import ArtifactStore
from tasks.training import REPORT_LIST_K, SplitData, TrainResult, evaluate_with_lists

SERVING_FIT_TRAIN = "train"
SERVING_FIT_ALL = "train+valid+test"


@dataclass(frozen=True)
class ReusePlan:
    """The live fit tonight's run reuses, or why it fits again (``model`` None)."""

    model: Recommender | None
    name: str | None
    reason: str
    record: dict[str, Any] | None = None
    """The manifest's ``reused`` entry (None: nothing reused)."""


def plan_reuse(
    store: ArtifactStore,
    candidates: dict[str, dict[str, Any]],
    data: SplitData,
    max_new_share: float,
    max_nights: int,
) -> ReusePlan:
    """Whether tonight can reuse the live bundle's fit (see the module docstring), and why."""
    if max_new_share <= 0:
        return ReusePlan(None, None, "reuse is off (model.reuse_max_new_share = 0)")
    live = store.current_version()
    if live is None:
        return ReusePlan(None, None, "no live bundle to reuse")
    manifest = store.manifest(live)
    spec = manifest.get("model") or {}
    name = spec.get("name")
    if name not in candidates:
        return ReusePlan(None, None, f"the live model {name!r} is not among tonight's candidates")
    if build_model(name, **candidates[name]).params() != spec.get("params"):
        return ReusePlan(None, None, f"tonight's {name} parameters differ from the live bundle's")
    if manifest.get("serving_fit") != SERVING_FIT_TRAIN:
        return ReusePlan(
            None, None, f"the live {name} was fitted on every interaction, not its training part"
        )
    with duckdb.connect(str(store.root / live / "catalog.duckdb"), read_only=True) as cat:
        live_items = [
            str(r[0]) for r in cat.execute("SELECT item_id FROM items ORDER BY item_idx").fetchall()
        ]
    if live_items != [str(i) for i in data.item_ids]:
        return ReusePlan(None, None, "tonight's catalogue differs from the live bundle's items")
    before = int((manifest.get("counts") or {}).get("interactions") or 0)
    now = data.n_interactions
    if before <= 0 or now < before:
        return ReusePlan(None, None, f"interactions went from {before:,} to {now:,}: not a night of growth")
    share = (now - before) / before
    if share > max_new_share:
        return ReusePlan(
            None, None, f"interactions grew {share:.2%} (> model.reuse_max_new_share {max_new_share:.2%})"
        )
    previous = manifest.get("reused") or {}
    nights = int(previous.get("nights", 0)) + 1
    if nights > max_nights:
        return ReusePlan(
            None, None, f"the fit was reused {nights - 1} nights in a row (model.reuse_max_nights)"
        )
    record = {
        "fit_from": previous.get("fit_from", live),
        "live": live,
        "nights": nights,
        "new_share": round(share, 6),
    }
    model = load_model(store.root / live / "model")
    return ReusePlan(
        model, name, f"reusing {live}'s {name} fit: interactions grew {share:.2%}, night {nights}", record
    )


def reused_result(
    plan: ReusePlan, data: SplitData, ks: list[int], store: ArtifactStore | None = None
) -> TrainResult:
    """The reused model evaluated on tonight's split, as a fresh fit's result would be.

    Users whose history is unchanged since the live bundle's evaluation (its
    :data:`EVAL_CACHE`, in ``store``) keep their ranks and lists; only the others are
    scored (how many: ``plan.record["rescored_users"]``)."""
    if plan.model is None or plan.name is None:
        raise ValueError(f"nothing to reuse: {plan.reason}")
    live = (plan.record or {}).get("live")
    known = known_users(store.root / live / EVAL_CACHE, data) if store is not None and live else {}
    detail: dict[str, dict[str, Any]] = {"valid": {}, "test": {}}
    valid, detail["valid"]["lists"] = evaluate_with_lists(
        plan.model, data, "valid", ks, list_k=REPORT_LIST_K, known=known.get("valid"), detail=detail["valid"]
    )
    test, lists = evaluate_with_lists(
        plan.model, data, "test", ks, list_k=REPORT_LIST_K, known=known.get("test"), detail=detail["test"]
    )
    detail["test"]["lists"] = lists
    if plan.record is not None:
        plan.record["rescored_users"] = {p: int(d["scored"]) for p, d in detail.items()}
    return TrainResult(
        run_id=uuid.uuid4().hex,
        model_name=plan.name,
        params=plan.model.params(),
        valid=valid,
        test=test,
        train_seconds=0.0,
        model=plan.model,
        test_lists=lists,
        eval_detail=detail,
    )


EVAL_CACHE = "eval_cache.npz"
"""Bundle file: each evaluated user's target ranks and lists, and a key of their history."""


def history_keys(data: SplitData) -> np.ndarray:
    """Per user, a checksum of their train, valid and test items in order: equal keys, the
    same split for that user (item indices are the same on a reused catalogue).

    ``key = ((K·31 + 7 + S_train)·31 + 8 + S_valid)·31 + 9 + S_test`` in uint64 arithmetic
    (wrapping), ``S_part`` the sum over the part's items of ``(item + 1)·position·P``: one
    pass over every part's items at once (a loop over 160,000 users cost seconds)."""
    keys = np.full(data.n_users, 1469598103934665603, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for code, part in enumerate((data.train, data.valid, data.test)):
            lengths = np.fromiter((len(h) for h in part), dtype=np.int64, count=data.n_users)
            items = np.concatenate([*part, np.zeros(0, np.int64)]).astype(np.uint64) + np.uint64(1)
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            position = (np.arange(len(items), dtype=np.int64) - starts + 1).astype(np.uint64)
            terms = items * position * np.uint64(1099511628211)
            sums = np.zeros(data.n_users, dtype=np.uint64)
            np.add.at(sums, np.repeat(np.arange(data.n_users), lengths), terms)
            keys = keys * np.uint64(31) + np.uint64(code + 7) + sums
    return keys


def save_eval_cache(path: Path, data: SplitData, result: TrainResult) -> Path | None:
    """Write ``result``'s per-user evaluation (``TrainResult.eval_detail``) to ``path``."""
    if not result.eval_detail:
        return None
    arrays: dict[str, np.ndarray] = {"user_ids": data.user_ids.astype(str), "keys": history_keys(data)}
    for part, detail in result.eval_detail.items():
        ranks = detail["ranks"]
        offsets = np.zeros(len(ranks) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in ranks], out=offsets[1:])
        arrays[f"{part}_users"] = detail["users"]
        arrays[f"{part}_ranks"] = np.concatenate([*ranks, np.zeros(0)]).astype(np.float64)  # inf: unranked
        arrays[f"{part}_offsets"] = offsets
        arrays[f"{part}_lists"] = detail["lists"]
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy types the keywords as allow_pickle
    return path


def known_users(path: Path, data: SplitData) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per part, tonight's user index → (target ranks, list) from the cache at ``path`` for
    every cached user whose history is unchanged; empty when there is no cache."""
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as cache:
        tonight = {str(u): i for i, u in enumerate(data.user_ids)}
        keys = history_keys(data)
        cached_ids = cache["user_ids"]
        same = np.array(
            [
                (i := tonight.get(str(uid))) is not None and keys[i] == key
                for uid, key in zip(cached_ids, cache["keys"], strict=True)
            ],
            dtype=bool,
        )
        out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        for part in ("valid", "test"):
            if f"{part}_users" not in cache:
                continue
            users, ranks, offsets, lists = (
                cache[f"{part}_{k}"] for k in ("users", "ranks", "offsets", "lists")
            )
            out[part] = {
                tonight[str(cached_ids[u])]: (ranks[offsets[row] : offsets[row + 1]], lists[row])
                for row, u in enumerate(users)
                if same[u]
            }
    return out
