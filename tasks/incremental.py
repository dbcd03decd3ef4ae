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
from models.ranking import NO_ITEM
from models.registry import build_model, load_model
from storage.artifacts import ArtifactStore
from tasks.train_models import is_torch_model
from tasks.training import REPORT_LIST_K, EvalEntry, SplitData, TrainResult, evaluate_with_lists

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

    A user whose history and targets on a part are ones the live bundle's evaluation saw
    (its :data:`EVAL_CACHE`, in ``store``; on either part: a user with one new event is
    validated tonight as they were tested last night) keeps those ranks and list scores,
    the list re-ordered by tonight's tie-break; only the others are scored (how many:
    ``plan.record["rescored_users"]``), on two threads unless the model is a torch one."""
    if plan.model is None or plan.name is None:
        raise ValueError(f"nothing to reuse: {plan.reason}")
    live = (plan.record or {}).get("live")
    known = known_entries(store.root / live / EVAL_CACHE) if store is not None and live else {}
    workers = 1 if is_torch_model(plan.model) else 2  # scipy's products release the GIL
    detail: dict[str, dict[str, Any]] = {"valid": {}, "test": {}}
    counts: dict[tuple[str, ...], np.ndarray] = {}  # item popularity, shared by the two parts
    scored: dict[str, dict[str, float]] = {}
    for part in ("valid", "test"):
        scored[part], detail[part]["lists"] = evaluate_with_lists(
            plan.model,
            data,
            part,
            ks,
            list_k=REPORT_LIST_K,
            known=known,
            detail=detail[part],
            workers=workers,
            counts=counts,
        )
    valid, test, lists = scored["valid"], scored["test"], detail["test"]["lists"]
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
"""Bundle file: each evaluated (user, part)'s :func:`tasks.training.eval_key`, target ranks,
top list and list scores."""


def save_eval_cache(path: Path, data: SplitData, result: TrainResult) -> Path | None:
    """Write ``result``'s per-user evaluation (``TrainResult.eval_detail``) to ``path``: one
    entry per evaluated user and part, the parts one after the other."""
    parts = [d for d in result.eval_detail.values() if "keys" in d]
    if not parts:
        return None
    width = max(d["lists"].shape[1] for d in parts)
    ranks = [r for d in parts for r in d["ranks"]]
    offsets = np.zeros(len(ranks) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in ranks], out=offsets[1:])

    def padded(block: np.ndarray, columns: int, fill: float) -> np.ndarray:
        out = np.full((block.shape[0], columns), fill, dtype=block.dtype)
        out[:, : block.shape[1]] = block
        return out

    np.savez(
        path,
        user_ids=np.concatenate([data.user_ids[d["users"]].astype(str) for d in parts]),
        keys=np.concatenate([d["keys"] for d in parts]),
        ranks=np.concatenate([*ranks, np.zeros(0)]).astype(np.float64),  # inf: unranked
        offsets=offsets,
        lists=np.concatenate([padded(d["lists"], width, NO_ITEM) for d in parts]),
        list_scores=np.concatenate([padded(d["list_scores"], width + 1, -np.inf) for d in parts]),
    )
    return path


def known_entries(path: Path) -> dict[tuple[str, int], EvalEntry]:
    """The cache at ``path`` as :func:`tasks.training.evaluate_with_lists`'s ``known``:
    (user id, key) → (target ranks, list, list scores); empty without a cache, or with one
    written before list scores were kept (its lists cannot be re-cut exactly)."""
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as cache:
        if "list_scores" not in cache:
            return {}
        user_ids, keys, ranks, offsets, lists, scores = (
            cache[k] for k in ("user_ids", "keys", "ranks", "offsets", "lists", "list_scores")
        )
    return {
        (str(uid), int(key)): (ranks[offsets[row] : offsets[row + 1]], lists[row], scores[row])
        for row, (uid, key) in enumerate(zip(user_ids, keys, strict=True))
    }
