"""Diagnostics of models trained on a catalogue with side features (books).

Three questions the metric tables do not answer:

* **Embedding norms**: how long are the item vectors (``encode_items``), and do they grow
  with popularity (Pearson r of the norm against ``log1p`` of training interactions)? A
  strong correlation means the model encodes popularity in length, not direction.
* **Neighbour category cohesion**: of each item's ``k`` nearest neighbours by cosine in the
  model's item space, the share that has a category in common with it, beside the same share
  over all pairs of items (what a space ignorant of categories would give).
* **Scores against features**: Pearson r and its two-sided p-value between each item's mean
  score over the evaluated users and each side feature (numeric metadata, title statistics,
  and the most correlated authors and categories), so one sees what the model's ranking
  follows (ratings count? average rating? a genre?).

Models without ``encode_items`` get the score correlations only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from models.base import Recommender
from models.features import ItemFeatures
from tasks.training import SplitData

MAX_USERS = 1_000
"""Users whose scores are averaged (the first ones with a test target): bounded cost."""
MAX_QUERIES = 2_000
"""Items whose neighbours are checked for cohesion (evenly spaced over the catalogue)."""
HOT_FEATURES = 5
"""Author and category columns shown: the ones with the largest |r|."""


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Pearson r and two-sided p, or None when either side is constant (r undefined)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    result = stats.pearsonr(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return float(result.statistic), float(result.pvalue)


def category_cohesion(vectors: np.ndarray, categories: np.ndarray, k: int) -> dict[str, float] | None:
    """Share of the ``k`` cosine neighbours sharing a category with their item, and the same
    share over all pairs of categorised items; None without two categorised items."""
    has = categories.sum(axis=1) > 0
    idx = np.flatnonzero(has)
    if len(idx) < 2:
        return None
    k = min(k, len(idx) - 1)
    unit = vectors[idx] / np.maximum(np.linalg.norm(vectors[idx], axis=1, keepdims=True), 1e-12)
    cats = (categories[idx] > 0).astype(np.float32)
    queries = np.unique(np.linspace(0, len(idx) - 1, min(MAX_QUERIES, len(idx))).astype(np.int64))
    sims = unit[queries] @ unit.T
    sims[np.arange(len(queries)), queries] = -np.inf
    neighbours = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    shared = (cats[queries][:, None, :] * cats[neighbours]).sum(-1) > 0
    pair_share = (cats[queries] @ cats.T) > 0
    pair_share[np.arange(len(queries)), queries] = False
    baseline = pair_share.sum() / (len(queries) * (len(idx) - 1))
    return {"k": float(k), "neighbours": float(shared.mean()), "random_pairs": float(baseline)}


def model_diagnostics(
    model: Recommender, data: SplitData, features: ItemFeatures, k: int = 10
) -> dict[str, Any]:
    """Norms, cohesion and score-feature correlations of one fitted model (module docstring)."""
    assert features.side is not None
    out: dict[str, Any] = {}
    popularity = np.bincount(
        np.concatenate([*data.train, np.zeros(0, np.int64)]), minlength=data.n_items
    ).astype(np.float64)
    encode = getattr(model, "encode_items", None)
    if callable(encode):
        vectors = np.asarray(encode(), dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        with_pop = pearson(norms, np.log1p(popularity))
        out["norms"] = {
            "mean": float(norms.mean()),
            "std": float(norms.std()),
            "min": float(norms.min()),
            "max": float(norms.max()),
            "r_log_popularity": None if with_pop is None else with_pop[0],
            "p_log_popularity": None if with_pop is None else with_pop[1],
        }
        out["cohesion"] = category_cohesion(vectors, features.categories, k)
    users = [u for u in range(data.n_users) if len(data.test[u]) and len(data.train[u])][:MAX_USERS]
    correlations: list[dict[str, Any]] = []
    if users:
        item_score = np.asarray(model.score([data.train[u] for u in users]), np.float64).mean(axis=0)
        for j, name in enumerate(features.side_names):
            rp = pearson(item_score, features.side[:, j])
            if rp is not None:
                correlations.append({"feature": name, "r": rp[0], "p": rp[1]})
    dense = [c for c in correlations if c["feature"].startswith(("num:", "title:"))]
    hot = sorted(
        (c for c in correlations if c["feature"].startswith(("author:", "category:"))),
        key=lambda c: -abs(c["r"]),
    )[:HOT_FEATURES]
    out["score_feature_pearson"] = dense + hot
    out["users"] = len(users)
    return out


def side_diagnostics(models: Mapping[str, Recommender], data: SplitData, k: int = 10) -> dict[str, Any]:
    """Per model, :func:`model_diagnostics`; empty when the split has no side features."""
    features = data.item_features
    if features is None or features.side is None:
        return {}
    return {name: model_diagnostics(model, data, features, k) for name, model in models.items()}


def diagnostics_markdown(diagnostics: Mapping[str, Any]) -> str:
    """The report section: one block per model."""
    if not diagnostics:
        return ""
    text = (
        "\n## Side-feature diagnostics\n\nItem-vector norms (and their Pearson r with log "
        "popularity), the share of each item's nearest neighbours sharing a category with it "
        "against the share over all item pairs, and Pearson r (p) between each item's mean score "
        "and its side features.\n"
    )
    for name, d in diagnostics.items():
        text += f"\n### {name}\n\n"
        norms = d.get("norms")
        if norms:
            r = norms["r_log_popularity"]
            text += (
                f"- norms: mean {norms['mean']:.3f}, std {norms['std']:.3f}, "
                f"range {norms['min']:.3f}–{norms['max']:.3f}; r with log popularity "
                + (f"{r:+.3f} (p {norms['p_log_popularity']:.2g})" if r is not None else "undefined")
                + "\n"
            )
        cohesion = d.get("cohesion")
        if cohesion:
            text += (
                f"- category cohesion of the {int(cohesion['k'])} nearest neighbours: "
                f"{cohesion['neighbours']:.3f} (all pairs: {cohesion['random_pairs']:.3f})\n"
            )
        rows = d.get("score_feature_pearson", [])
        if rows:
            text += (
                f"\nMean score over {d['users']} users against side features:\n\n"
                "| feature | r | p |\n|---|---:|---:|\n"
            )
            text += "".join(f"| `{c['feature']}` | {c['r']:+.3f} | {c['p']:.2g} |\n" for c in rows)
    return text
