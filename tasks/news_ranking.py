"""Train the news feed's rank stage (models/news_ranker.py) from the warehouse's impressions.

Run by train-models and the nightly when the champion is NRMS and the catalogue has an
impression log: every shown story of every impression becomes one row of the ranker's
features (text retrieval score, NRMS score, age, popularity, click-through, topic and
session-topic match) with its event labels (click, skip, dwell ≥ ``events.dwell_positive_s``).
Popularity, click-through and appeal (clicks over the clicks the story's listings would have
had at an average story's rate, :func:`models.news_ranker.expected_clicks`) are counted over
the impressions *before* each one, so a row never sees its own outcome; so is ``reshown``,
how many earlier impressions of the same reader (user, else ``session:<id>``) showed the
story without a click, the count serving keeps per reader
(``serving.impressions.ReaderExposure``). Each row also carries its slot in the listing
(``position``; serving scores every candidate at the top), so the log's position bias is
learned apart from what the story is. The per-item counts over the whole log ship with the
ranker (``exposure.json``, :meth:`models.news_ranker.NewsRanker.save`) for serving, which
computes the same features per request (:class:`models.news_ranker.NewsRankStage`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from models.lexicon import Lexicon
from models.news_ranker import (
    EXPOSURE_FILE,
    FEATURES,
    SESSION_CLICKS,
    ItemFacts,
    NewsRanker,
    expected_clicks,
    rank_labels,
    request_features,
    unit_rows,
)

if TYPE_CHECKING:
    from storage.settings import Settings
    from tasks.training import SplitData

MIN_HELD_OUT = 20
"""Fewest held-out impressions the ranker trains on before it falls back to the whole log."""


def item_facts(
    con: duckdb.DuckDBPyConnection, item_ids: Sequence[str], text_vectors: np.ndarray | None
) -> ItemFacts:
    """Publication time, first category (the topic) and words (title and summary) per item
    id, from the warehouse."""
    rows = con.execute(
        "SELECT item_id, categories, published_ts, concat_ws(' ', title, description) FROM items "
        "WHERE item_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(item_ids)],
    ).fetchall()
    by_id = {r[0]: r[1:3] for r in rows}
    texts = {r[0]: r[3] for r in rows}
    names = sorted({(r[1] or [None])[0] for r in rows if r[1]})
    number = {n: i + 1 for i, n in enumerate(names)}
    published = np.full(len(item_ids), np.nan)
    topics = np.zeros(len(item_ids), np.int64)
    for i, item in enumerate(item_ids):
        cats, ts = by_id.get(str(item), (None, None))
        if ts is not None:
            published[i] = float(ts)
        if cats:
            topics[i] = number.get(cats[0], 0)
    vectors = None if text_vectors is None else unit_rows(text_vectors)
    lexicon = Lexicon.build([texts.get(str(item)) for item in item_ids])
    return ItemFacts(vectors, published, topics, lexicon)


def training_rows(
    logged: Sequence[Any],
    facts: ItemFacts,
    nrms: Any | None,
    n_items: int,
    dwell_threshold_s: float,
    rows_from: set[int] | None = None,
    nrms_from: set[int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows and labels of every shown story of ``logged`` (``LoggedImpression``s,
    oldest first; only of the impressions numbered in ``rows_from`` when given), and the
    per-item clicks, impressions and expected clicks over the whole log.

    ``nrms_from``: the impressions whose NRMS score is out of sample (the fit never saw them);
    every other row's ``nrms`` is set to their mean, so it says nothing and the NRMS weight is
    learned where the score is as honest as it will be for tomorrow's readers, while the other
    features learn from every row. None: every row keeps its own score."""
    clicks = np.zeros(n_items, np.float64)
    shown_n = np.zeros(n_items, np.float64)
    expected = np.zeros(n_items, np.float64)
    listing_p = expected_clicks(
        [
            (
                facts.topics[np.asarray(row.impression.history, dtype=np.int64)],
                facts.topics[row.impression.shown],
                np.asarray(row.impression.clicked, dtype=bool),
            )
            for row in logged
        ]
    )
    passed: dict[str, dict[int, int]] = {}  # reader -> item -> times shown without a click
    blocks: list[np.ndarray] = []
    honest: list[bool] = []
    labels: dict[str, list[np.ndarray]] = {}
    for n, row in enumerate(logged):
        imp = row.impression
        history = np.asarray(imp.history, dtype=np.int64)
        seen = passed.setdefault(str(row.user_id), {})
        if rows_from is None or n in rows_from:
            reshown = np.fromiter((seen.get(int(i), 0) for i in imp.shown), np.float32, len(imp.shown))
            blocks.append(
                request_features(
                    facts,
                    nrms,
                    history,
                    history[-SESSION_CLICKS:],
                    imp.shown,
                    clicks,
                    shown_n,
                    row.ts,
                    reshown,
                    np.arange(len(imp.shown)),  # the listing's order (0 = top); serving scores at 0
                    expected,
                )
            )
            honest.append(nrms_from is None or n in nrms_from)
            for event, y in rank_labels(imp.clicked, row.dwell_s, None, dwell_threshold_s).items():
                labels.setdefault(event, []).append(y)
        np.add.at(shown_n, imp.shown, 1.0)
        np.add.at(clicks, imp.shown[imp.clicked], 1.0)
        np.add.at(expected, imp.shown, listing_p[n])
        for i in imp.shown[~np.asarray(imp.clicked, dtype=bool)].tolist():
            seen[i] = seen.get(i, 0) + 1
    features = np.concatenate(blocks) if blocks else np.zeros((0, len(FEATURES)), np.float32)
    if nrms is not None and blocks and not all(honest):
        out_of_sample = np.repeat(np.asarray(honest), [len(b) for b in blocks])
        column = FEATURES.index("nrms")
        fill = float(features[out_of_sample, column].mean()) if out_of_sample.any() else 0.0
        features[~out_of_sample, column] = fill
    return features, {e: np.concatenate(v) for e, v in labels.items()}, clicks, shown_n, expected


def train_news_ranker(
    logged: Sequence[Any],
    facts: ItemFacts,
    nrms: Any | None,
    item_ids: Sequence[str],
    weights: dict[str, float],
    dwell_threshold_s: float,
    seed: int = 42,
    nrms_from: set[int] | None = None,
    rows_from: set[int] | None = None,
    hidden: int = 0,
    l2: float = 300.0,
) -> tuple[NewsRanker, dict[str, Any]]:
    """The fitted ranker and the per-item exposure serving needs with it."""
    features, labels, clicks, shown_n, expected = training_rows(
        logged, facts, nrms, len(item_ids), dwell_threshold_s, rows_from, nrms_from
    )
    if len(features) == 0:
        raise ValueError("news ranker: the impression log has no impression on the catalogue's items")
    ranker = NewsRanker(weights=weights, hidden=hidden, seed=seed, l2=l2).fit(features, labels)
    exposure = {
        "item_ids": [str(i) for i in item_ids],
        "clicks": clicks.astype(int).tolist(),
        "impressions": shown_n.astype(int).tolist(),
        "expected": np.round(expected, 4).tolist(),
        "rows": len(features),
    }
    return ranker, exposure


def save_news_ranker(directory: Path, ranker: NewsRanker, exposure: dict[str, Any]) -> None:
    """The ranker and the per-item exposure serving reads with it."""
    ranker.save(directory)
    (directory / EXPOSURE_FILE).write_text(json.dumps(exposure))


def attach_news_ranker(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    data: SplitData,
    evaluated: Any,
    vectors: np.ndarray | None,
    workdir: Path,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the ranker for a bundle whose model is NRMS; returns its directory (``ranker/``).

    Its rows are the logged impressions with a click: one without a click says how often
    this reader clicks at all, nothing about which story they prefer. The NRMS score is read
    only where it is out of sample, as it is for tomorrow's readers: in the impressions that
    the evaluated NRMS fit (``evaluated``, fitted on the training part) never learned from,
    those that clicked a user's held-out item (elsewhere it is set to their mean,
    :func:`training_rows`). Learning every weight from those alone, about a seventh of the
    log, left the weights to chance from one night's log to the next. With fewer than
    :data:`MIN_HELD_OUT` held-out impressions every score is used as it is (and said so).
    """
    from tasks.features import impressions_for_parts

    logged = data.impressions or []
    learned = {id(x) for x in impressions_for_parts(data, ("train",))}
    held_out = {n for n, x in enumerate(logged) if id(x) not in learned}
    nrms_from = held_out if len(held_out) >= MIN_HELD_OUT else None
    with_click = {n for n, x in enumerate(logged) if np.asarray(x.impression.clicked, dtype=bool).any()}
    ids = [str(i) for i in data.item_ids]
    facts = item_facts(con, ids, vectors)
    ranker, exposure = train_news_ranker(
        logged,
        facts,
        evaluated,
        ids,
        settings.serving.rank_weights,
        settings.events.dwell_positive_s,
        seed=settings.model.seed,
        nrms_from=nrms_from,
        rows_from=with_click,
        hidden=settings.serving.ranker_hidden,
        l2=settings.serving.ranker_l2,
    )
    directory = workdir / "ranker"
    save_news_ranker(directory, ranker, exposure)
    log(
        f"news ranker: {exposure['rows']:,} rows from the {len(with_click):,} of {len(logged):,} "
        "impressions with a click, the NRMS score "
        f"read in {len(held_out):,} held out of its fit"
        f"{'' if nrms_from is not None else ' (too few: read in all)'}, "
        f"heads {ranker.trained_events}"
    )
    return directory
