"""The evaluation report: a markdown page with PNG plots, for the Prefect UI and the bundle.

Input is what evaluation already produces — the results dict of
``tasks/report.py::run_evaluation`` (``models`` → test metrics like ``ndcg@10``) — plus each
model's top-K lists (item indices, best first) and, for torch models, their
``training_curve()``. Output is a directory with ``report.md`` (images linked as files, for
the bundle) and the PNGs, and a self-contained markdown string (images as base64 data URIs)
for a Prefect markdown artifact: the Prefect 3.8 UI renders markdown images with a plain
``<img src>``, so data URIs show without any file server.

Tables: test HR, NDCG, MRR, recall, precision, MAP, coverage, novelty and intra-list
diversity at 10 per model on leave-last-out (with validation NDCG@10, what chose the
parameters), and the same on the global temporal split when the results have it
(``temporal``). Plots: metric by K per model; popularity of recommended items against the
catalogue (share of recommendations per popularity decile); catalogue coverage by K;
training curves. For a catalogue with side features (books), a diagnostics section
(``tasks/side_diagnostics.py``: embedding norms, neighbour category cohesion, Pearson r and p
between scores and features), also written as ``diagnostics.json``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from models.base import Recommender
from models.metrics import mask_seen
from models.ranking import NO_ITEM, top_k
from tasks.side_diagnostics import diagnostics_markdown, side_diagnostics
from tasks.training import Part, SplitData, evaluated_users, list_tiebreak

RANK_METRICS = ("ndcg", "hr", "mrr", "recall", "precision", "map", "diversity")
TABLE_METRICS = (
    "hr@10",
    "ndcg@10",
    "mrr@10",
    "recall@10",
    "precision@10",
    "map@10",
    "coverage@10",
    "novelty@10",
    "diversity@10",
)
REPORT_MD = "report.md"
DPI = 90


@dataclass(frozen=True)
class EvalReport:
    directory: Path
    markdown: str
    """The report with images as data URIs: self-contained, for a Prefect artifact."""
    files: list[Path]
    """``report.md`` and the PNGs written into ``directory``."""


def recommendation_lists(
    model: Recommender, data: SplitData, part: Part = "test", k: int = 100, batch_size: int = 1024
) -> np.ndarray:
    """Top-``k`` item indices for every user with a target in ``part``, seen items masked,
    scored from the same history the evaluation uses (train for valid, train+valid for test)
    and cut by the same rule (:func:`tasks.training.list_tiebreak`).
    Rows with fewer than ``k`` unseen items are padded with ``NO_ITEM``."""
    history_parts: tuple[str, ...] = ("train",) if part == "valid" else ("train", "valid")
    histories = data.histories(history_parts)
    users = evaluated_users(data, part)
    k = min(k, data.n_items)
    tiebreak = list_tiebreak(data, part)
    out = np.zeros((len(users), k), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = [histories[u] for u in users[start : start + batch_size]]
        scores = model.score(batch)
        mask_seen(scores, batch)
        out[start : start + len(batch)] = top_k(scores, k, tiebreak=tiebreak)
    return out


def metric_ks(metrics: Mapping[str, Any], name: str) -> list[int]:
    return sorted(int(key.split("@")[1]) for key in metrics if key.startswith(f"{name}@"))


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_metric_by_k(models: Mapping[str, Mapping[str, Any]], path: Path, split: str = "test") -> Path:
    names = [m for m in RANK_METRICS if any(metric_ks(v, m) for v in models.values())]
    cols = min(max(len(names), 1), 4)
    rows = -(-max(len(names), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax, metric in zip(flat, names, strict=False):
        for model, values in models.items():
            ks = metric_ks(values, metric)
            if ks:
                ax.plot(ks, [values[f"{metric}@{k}"] for k in ks], marker="o", label=model)
        ax.set_title(f"{metric.upper() if metric != 'diversity' else 'diversity'}@K ({split})")
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    for ax in flat[len(names) :]:
        ax.set_visible(False)
    flat[0].legend(fontsize=7)
    return _save(fig, path)


def popularity_deciles(recommended: np.ndarray, popularity: np.ndarray, k: int) -> np.ndarray:
    """Share of top-``k`` recommendations per catalogue popularity decile (0 = most popular)."""
    order = np.argsort(-popularity, kind="stable")
    decile = np.empty(len(popularity), dtype=np.int64)
    decile[order] = np.arange(len(popularity)) * 10 // max(len(popularity), 1)
    listed = recommended[:, :k].ravel()
    counts = np.bincount(decile[listed[listed != NO_ITEM]], minlength=10).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def plot_popularity(
    recommendations: Mapping[str, np.ndarray], popularity: np.ndarray, k: int, path: Path
) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(len(recommendations) + 1, 1)
    x = np.arange(10)
    ax.bar(x, np.full(10, 0.1), width, label="catalogue (every item once)", color="lightgray")
    for i, (model, recs) in enumerate(recommendations.items(), start=1):
        ax.bar(x + i * width, popularity_deciles(recs, popularity, k), width, label=model)
    ax.set_xticks(x + width * len(recommendations) / 2, [f"{10 * d}-{10 * d + 10}%" for d in x], fontsize=7)
    ax.set_xlabel("item popularity decile (training interactions; most popular first)")
    ax.set_ylabel(f"share of top-{k} recommendations")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def coverage_by_k(recommended: np.ndarray, n_items: int, ks: Sequence[int]) -> list[float]:
    """Share of the catalogue appearing in at least one user's top K, for each K: what
    ``models.metrics.coverage`` gives for each, in one pass (each item's first column in any
    list) rather than a ``unique`` per K (the report asks for every K up to 50)."""
    listed = recommended != NO_ITEM
    width = recommended.shape[1] if recommended.ndim == 2 else 0
    if width == 0 or not listed.any():
        return [0.0 for _ in ks]
    items = recommended[listed]
    first = np.full(int(items.max()) + 1, width, dtype=np.int64)
    np.minimum.at(first, items, np.broadcast_to(np.arange(width), recommended.shape)[listed])
    seen_by = np.cumsum(np.bincount(first, minlength=width + 1))  # [c]: items first listed at <= c
    return [float(seen_by[min(k, width) - 1]) / max(n_items, 1) if k > 0 else 0.0 for k in ks]


def plot_coverage(recommendations: Mapping[str, np.ndarray], n_items: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for model, recs in recommendations.items():
        ks = list(range(1, recs.shape[1] + 1))
        ax.plot(ks, coverage_by_k(recs, n_items, ks), label=model)
    ax.set_xlabel("K")
    ax.set_ylabel("catalogue coverage")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_training_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(8, 3.2))
    for model, curve in curves.items():
        epochs = [row["epoch"] for row in curve]
        loss_ax.plot(epochs, [row["loss"] for row in curve], marker="o", label=model)
        val = [(row["epoch"], row["val_ndcg10"]) for row in curve if row.get("val_ndcg10") is not None]
        if val:
            val_ax.plot(*zip(*val, strict=True), marker="o", label=model)
    loss_ax.set_title("training loss")
    val_ax.set_title("validation NDCG@10")
    for ax in (loss_ax, val_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _metrics_table(
    models: Mapping[str, Mapping[str, Any]], valid: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """One row per model: validation NDCG@10 when ``valid`` is given, then the test measures."""
    nan = float("nan")
    head = "| model | " + ("valid ndcg@10 | " if valid is not None else "")
    head += " | ".join(f"test {c}" for c in TABLE_METRICS) + " | fit |\n"
    head += "|---|" + "---:|" * (len(TABLE_METRICS) + 1 + (valid is not None)) + "\n"
    rows = []
    for name, m in models.items():
        first = f"{float(valid.get(name, {}).get('ndcg@10', nan)):.4f} | " if valid is not None else ""
        cells = " | ".join(f"{float(m.get(c, nan)):.4f}" for c in TABLE_METRICS)
        fit = m.get("train_seconds")
        rows.append(f"| {name} | {first}{cells} | {'' if fit is None else f'{float(fit):.1f} s'} |")
    return head + "\n".join(rows) + "\n"


def _temporal_section(temporal: Mapping[str, Any]) -> str:
    """The temporal protocol's table, or nothing when the results do not have it."""
    models = temporal.get("models", {})
    if not models:
        return ""
    proto = temporal.get("protocol", {})
    return (
        f"\n## Global temporal split\n\nOne cut at the {proto.get('cut_quantile', '?')} quantile of "
        f"timestamps; the {proto.get('test_interactions', '?')} later interactions of "
        f"{proto.get('test_users', '?')} users with earlier history are the test targets "
        f"({proto.get('cold_users_left_out', '?')} users without any left out). No validation part: "
        "each model keeps the parameters leave-last-out's validation chose, refitted on the "
        "interactions before the cut.\n\n" + _metrics_table(models)
    )


def write_eval_report(
    results: Mapping[str, Any],
    recommendations: Mapping[str, np.ndarray],
    popularity: np.ndarray,
    out_dir: Path,
    curves: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    title: str | None = None,
    notes: str = "",
    diagnostics: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Write ``report.md`` and the PNGs into ``out_dir``; return the self-contained markdown too.

    ``results`` is ``run_evaluation``'s dict (``models`` → test metrics, ``valid`` → valid
    metrics, ``protocol``, optionally ``temporal``); ``recommendations`` maps a model to its
    test top-K lists; ``popularity`` is the training interaction count per item index.
    """
    models: Mapping[str, Mapping[str, Any]] = results.get("models", {})
    if not models:
        raise ValueError("results['models'] is empty: nothing to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    n_items = len(popularity)
    k_pop = min(10, *(r.shape[1] for r in recommendations.values())) if recommendations else 10
    plots: list[tuple[str, Path]] = [
        ("Metrics by K (test, leave-last-out)", plot_metric_by_k(models, out_dir / "metric_by_k.png")),
    ]
    if recommendations:
        plots.append(
            (
                f"Popularity of recommended items (top {k_pop}) against the catalogue",
                plot_popularity(recommendations, popularity, k_pop, out_dir / "popularity.png"),
            )
        )
        plots.append(
            ("Catalogue coverage by K", plot_coverage(recommendations, n_items, out_dir / "coverage.png"))
        )
    real_curves = {m: c for m, c in (curves or {}).items() if c}
    if real_curves:
        plots.append(("Training curves", plot_training_curves(real_curves, out_dir / "training_curves.png")))
    proto = results.get("protocol", {})
    header = (
        f"# {title or 'Evaluation report'}\n\n"
        f"Dataset `{results.get('dataset', '?')}`, split `{proto.get('split', '?')}`, "
        f"{proto.get('mode', 'full ranking')}; {proto.get('users', '?')} users × {proto.get('items', '?')} "
        f"items.\n\n{notes + chr(10) + chr(10) if notes else ''}"
        + _metrics_table(models, results.get("valid", {}))
    )
    coverage_lines = "".join(
        f"- {m}: coverage@10 {coverage_by_k(r, n_items, [min(10, r.shape[1])])[0]:.3f}, "
        f"coverage@{r.shape[1]} {coverage_by_k(r, n_items, [r.shape[1]])[0]:.3f}, "
        f"share of top-{k_pop} from the 10 % most popular items "
        f"{popularity_deciles(r, popularity, k_pop)[0]:.3f}\n"
        for m, r in recommendations.items()
    )
    as_files = header + "\n" + coverage_lines + _temporal_section(results.get("temporal", {}))
    extra_files: list[Path] = []
    if diagnostics:
        as_files += diagnostics_markdown(diagnostics)
        extra_files.append(out_dir / "diagnostics.json")
        extra_files[-1].write_text(json.dumps(diagnostics, indent=2))
    as_artifact = as_files
    for caption, path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        as_files += f"\n## {caption}\n\n![{caption}]({path.name})\n"
        as_artifact += f"\n## {caption}\n\n![{caption}](data:image/png;base64,{data})\n"
    (out_dir / REPORT_MD).write_text(as_files)
    return EvalReport(out_dir, as_artifact, [out_dir / REPORT_MD, *(p for _, p in plots), *extra_files])


def report_for_models(
    results: Mapping[str, Any],
    data: SplitData,
    models: Mapping[str, Recommender],
    out_dir: Path,
    k: int = 50,
    title: str | None = None,
    notes: str = "",
    lists: Mapping[str, np.ndarray | None] | None = None,
) -> EvalReport:
    """The report for fitted models on ``data``: their test top-K lists and
    ``training_curve()`` where a model has it. The one call the evaluation and flows need.

    ``lists`` holds lists evaluation already computed (``TrainResult.test_lists``, at least
    ``k`` long, same users): a model found there is not scored again."""
    given = lists or {}
    recommendations = {
        name: (
            given_lists[:, : min(k, data.n_items)]
            if (given_lists := given.get(name)) is not None and given_lists.shape[1] >= min(k, data.n_items)
            else recommendation_lists(model, data, "test", k)
        )
        for name, model in models.items()
    }
    curves = {
        name: model.training_curve()  # type: ignore[attr-defined]
        for name, model in models.items()
        if callable(getattr(model, "training_curve", None))
    }
    popularity = np.bincount(
        np.concatenate([*data.train, np.zeros(0, np.int64)]), minlength=data.n_items
    ).astype(np.float64)
    diagnostics = side_diagnostics(models, data)
    return write_eval_report(results, recommendations, popularity, out_dir, curves, title, notes, diagnostics)
