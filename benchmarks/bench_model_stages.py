"""The nightly's model stages at a given size: seconds (wall and CPU) and peak memory each.

``python -m benchmarks.bench_model_stages --ratings 1000000 5000000`` fills a throwaway
warehouse per size with synthetic ratings (about 154 per user, a long-tailed item
popularity, users drawn to two of 50 item clusters; items grow as the square root of the
size up to ML-25M's 62,000) and runs what ``train-evaluate-publish`` runs, with the
settings' defaults:

1. a full night on 99 % of the ratings: ``load_split_data``, the evaluation sample
   (``eval.max_users``), the candidate's fit and evaluation, the serving refit (only up to
   ``model.refit_max_interactions``), the report (from the evaluation's lists), the live
   model's gate score, ``publish_bundle``;
2. the next night, with the newest 1 % added: the same stages, reusing the live fit
   (``tasks/incremental.py``) instead of fitting.

The data stages (load from CSV, validation, k-core, splits) are not timed here. CPU seconds
are the process's (comparable on a shared machine); peak resident memory is sampled every
50 ms within each stage. Prints one table; ``--out`` writes it as JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from storage.artifacts import ArtifactStore
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.eval_report import report_for_models
from tasks.incremental import (
    EVAL_CACHE,
    SERVING_FIT_ALL,
    SERVING_FIT_TRAIN,
    plan_reuse,
    reused_result,
    save_eval_cache,
)
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, make_splits
from tasks.publish import LiveScore, build_manifest, live_score, publish_bundle
from tasks.training import (
    TrainResult,
    fit_for_serving,
    load_split_data,
    protocol,
    sample_eval_users,
    train_and_evaluate,
)

T = TypeVar("T")


def synthetic_ratings(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` ratings (about): user, item, timestamp columns, each user's in time order."""
    rng = np.random.default_rng(seed)
    n_users = max(n // 154, 100)
    n_items = int(min(62_000, 62_000 * (n / 25e6) ** 0.5))
    lengths = np.maximum(20, rng.lognormal(np.log(70), 1.0, n_users)).astype(np.int64)
    lengths = (lengths * n / lengths.sum()).astype(np.int64) + 1
    total = int(lengths.sum())
    clusters = 50
    item_cluster = rng.integers(0, clusters, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    rng.shuffle(popularity)
    users = np.repeat(np.arange(n_users), lengths)
    items = rng.choice(n_items, size=total, p=popularity / popularity.sum())
    favourite = rng.integers(0, clusters, (n_users, 2))
    drawn = rng.random(total) < 0.7
    by_cluster = np.argsort(item_cluster, kind="stable")
    bounds = np.searchsorted(item_cluster[by_cluster], np.arange(clusters + 1))
    chosen = favourite[users, rng.integers(0, 2, total)][drawn]
    lo, hi = bounds[chosen], bounds[chosen + 1]
    position = lo + ((hi - lo) * rng.random(len(chosen)) ** 2).astype(np.int64)
    items[drawn] = by_cluster[np.minimum(position, hi - 1)]
    ts = rng.permutation(1_000_000_000 + np.cumsum(rng.integers(1, 60, total)))
    ends = np.cumsum(lengths)
    ts = np.concatenate([np.sort(ts[s:e]) for s, e in zip(np.r_[0, ends[:-1]], ends, strict=True)])
    return {"user": users + 1, "item": items + 1, "ts": ts, "n_items": np.array([n_items])}


def fill(path: Path, ratings: dict[str, np.ndarray], keep: np.ndarray) -> None:
    """The warehouse's items, ``interactions_kcore`` (the ``keep`` rows) and its splits."""
    with open_warehouse(path) as con:
        if not con.execute("SELECT count(*) FROM items").fetchall()[0][0]:
            ids = pa.table({"item_id": [str(i + 1) for i in range(int(ratings["n_items"][0]))]})
            con.register("new_items", ids)
            con.execute(
                "INSERT INTO items (item_id, title) SELECT item_id, 'Item ' || item_id FROM new_items"
            )
        rows = pa.table(
            {
                "user_id": ratings["user"][keep],
                "item_id": ratings["item"][keep],
                "ts": ratings["ts"][keep],
                "seq": np.flatnonzero(keep),
            }
        )
        con.register("rows", rows)
        con.execute(
            f"CREATE OR REPLACE TABLE {KCORE_TABLE} AS SELECT 'e' || seq AS event_id, "
            "CAST(user_id AS VARCHAR) AS user_id, CAST(item_id AS VARCHAR) AS item_id, "
            "'rating' AS event_type, 4.0 AS value, ts, seq FROM rows"
        )
        make_splits(con, KCORE_TABLE)


class Stages:
    """Times stages: wall and CPU seconds, peak resident memory sampled every 50 ms."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._peak = 0
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while True:
            self._peak = max(self._peak, self._rss())
            time.sleep(0.05)

    def run(self, night: str, stage: str, fn: Callable[[], T]) -> T:
        self._peak = self._rss()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.rows.append(
            {
                "night": night,
                "stage": stage,
                "wall_s": round(time.perf_counter() - wall, 2),
                "cpu_s": round(time.process_time() - cpu, 2),
                "peak_gib": round(max(self._peak, self._rss()) / 2**30, 2),
            }
        )
        print("  ".join(f"{v}" for v in self.rows[-1].values()), flush=True)
        return out


def night(
    stages: Stages, label: str, warehouse: Path, store: ArtifactStore, settings: Settings, name: str
) -> dict[str, Any]:
    """One night's model stages, as ``flows/nightly.py::train_publish_task`` runs them."""
    import duckdb

    ks = list(settings.eval.ks)
    with duckdb.connect(str(warehouse)) as con:
        data = stages.run(
            label,
            "load_split_data",
            lambda: load_split_data(
                con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=settings.kcore.item_k > 0
            ),
        )
        sample_eval_users(data, settings.eval.max_users, settings.model.seed)
        proto = protocol(data, ks, settings.kcore.model_dump())
        params = settings.config_of(name).model_dump()
        plan = plan_reuse(
            store, {name: params}, data, settings.model.reuse_max_new_share, settings.model.reuse_max_nights
        )
        result: TrainResult
        if plan.model is not None:
            result = stages.run(label, "evaluate reused fit", lambda: reused_result(plan, data, ks, store))
            live = LiveScore(store.current_version(), result.valid, "rescored", plan.reason)
            serving, serving_fit = result.model, SERVING_FIT_TRAIN
        else:
            result = stages.run(
                label, f"fit + evaluate {name}", lambda: train_and_evaluate(data, name, params, ks)
            )
            limit = settings.model.refit_max_interactions
            if limit is None or data.n_interactions <= limit:
                serving = stages.run(
                    label, "serving refit", lambda: fit_for_serving(data, name, result.params)
                )
                serving_fit = SERVING_FIT_ALL
            else:
                serving, serving_fit = result.model, SERVING_FIT_TRAIN
            live = stages.run(label, "gate: live model scored", lambda: live_score(store, data, ks))
        with tempfile.TemporaryDirectory() as tmp:
            report = stages.run(
                label,
                "report",
                lambda: report_for_models(
                    {"models": {name: result.test}},
                    data,
                    {name: result.model},
                    Path(tmp) / "r",
                    lists={name: result.test_lists},
                ),
            )
            saved = save_eval_cache(Path(tmp) / EVAL_CACHE, data, result)
            cache = {EVAL_CACHE: saved} if saved else {}
            manifest = build_manifest(
                catalogue="bench",
                source_run=None,
                result=result,
                proto=proto,
                fingerprint=label,
                extra={"serving_fit": serving_fit, **({"reused": plan.record} if plan.record else {})},
            )
            stages.run(
                label,
                "publish_bundle",
                lambda: publish_bundle(
                    store,
                    con,
                    data,
                    serving,
                    manifest,
                    attachments={"report": report.directory, **cache},
                    live_scored=live,
                ),
            )
    return {
        "users": data.n_users,
        "items": data.n_items,
        "interactions": data.n_interactions,
        "evaluated_users": int(result.test["users_evaluated"]),
        "valid_ndcg@10": result.valid.get("ndcg@10"),
        "reused": plan.model is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratings", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--model", default=Settings().model.name)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    settings = Settings()
    report: dict[str, Any] = {}
    for n in args.ratings:
        print(f"== {n:,} ratings, model {args.model}: night stage wall_s cpu_s peak_gib", flush=True)
        ratings = synthetic_ratings(n)
        newest = np.argsort(ratings["ts"], kind="stable")[-max(len(ratings["ts"]) // 100, 1) :]
        first = np.ones(len(ratings["ts"]), dtype=bool)
        first[newest] = False
        stages = Stages()
        with tempfile.TemporaryDirectory(prefix="bench-model-stages-") as tmp:
            warehouse, store = Path(tmp) / "w.duckdb", ArtifactStore(Path(tmp) / "bundles")
            fill(warehouse, ratings, first)
            full = night(stages, "full", warehouse, store, settings, args.model)
            fill(warehouse, ratings, np.ones(len(first), dtype=bool))
            plus = night(stages, "+1%", warehouse, store, settings, args.model)
        totals = {
            label: round(sum(r["cpu_s"] for r in stages.rows if r["night"] == label), 2)
            for label in ("full", "+1%")
        }
        print(
            f"CPU seconds: full night {totals['full']}, +1 % night {totals['+1%']} "
            f"({totals['+1%'] / max(totals['full'], 1e-9):.0%} of full)",
            flush=True,
        )
        report[str(n)] = {"full": full, "+1%": plus, "stages": stages.rows, "cpu_totals": totals}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
