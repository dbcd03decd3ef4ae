"""Offline evaluation of several models on one split, printed and written as JSON.

``make eval`` runs this on MovieLens-100K: all ratings as positives, no filtering,
leave-last-out by timestamp (file order breaks ties), full ranking, training items excluded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.eval_report import report_for_models
from tasks.features import load_item_features
from tasks.load import load_source
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, kcore_filter, make_splits
from tasks.training import TrainResult, load_split_data, protocol, record_run, train_and_evaluate

# Each model's candidate parameters; the one with the best validation NDCG@10 is reported
# on test (selection never looks at test). A label other than a registered model name
# names its model with a "model" entry (two user towers of the same two-tower model).
TORCH = {"threads": 1, "progress": True}
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "itemknn": [{"neighbors": 100, "shrink": 0.0}],
    "itemknn-recency": [
        {"neighbors": n, "shrink": 0.0, "decay": d}
        for n in (100, 300)
        for d in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
    ],
    "neumf": [{**TORCH, "epochs": 30}],
    "two-tower-gru": [{**TORCH, "model": "two-tower", "encoder": "gru", "lr": 4e-3, "epochs": 80}],
    # self-attention learns slower here (still improving after 60 epochs at 2e-3)
    "two-tower-attention": [
        {**TORCH, "model": "two-tower", "encoder": "attention", "lr": 2e-3, "epochs": 100}
    ],
}


def run_evaluation(
    settings: Settings, models: dict[str, list[dict[str, Any]]] | None = None, out: Path | None = None
) -> dict[str, Any]:
    """Load (idempotent), filter, split; per model pick parameters on validation, report test."""
    models = models or CANDIDATES
    ks = sorted(set(settings.eval.ks) | {10})
    results: list[TrainResult] = []
    with open_warehouse(settings.warehouse_path) as con:
        load_source(con, settings)
        kcore_filter(con, settings.kcore.user_k, settings.kcore.item_k, events=settings.events)
        make_splits(con, KCORE_TABLE, settings.eval.temporal_cut_quantile)
        data = load_split_data(
            con, LEAVE_LAST_OUT, KCORE_TABLE, restrict_items_to_table=settings.kcore.item_k > 0
        )
        data.item_features = load_item_features(
            con, data, settings.embedding if settings.embedding.enabled else None
        )
        proto = protocol(data, ks, settings.kcore.model_dump())
        tuning: dict[str, float] = {}
        labels: dict[int, str] = {}
        for label, grid in models.items():
            tried = [
                train_and_evaluate(
                    data, p.get("model", label), {k: v for k, v in p.items() if k != "model"}, ks
                )
                for p in grid
            ]
            for result in tried:
                record_run(con, result, proto, "evaluation", None)
            best = max(tried, key=lambda r: r.valid["ndcg@10"])
            labels[id(best)] = label
            results.append(best)
            tuning[label] = round(sum(r.train_seconds for r in tried), 3)
    report = {
        "dataset": settings.catalogue,
        "protocol": proto,
        "models": {
            labels[id(r)]: {
                **r.test,
                "train_seconds": r.train_seconds,
                "tuning_train_seconds": tuning[labels[id(r)]],
                "candidates": len(models[labels[id(r)]]),
                "model": r.model_name,
                "params": r.params,
                **_curve(r.model),
            }
            for r in results
        },
        "valid": {labels[id(r)]: r.valid for r in results},
        "selection": "per model, the candidate parameters with the best validation ndcg@10",
    }
    out = out or settings.eval_dir / f"{settings.catalogue}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    # Plots people would rather see than read: metric by K, popularity, coverage, curves.
    report_for_models(
        report,
        data,
        {labels[id(r)]: r.model for r in results},
        out.parent / "report",
        title=f"recflow eval: {settings.catalogue}",
    )
    return report


def _curve(model: Any) -> dict[str, Any]:
    """Torch models' training curves (epoch, loss, validation NDCG@10, seconds)."""
    if not hasattr(model, "training_curve"):
        return {}
    curve = model.training_curve()
    best = max(
        (c for c in curve if c.get("val_ndcg10") is not None), key=lambda c: c["val_ndcg10"], default=None
    )
    return {"training_curve": curve, "best_epoch": best["epoch"] if best else None, "epochs_run": len(curve)}


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(
        title=f"{report['dataset']} — test, {report['protocol']['split']}, full ranking "
        f"({report['protocol']['users']} users × {report['protocol']['items']} items)"
    )
    columns = ["hr@10", "ndcg@10", "mrr@10", "recall@10", "coverage@10", "novelty@10", "train_seconds"]
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    for name, metrics in report["models"].items():
        table.add_row(
            name, *(f"{metrics[c]:.4f}" if c != "train_seconds" else f"{metrics[c]:.1f}s" for c in columns)
        )
    console.print(table)
