"""Offline comparison of news models on impression logs (persona logs or MIND).

Every model is judged the same way: for each held-out impression, score the shown stories
given the user's earlier clicks, then MIND's impression metrics (AUC, MRR, nDCG@5,
nDCG@10, averaged over impressions). The baselines are what a news site without a model
would do: popularity (clicks in the training log) and text similarity (the stories whose
all-MiniLM-L6-v2 vectors are closest to the mean of the user's clicked stories).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.base import histories_to_csr
from models.impression_metrics import impression_metrics
from models.lexicon import Lexicon
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


@dataclass(frozen=True)
class StackInputs:
    """Per-item facts the rank stage reads, in item indices."""

    text_vectors: np.ndarray
    """L2-normalized MiniLM vectors (the retrieval stage's text score)."""
    published_s: np.ndarray
    """Publication time, Unix seconds."""
    topics: np.ndarray
    """Topic index per item."""
    lexicon: Lexicon | None = None
    """Each item's words (the ranker's ``lexical`` feature), or None (feature 0)."""


def stack_inputs(items: pd.DataFrame, text_vectors: np.ndarray) -> StackInputs:
    published = pd.to_datetime(items["published"], utc=True)
    seconds = ((published - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(
        np.int64
    )
    topics = pd.Categorical(items["topic"].fillna("").astype(str)).codes.astype(np.int64)
    lexicon = Lexicon.build(item_texts(items))
    return StackInputs(np.asarray(text_vectors, np.float32), seconds.astype(np.float64), topics, lexicon)


def exposure_counts(
    log: pd.DataFrame, index: ItemIndex, topics: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clicks, impressions, expected clicks) per item in ``log``: the popularity,
    click-through and appeal features (``topics``: topic index per item)."""
    from models.news_ranker import expected_clicks

    position = index.lookup()
    clicks = np.zeros(len(index), np.float64)
    shown_n = np.zeros(len(index), np.float64)
    expected = np.zeros(len(index), np.float64)
    listings, rows = [], []
    for history, shown, clicked in zip(log["history"], log["shown"], log["clicked"], strict=True):
        idx = np.fromiter((position[str(i)] for i in shown), dtype=np.int64)
        before = np.fromiter((position[str(i)] for i in history if str(i) in position), dtype=np.int64)
        listings.append((topics[before], topics[idx], np.asarray(clicked, dtype=bool)))
        rows.append(idx)
        np.add.at(shown_n, idx, 1.0)
        np.add.at(clicks, idx[np.asarray(clicked, dtype=bool)], 1.0)
    for idx, p in zip(rows, expected_clicks(listings), strict=True):
        np.add.at(expected, idx, p)
    return clicks, shown_n, expected


def stack_features(
    log: pd.DataFrame,
    index: ItemIndex,
    inputs: StackInputs,
    nrms: NRMSModel | None,
    prior_log: pd.DataFrame,
    session_clicks: int = 5,
    dwell_threshold_s: float = 30.0,
) -> tuple[np.ndarray, dict[str, np.ndarray], list[np.ndarray]]:
    """Rank-stage features of every shown story of ``log`` (rows grouped by impression),
    their event labels, and each impression's row indices.

    Popularity and click-through come from ``prior_log`` only (what was known before these
    impressions); a persona log has no sessions, so a reader's last ``session_clicks``
    clicks stand in for the session.
    """
    from models.news_ranker import FEATURES, CandidateContext, candidate_features, rank_labels

    impressions = log_to_impressions(log, index)
    clicks, shown_n, expected = exposure_counts(prior_log, index, inputs.topics)
    nrms_scores = nrms.score_impressions(impressions) if nrms is not None else [None] * len(impressions)
    retrieval = score_text_similarity(inputs.text_vectors, impressions)
    dwell_col = log["dwell_s"] if "dwell_s" in log.columns else [None] * len(log)
    blocks: list[np.ndarray] = []
    labels: dict[str, list[np.ndarray]] = {}
    groups: list[np.ndarray] = []
    offset = 0
    for imp, ts, dwell, nrms_s, ret in zip(
        impressions, log["ts"], dwell_col, nrms_scores, retrieval, strict=True
    ):
        context = CandidateContext(inputs.topics[imp.history], inputs.topics[imp.history[-session_clicks:]])
        blocks.append(
            candidate_features(
                retrieval=ret,
                nrms=nrms_s,
                age_hours=(float(ts) - inputs.published_s[imp.shown]) / 3600.0,
                clicks=clicks[imp.shown],
                impressions=shown_n[imp.shown],
                candidate_topics=inputs.topics[imp.shown],
                context=context,
                lexical=None if inputs.lexicon is None else inputs.lexicon.scores(imp.history, imp.shown),
                expected=expected[imp.shown],
            )
        )
        for event, y in rank_labels(imp.clicked, dwell, None, dwell_threshold_s).items():
            labels.setdefault(event, []).append(y)
        groups.append(np.arange(offset, offset + len(imp.shown)))
        offset += len(imp.shown)
    return (
        np.concatenate(blocks) if blocks else np.zeros((0, len(FEATURES)), np.float32),
        {e: np.concatenate(v) for e, v in labels.items()},
        groups,
    )


def score_recommender(model: Any, impressions: Sequence[Impression]) -> list[np.ndarray]:
    """A contract model's score of each impression's shown stories given its history."""
    return [
        np.asarray(model.score([imp.history], imp.shown)[0], dtype=np.float64)
        if len(imp.history)
        else np.zeros(len(imp.shown))
        for imp in impressions
    ]


def cached_vectors(texts: list[str], cache_dir: Path | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``'s vectors, read from ``cache_dir`` when the same texts were encoded before."""
    if cache_dir is None:
        return compute()
    key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"minilm-{key}.npy"
    if path.is_file():
        return np.load(path)
    vectors = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def compare_news_stack(
    items: pd.DataFrame,
    train_log: pd.DataFrame,
    test_log: pd.DataFrame,
    nrms_params: dict[str, Any] | None = None,
    two_tower_params: dict[str, Any] | None = None,
    ranker_share: float = 0.25,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Every row of ``var/eval/news.json``'s ``offline`` table on ``test_log``.

    popularity, text-similarity, itemknn, two-tower: fit on all of ``train_log``. NRMS fits on
    the training impressions before the last ``ranker_share`` (by time) and keeps its best
    epoch on them; the ranker (``nrms+ranker``, the served stack) learns from that last share,
    whose NRMS scores are out-of-sample as serving's are, with popularity counted from the
    impressions before each part. ``cache_dir`` keeps the MiniLM vectors between runs (keyed
    by the texts' hash), so re-running costs only the training.
    """
    from models.features import ItemFeatures
    from models.news_ranker import NewsRanker
    from models.registry import build_model
    from models.text_encoder import encode

    index = ItemIndex.from_ids(items["item_id"].tolist())
    test = log_to_impressions(test_log, index)
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, scores: list[np.ndarray], started: float, **extra: Any) -> None:
        results[name] = {
            **evaluate_scores(test, scores),
            "fit_seconds": time.perf_counter() - started,
            **extra,
        }

    started = time.perf_counter()
    record("popularity", score_popularity(popularity_counts(train_log, index), test), started)

    texts = item_texts(items)
    started = time.perf_counter()
    vectors = cached_vectors(
        texts, cache_dir, lambda: encode(texts, "all-MiniLM-L6-v2", "cpu", 128, progress=progress)
    )
    record("text-similarity", score_text_similarity(vectors, test), started)
    inputs = stack_inputs(items, vectors)

    histories, _ = click_histories(train_log, index)
    histories = [h for h in histories if len(h)]
    train_csr = histories_to_csr(histories, len(index))
    started = time.perf_counter()
    knn = build_model("itemknn")
    knn.fit(train_csr, histories)
    record("itemknn", score_recommender(knn, test), started)

    started = time.perf_counter()
    tower: Any = build_model("two-tower", **{"progress": progress, "epochs": 20, **(two_tower_params or {})})
    tower.set_item_features(
        ItemFeatures(vectors, np.zeros((len(index), 0), np.float32), np.zeros(len(index), np.float32))
    )
    tower.fit(train_csr, histories)
    record("two-tower", score_recommender(tower, test), started)

    ordered = train_log.sort_values("ts", kind="stable")
    n_rank = int(len(ordered) * ranker_share)
    fit_log, rank_log = ordered.iloc[: len(ordered) - n_rank], ordered.iloc[len(ordered) - n_rank :]
    fit_histories, _ = click_histories(fit_log, index)
    model = NRMSModel(**{"progress": progress, **(nrms_params or {})})
    model.set_text_vectors(vectors)
    model.set_item_topics(items["topic"].fillna("").astype(str).tolist())
    started = time.perf_counter()
    model.fit(
        histories_to_csr(fit_histories, len(index)),
        fit_histories,
        item_texts=texts,
        impressions=log_to_impressions(fit_log, index),
        valid_impressions=log_to_impressions(rank_log, index) if n_rank else None,
    )
    record(
        "nrms",
        model.score_impressions(test),
        started,
        training_curve=model.training_curve(),
        params=model.params(),
    )

    started = time.perf_counter()
    x_rank, y_rank, _ = stack_features(rank_log, index, inputs, model, fit_log)
    ranker = NewsRanker().fit(x_rank, y_rank)
    x_test, _, groups = stack_features(test_log, index, inputs, model, train_log)
    served = ranker.score(x_test)
    record(
        "nrms+ranker",
        [served[g] for g in groups],
        started,
        ranker=ranker.params(),
        trained_events=ranker.trained_events,
        ranker_rows=len(x_rank),
    )
    return results
