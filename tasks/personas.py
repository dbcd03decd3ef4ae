"""Simulated readers for a news catalogue that has no click log yet.

A fresh news instance (stories from feeds, nobody reading them) cannot train or compare
models on clicks it does not have. Personas stand in for readers: each has topic tastes, a
few favourite words drawn from the real story texts of its favourite topics, a visit rate,
a click propensity and a reading speed. Over the catalogue's timeline each persona visits
the front page, is shown a slate of recent stories and clicks, skips or reads them:

    P(click) = sigmoid(bias + taste_weight · log(K · taste[topic]) + keyword_weight · hits
                       + appeal_weight · appeal[story] - freshness_weight · age_days)

``hits`` counts the persona's favourite words in the story's title and text, so a model
that reads text can learn what a persona likes beyond the topic label; ``appeal`` is a
per-story attractiveness every persona shares, which is what popularity can learn. Clicks
have a dwell time (longer for stories that match better); shown-but-not-clicked stories
are skips. Everything follows from one seed, so a log is reproducible.

The result is an impression log in the shape of MIND's behaviors (impression id, user,
time, history of earlier clicks, shown stories, clicked flags) plus dwell seconds, so the
same code trains and evaluates on persona logs and on MIND.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

ITEM_TABLE_COLUMNS = ["item_id", "title", "text", "topic", "published"]
IMPRESSION_COLUMNS = ["impression_id", "user_id", "ts", "history", "shown", "clicked", "dwell_s"]
_WORD = re.compile(r"[a-z][a-z'-]{3,}")
_STOPWORDS = frozenset(
    {
        "that",
        "this",
        "with",
        "from",
        "have",
        "will",
        "into",
        "about",
        "after",
        "over",
        "their",
        "they",
        "them",
        "than",
        "then",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "would",
        "could",
        "should",
        "said",
        "says",
        "more",
        "most",
        "some",
        "such",
        "only",
        "also",
        "just",
        "been",
        "being",
        "other",
        "under",
        "amid",
        "here",
        "there",
        "your",
        "yours",
        "ours",
        "before",
        "because",
        "against",
        "between",
    }
)


@dataclass(frozen=True)
class Persona:
    """One simulated reader."""

    user_id: str
    taste: dict[str, float]
    """Topic → share of interest (sums to 1)."""
    keywords: tuple[str, ...]
    """Words from real stories of favourite topics that make a click more likely."""
    visits_per_day: float
    click_bias: float
    """Base logit of a click: how click-happy this reader is."""
    reading_s: float
    """Median dwell on a story that matches the persona moderately."""


@dataclass(frozen=True)
class PersonaConfig:
    """How readers behave; the defaults give a front page with roughly a 15% click rate."""

    personas: int = 200
    slate_size: int = 12
    """Stories shown per impression."""
    window_h: float = 48.0
    """Stories published in this many hours before a visit are candidates."""
    visits_per_day: tuple[float, float] = (0.5, 4.0)
    taste_concentration: float = 0.3
    """Dirichlet concentration of topic tastes (small = few favourite topics)."""
    keywords: tuple[int, int] = (4, 10)
    taste_weight: float = 1.4
    keyword_weight: float = 1.2
    appeal_weight: float = 0.8
    freshness_weight: float = 0.6
    click_bias: tuple[float, float] = (-2.6, -1.6)
    max_history: int = 50
    """Earliest clicks beyond this many are dropped from an impression's history."""
    seed: int = 7


def validate_item_table(items: pd.DataFrame) -> pd.DataFrame:
    """Check the item table the simulator needs; ``published`` becomes UTC datetimes."""
    missing = [c for c in ITEM_TABLE_COLUMNS if c not in items.columns]
    if missing:
        raise ValueError(
            f"persona item table: missing column(s) {missing}; expected {ITEM_TABLE_COLUMNS}, "
            f"found {list(items.columns)}"
        )
    if items["item_id"].duplicated().any():
        dup = items.loc[items["item_id"].duplicated(), "item_id"].iloc[0]
        raise ValueError(f"persona item table: item_id {dup!r} appears more than once; ids must be unique")
    if items["topic"].isna().any():
        raise ValueError("persona item table: every item needs a topic")
    out = items[ITEM_TABLE_COLUMNS].copy()
    out["published"] = pd.to_datetime(out["published"], utc=True)
    out["title"] = out["title"].fillna("").astype(str)
    out["text"] = out["text"].fillna("").astype(str)
    out["topic"] = out["topic"].astype(str)
    return out.sort_values(["published", "item_id"], kind="stable").reset_index(drop=True)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def topic_keywords(items: pd.DataFrame, per_topic: int = 40) -> dict[str, list[str]]:
    """Words typical of each topic: frequent in its stories, rare in the others'."""
    by_topic: dict[str, Counter[str]] = {}
    overall: Counter[str] = Counter()
    for topic, title, text in zip(items["topic"], items["title"], items["text"], strict=True):
        words = _words(f"{title} {text}")
        by_topic.setdefault(topic, Counter()).update(words)
        overall.update(words)
    result = {}
    for topic, counts in sorted(by_topic.items()):
        scored = sorted(
            ((c / (1 + overall[w] - c), w) for w, c in counts.items() if c >= 2),
            key=lambda x: (-x[0], x[1]),
        )
        result[topic] = [w for _, w in scored[:per_topic]]
    return result


def make_personas(items: pd.DataFrame, config: PersonaConfig = PersonaConfig()) -> list[Persona]:
    """``config.personas`` readers whose tastes and words come from this catalogue."""
    items = validate_item_table(items)
    rng = np.random.default_rng(config.seed)
    topics = sorted(items["topic"].unique())
    vocab = topic_keywords(items)
    personas = []
    for p in range(config.personas):
        shares = rng.dirichlet(np.full(len(topics), config.taste_concentration))
        taste = {t: float(s) for t, s in zip(topics, shares, strict=True)}
        n_words = int(rng.integers(config.keywords[0], config.keywords[1] + 1))
        pool = [(w, taste[t]) for t in topics for w in vocab.get(t, [])]
        keywords: tuple[str, ...] = ()
        if pool:
            weights = np.array([s for _, s in pool]) + 1e-9
            pick = rng.choice(
                len(pool), size=min(n_words, len(pool)), replace=False, p=weights / weights.sum()
            )
            keywords = tuple(sorted({pool[i][0] for i in pick}))
        personas.append(
            Persona(
                user_id=f"persona-{p:04d}",
                taste=taste,
                keywords=keywords,
                visits_per_day=float(rng.uniform(*config.visits_per_day)),
                click_bias=float(rng.uniform(*config.click_bias)),
                reading_s=float(rng.lognormal(np.log(40.0), 0.4)),
            )
        )
    return personas


def simulate_impressions(
    items: pd.DataFrame,
    personas: list[Persona] | None = None,
    config: PersonaConfig = PersonaConfig(),
    start: datetime | None = None,
    end: datetime | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Impression log of ``personas`` visiting between ``start`` and ``end`` (default: one
    window after the first story until the last story's time).

    Columns: impression_id, user_id, ts (Unix seconds), history (earlier clicks, oldest
    first), shown (item ids), clicked (bools), dwell_s (seconds per shown story, 0 if not
    clicked). Sorted by time; deterministic for (items, personas, config).
    """
    items = validate_item_table(items)
    personas = personas if personas is not None else make_personas(items, config)
    rng = np.random.default_rng(config.seed + 1)
    published = (
        (items["published"] - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    ).to_numpy(dtype=np.int64)
    if len(items) < 2:
        raise ValueError(f"persona simulation needs at least 2 items, got {len(items)}")
    window_s = config.window_h * 3600.0
    t0 = int(start.timestamp()) if start else int(published.min() + window_s / 4)
    t1 = int(end.timestamp()) if end else int(published.max())
    if t1 <= t0:
        raise ValueError(f"persona simulation: empty time range {t0}..{t1}")
    days = (t1 - t0) / 86400.0
    topics = items["topic"].to_numpy()
    appeal = rng.normal(0.0, 1.0, size=len(items))
    item_words = [_words(f"{a} {b}") for a, b in zip(items["title"], items["text"], strict=True)]
    item_ids = items["item_id"].astype(str).to_numpy()

    visits: list[tuple[int, int]] = []
    for p, persona in enumerate(personas):
        n = int(rng.poisson(persona.visits_per_day * days))
        visits.extend((int(t), p) for t in rng.uniform(t0, t1, size=n))
    visits.sort()

    histories: list[list[str]] = [[] for _ in personas]
    rows = []
    for n, (ts, p) in enumerate(tqdm(visits, desc="simulating personas", unit="visit", disable=not progress)):
        persona = personas[p]
        lo, hi = np.searchsorted(published, [ts - window_s, ts], side="right")
        if hi - lo < 2:
            continue
        pool = np.arange(lo, hi)
        age_days = (ts - published[pool]) / 86400.0
        exposure = np.exp(-age_days)  # front pages favour fresh stories
        size = min(config.slate_size, len(pool))
        shown = rng.choice(pool, size=size, replace=False, p=exposure / exposure.sum())
        k = len(persona.taste)
        taste = np.array([persona.taste.get(topics[i], 0.0) for i in shown])
        hits = np.array([len(item_words[i].intersection(persona.keywords)) for i in shown], dtype=float)
        logit = (
            persona.click_bias
            + config.taste_weight * np.clip(np.log(k * taste + 1e-3), -3.0, 2.5)
            + config.keyword_weight * np.minimum(hits, 3)
            + config.appeal_weight * appeal[shown]
            - config.freshness_weight * (ts - published[shown]) / 86400.0
        )
        prob = 1.0 / (1.0 + np.exp(-logit))
        clicked = rng.random(size) < prob
        # Better matches are read longer: the persona's reading time scaled by e^(logit/2).
        read = persona.reading_s * np.exp(0.5 * logit).clip(0.2, 5.0) * rng.lognormal(0.0, 0.3, size)
        dwell = np.where(clicked, np.maximum(read, 1.0), 0.0).round(1)
        rows.append(
            (
                f"sim-{config.seed}-{n:07d}",
                persona.user_id,
                ts,
                list(histories[p][-config.max_history :]),
                [str(item_ids[i]) for i in shown],
                [bool(c) for c in clicked],
                [float(d) for d in dwell],
            )
        )
        histories[p].extend(str(item_ids[i]) for i in shown[clicked])
    return pd.DataFrame(rows, columns=IMPRESSION_COLUMNS)


def split_by_time(log: pd.DataFrame, holdout_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earlier impressions for training, the last ``holdout_share`` of the time span held out."""
    if not 0.0 < holdout_share < 1.0:
        raise ValueError(f"holdout_share must be in (0, 1), got {holdout_share}")
    cut = log["ts"].min() + (1.0 - holdout_share) * (log["ts"].max() - log["ts"].min())
    return log[log["ts"] < cut].reset_index(drop=True), log[log["ts"] >= cut].reset_index(drop=True)


def impressions_to_events(log: pd.DataFrame) -> pd.DataFrame:
    """The log as recflow interactions: a click (value 1, with dwell) or a skip (value 0)
    per shown story, with the event ids of contract C1's ingestion (user, item, time)."""
    records = []
    for imp_id, user, ts, shown, clicked, dwell in zip(
        log["impression_id"],
        log["user_id"],
        log["ts"],
        log["shown"],
        log["clicked"],
        log["dwell_s"],
        strict=True,
    ):
        for pos, (item, c, d) in enumerate(zip(shown, clicked, dwell, strict=True)):
            records.append(
                {
                    "user_id": user,
                    "item_id": item,
                    "event_type": "click" if c else "skip",
                    "value": 1.0 if c else 0.0,
                    "dwell_s": float(d) if c else None,
                    "ts": int(ts),
                    "seq": pos,
                    "session_id": imp_id,
                }
            )
    return pd.DataFrame.from_records(
        records, columns=["user_id", "item_id", "event_type", "value", "dwell_s", "ts", "seq", "session_id"]
    )
