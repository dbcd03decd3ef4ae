"""Offline comparison of news models on impression logs (persona logs or MIND).

Every model is judged the same way: for each held-out impression, score the shown stories
given the user's earlier clicks, then MIND's impression metrics (AUC, MRR, nDCG@5,
nDCG@10, averaged over impressions). The baselines are what a news site without a model
would do: popularity (clicks in the training log) and text similarity (the stories whose
all-MiniLM-L6-v2 vectors are closest to the mean of the user's clicked stories).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.base import histories_to_csr
from models.impression_metrics import impression_metrics
from models.nrms import Impression, NRMSModel

if TYPE_CHECKING:
    import duckdb

    from demo.stories import DemoStory


@dataclass(frozen=True)
class ItemIndex:
    """Original item ids ↔ dense indices ``0..n-1``."""

    ids: np.ndarray

    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> ItemIndex:
        return cls(np.asarray([str(i) for i in ids], dtype=object))

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self) -> dict[str, int]:
        return {str(i): n for n, i in enumerate(self.ids)}


def log_to_impressions(log: pd.DataFrame, index: ItemIndex) -> list[Impression]:
    """Impression rows (history, shown, clicked as lists of ids/bools) → index form.

    An id missing from the catalogue is an error naming the impression: evaluating on
    stories the model cannot see would silently change the task.
    """
    position = index.lookup()
    out = []
    for imp_id, history, shown, clicked in zip(
        log["impression_id"], log["history"], log["shown"], log["clicked"], strict=True
    ):
        try:
            hist = np.fromiter((position[str(i)] for i in history), dtype=np.int64)
            shown_idx = np.fromiter((position[str(i)] for i in shown), dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"impression {imp_id}: item {exc.args[0]!r} is not in the item table") from None
        out.append(Impression(hist, shown_idx, np.asarray(clicked, dtype=bool)))
    return out


def click_histories(log: pd.DataFrame, index: ItemIndex) -> tuple[list[np.ndarray], list[str]]:
    """Each user's clicks in ``log``, in time order, as item indices (for fit's train matrix)."""
    position = index.lookup()
    per_user: dict[str, list[int]] = {}
    for user, shown, clicked in zip(log["user_id"], log["shown"], log["clicked"], strict=True):
        per_user.setdefault(str(user), []).extend(
            position[str(i)] for i, c in zip(shown, clicked, strict=True) if c
        )
    users = sorted(per_user)
    return [np.asarray(per_user[u], dtype=np.int64) for u in users], users


def popularity_counts(log: pd.DataFrame, index: ItemIndex) -> np.ndarray:
    """Clicks per item in ``log``: the popularity baseline's scores."""
    histories, _ = click_histories(log, index)
    counts = np.zeros(len(index), dtype=np.float64)
    for h in histories:
        np.add.at(counts, h, 1.0)
    return counts


def score_popularity(counts: np.ndarray, impressions: Sequence[Impression]) -> list[np.ndarray]:
    return [counts[imp.shown] for imp in impressions]


def score_text_similarity(vectors: np.ndarray, impressions: Sequence[Impression]) -> list[np.ndarray]:
    """Cosine of each shown story to the mean vector of the user's clicked stories (0 without
    history). ``vectors`` are L2-normalized text vectors, one row per item index."""
    scores = []
    for imp in impressions:
        if len(imp.history) == 0:
            scores.append(np.zeros(len(imp.shown)))
            continue
        profile = vectors[imp.history].mean(axis=0)
        scores.append(vectors[imp.shown] @ profile)
    return scores


def evaluate_scores(impressions: Sequence[Impression], scores: list[np.ndarray]) -> dict[str, float | int]:
    return impression_metrics([imp.clicked for imp in impressions], scores).as_dict()


def item_texts(items: pd.DataFrame) -> list[str]:
    """What NRMS and the text baseline read: the title, then the text (a persona item
    table's ``text`` or a warehouse item's ``description``)."""
    body_col = "text" if "text" in items.columns else "description"
    bodies = items[body_col] if body_col in items.columns else pd.Series([""] * len(items))
    return [
        f"{t}. {x}" if isinstance(x, str) and x else str(t)
        for t, x in zip(items["title"].fillna(""), bodies, strict=True)
    ]


def warehouse_impressions(
    con: duckdb.DuckDBPyConnection, index: ItemIndex, source: str | None = None
) -> list[Impression]:
    """The warehouse's impression log (MIND or personas) in item indices, for
    ``NRMSModel.fit(..., impressions=...)``; oldest first."""
    from tasks.impressions import read_impressions

    return log_to_impressions(read_impressions(con, source), index)


def demo_items(seed: int = 7, now: datetime | None = None) -> pd.DataFrame:
    """The demo feeds' stories as a persona item table, one item per story.

    A story carried by several outlets keeps its first-published article (headline and
    summary), the way the harvest collapses near-duplicates into one catalogue item.
    """
    from demo.stories import generate_stories

    first: dict[str, DemoStory] = {}
    for story in sorted(generate_stories(seed=seed, now=now), key=lambda s: (s.published, s.url)):
        first.setdefault(story.story_id, story)
    return pd.DataFrame(
        [(s.story_id, s.title, s.summary, s.topic, s.published) for s in first.values()],
        columns=["item_id", "title", "text", "topic", "published"],
    )


def compare_models(
    items: pd.DataFrame,
    train_log: pd.DataFrame,
    test_log: pd.DataFrame,
    nrms_params: dict[str, Any] | None = None,
    text_baseline: bool = True,
    valid_share: float = 0.1,
) -> dict[str, dict[str, Any]]:
    """Fit popularity, (optionally) text similarity and NRMS on ``train_log``; metrics of
    each on ``test_log``. NRMS keeps its best epoch on the last ``valid_share`` of the
    training impressions (by time), never on the test part."""
    index = ItemIndex.from_ids(items["item_id"].tolist())
    test = log_to_impressions(test_log, index)
    results: dict[str, dict[str, Any]] = {}

    started = time.perf_counter()
    counts = popularity_counts(train_log, index)
    results["popularity"] = {
        **evaluate_scores(test, score_popularity(counts, test)),
        "fit_seconds": time.perf_counter() - started,
    }

    texts = item_texts(items)
    if text_baseline:
        from models.text_encoder import encode

        started = time.perf_counter()
        vectors = encode(texts, "all-MiniLM-L6-v2", "cpu", 128, progress=True)
        results["text-similarity"] = {
            **evaluate_scores(test, score_text_similarity(vectors, test)),
            "fit_seconds": time.perf_counter() - started,
        }

    ordered = train_log.sort_values("ts", kind="stable")
    n_valid = int(len(ordered) * valid_share)
    fit_log, valid_log = ordered.iloc[: len(ordered) - n_valid], ordered.iloc[len(ordered) - n_valid :]
    histories, _ = click_histories(train_log, index)
    model = NRMSModel(**(nrms_params or {}))
    started = time.perf_counter()
    model.fit(
        histories_to_csr(histories, len(index)),
        histories,
        item_texts=texts,
        impressions=log_to_impressions(fit_log, index),
        valid_impressions=log_to_impressions(valid_log, index) if n_valid else None,
    )
    fit_seconds = time.perf_counter() - started
    results["nrms"] = {
        **evaluate_scores(test, model.score_impressions(test)),
        "fit_seconds": fit_seconds,
        "training_curve": model.training_curve(),
        "params": model.params(),
    }
    return results
