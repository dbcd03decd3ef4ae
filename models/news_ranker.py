"""The news feed's rank stage: a small multi-head model over a handful of named features.

Why features and not embeddings: a news catalogue turns over daily, so what transfers from
one night's training to tomorrow's stories is how much a reader's clicks are explained by
text match, the learned news model, freshness, popularity and topic, not which story ids
were clicked. Each candidate of a request is described by :data:`FEATURES`:

``retrieval``  the retrieval stage's score (cosine of the story's text vector to the mean of
               the reader's clicked stories, 0 without history);
``nrms``       the NRMS score (user vector · news vector), 0 when no NRMS is served;
``age``        log(1 + hours since publication) at request time;
``popularity`` log(1 + clicks) the story has had;
``ctr``        its smoothed click-through (clicks + 1) / (impressions + 10);
``topic``      share of the reader's clicked stories in the story's topic;
``session``    share of this session's clicks in the story's topic (what survives a nightly:
               a reader who just clicked sports gets sports, whatever the model learned);
``history``    1 when the reader has any click;
``reshown``    log(1 + times this story was already shown to this reader without a click):
               a story a reader scrolled past twice is less likely to be clicked the third
               time, and how much less is learned from the log, not set by hand;
``position``   log(1 + the story's slot in the logged listing, 0 = top) in training, 0 at
               serving: readers click the top slots more whatever is there, and a story
               listed again tends to be listed on top, so without it the log says "shown
               before" goes with more clicks; scored as if at the top, every candidate is
               compared on what it is, not where it was;
``depth``      ``retrieval`` × min(1, log(1 + clicks) / log(11)), clicks = the reader's history:
               a profile of one click says less than one of ten, and linear heads cannot
               multiply two features themselves, so the text match can weigh more for a
               reader the service already knows (without it, a reader's fourth and later
               visits in the simulated A/B clicked less than under text similarity alone);
``lexical``    TF-IDF cosine of the story's words to the words of the reader's clicked stories
               (:mod:`models.lexicon`): the names a reader follows, which a sentence embedding
               blurs into their topic; 0 without history or without the stories' texts.
``affinity``   log((c + a/10) / (n + a)), a = :data:`AFFINITY_PRIOR`, c of the reader's n clicked
               stories in the candidate's topic: ``topic`` on a log scale and shrunk toward an
               even spread for a short history. A reader's pull toward a topic is closer to
               multiplicative than additive: a topic read once in twenty clicks is far from
               one never read, and five in twenty not much below six in twenty, which a linear
               share cannot say;
``appeal``     log((clicks + a) / (expected clicks + a)), a = :data:`APPEAL_PRIOR`: the story's
               clicks over the clicks its listings would have had at an average story's rate,
               given each listing's slot and how well its topic matched the reader's history
               (:func:`expected_clicks`). ``ctr`` credits a story with the top slots it was given
               and with the readers who already liked its topic; this is what is left of its
               own pull, the one thing a new reader shares with everyone else.

One logistic head per event (click, like, skip, dwell ≥ threshold), linear in the features
by default: the ranker learns from a few thousand rows of one night's log, and what it scores
tomorrow (new readers, new stories, a catalogue older by a day) lies outside them, where an
MLP body follows the log's particulars instead of the trends; ``hidden`` > 0 adds that body for
a log big enough to feed it. The weights carry an L2 penalty (``l2``, as 1/C of a logistic
regression on standardised features): the features are correlated (text match and ``depth``,
topic and session share), and unpenalised the heads split them into large opposite weights
that fit the night's listings and rank the next day's worse. The served score is a weighted
sum of the heads' probabilities with weights from the settings (a skip weighs negatively).
A head whose event never occurred in the training impressions is kept but weighs zero, so it
cannot add noise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.lexicon import Lexicon

SESSION_CLICKS = 5
"""A logged impression has no session of its own: the reader's last few clicks stand in for it
in training, and serving reads the same last few of history + session, so both agree."""
EXPOSURE_FILE = "exposure.json"
APPEAL_PRIOR = 2.0
"""Pseudo-clicks, and as many expected ones, every story starts with: a story listed a few
times reads near 0, not as a hit or a flop after one lucky or unlucky reader."""
EXPECTATION_SLOTS = 10
"""Slots the click expectation tells apart (later ones share the last)."""
AFFINITY_PRIOR = 3.0
"""Pseudo-clicks spread a tenth per topic that every reader's topic counts start from: with no
history every topic reads alike, and a reader's first clicks move it only part of the way."""


class FeatureMismatch(ValueError):
    """A saved ranker was trained on other features than :data:`FEATURES`."""


FEATURES: tuple[str, ...] = (
    "retrieval",
    "nrms",
    "age",
    "popularity",
    "ctr",
    "topic",
    "session",
    "history",
    "reshown",
    "position",
    "depth",
    "lexical",
    "appeal",
    "affinity",
)
EVENTS: tuple[str, ...] = ("click", "like", "skip", "dwell")
DEFAULT_WEIGHTS: dict[str, float] = {"click": 1.0, "like": 0.5, "skip": -0.5, "dwell": 0.3}


@dataclass(frozen=True)
class CandidateContext:
    """What the rank stage knows about one request, in item indices of the catalogue."""

    history_topics: np.ndarray
    """Topic index of each story the reader clicked before (nightly history + session)."""
    session_topics: np.ndarray
    """Topic index of each story clicked in this session only."""


def history_depth(clicks: int) -> float:
    """How much a profile of ``clicks`` clicked stories is worth, 0 (none) to 1 (ten or more)."""
    return float(min(np.log1p(max(clicks, 0)) / np.log1p(10), 1.0))


def topic_shares(clicked_topics: np.ndarray, candidate_topics: np.ndarray) -> np.ndarray:
    """Share of ``clicked_topics`` equal to each candidate's topic (0 when nothing clicked)."""
    clicked_topics = np.asarray(clicked_topics, dtype=np.int64)
    if len(clicked_topics) == 0:
        return np.zeros(len(candidate_topics), dtype=np.float32)
    counts = np.bincount(
        clicked_topics, minlength=int(max(candidate_topics.max(initial=0), clicked_topics.max())) + 1
    )
    return (counts[np.asarray(candidate_topics, dtype=np.int64)] / len(clicked_topics)).astype(np.float32)


def topic_affinity(clicked_topics: np.ndarray, candidate_topics: np.ndarray) -> np.ndarray:
    """The ``affinity`` feature: log((c + a/10) / (n + a)) per candidate, a = :data:`AFFINITY_PRIOR`."""
    return _affinity(topic_shares(clicked_topics, candidate_topics), len(clicked_topics))


def _affinity(shares: np.ndarray, clicks: int) -> np.ndarray:
    """:func:`topic_affinity` from the :func:`topic_shares` of ``clicks`` clicked stories."""
    counts = shares.astype(np.float64) * clicks
    return np.log((counts + AFFINITY_PRIOR / 10.0) / (clicks + AFFINITY_PRIOR)).astype(np.float32)


def candidate_features(
    *,
    retrieval: np.ndarray,
    nrms: np.ndarray | None,
    age_hours: np.ndarray,
    clicks: np.ndarray,
    impressions: np.ndarray,
    candidate_topics: np.ndarray,
    context: CandidateContext,
    reshown: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    lexical: np.ndarray | None = None,
    expected: np.ndarray | None = None,
) -> np.ndarray:
    """The ``(n_candidates, len(FEATURES))`` float32 matrix, columns in :data:`FEATURES` order.

    ``reshown``: times each candidate was already shown to this reader without a click (None: 0);
    ``positions``: each one's slot in a logged listing, 0 = top (None, as when serving: 0);
    ``lexical``: :meth:`models.lexicon.Lexicon.scores` of the candidates (None: 0);
    ``expected``: each one's expected clicks (:func:`expected_clicks`) over the listings its
    ``clicks`` were counted on (None: ``appeal`` 0)."""
    n = len(candidate_topics)
    reshown = np.zeros(n, np.float32) if reshown is None else np.asarray(reshown, dtype=np.float32)
    positions = np.zeros(n, np.float32) if positions is None else np.asarray(positions, dtype=np.float32)
    if len(positions) != n:
        raise ValueError(f"candidate_features: positions has {len(positions)} values for {n} candidates")
    for name, arr in (
        ("retrieval", retrieval),
        ("age_hours", age_hours),
        ("clicks", clicks),
        ("reshown", reshown),
        *([("lexical", lexical)] if lexical is not None else []),
        *([("expected", expected)] if expected is not None else []),
    ):
        if len(arr) != n:
            raise ValueError(f"candidate_features: {name} has {len(arr)} values for {n} candidates")
    has_history = float(len(context.history_topics) > 0)
    history_shares = topic_shares(context.history_topics, candidate_topics)
    columns = [
        np.asarray(retrieval, dtype=np.float32),
        np.zeros(n, np.float32) if nrms is None else np.asarray(nrms, dtype=np.float32),
        np.log1p(np.clip(np.asarray(age_hours, dtype=np.float32), 0.0, None)),
        np.log1p(np.clip(np.asarray(clicks, dtype=np.float32), 0.0, None)),
        (np.asarray(clicks, dtype=np.float32) + 1.0) / (np.asarray(impressions, dtype=np.float32) + 10.0),
        history_shares,
        topic_shares(context.session_topics, candidate_topics),
        np.full(n, has_history, dtype=np.float32),
        np.log1p(np.clip(reshown, 0.0, None)),
        np.log1p(np.clip(positions, 0.0, None)),
        np.asarray(retrieval, dtype=np.float32) * np.float32(history_depth(len(context.history_topics))),
        np.zeros(n, np.float32) if lexical is None else np.asarray(lexical, dtype=np.float32),
        np.zeros(n, np.float32) if expected is None else appeal_scores(clicks, expected),
        _affinity(history_shares, len(context.history_topics)),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def appeal_scores(clicks: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The ``appeal`` feature: log((clicks + a) / (expected + a)), a = :data:`APPEAL_PRIOR`."""
    c = np.clip(np.asarray(clicks, dtype=np.float64), 0.0, None)
    e = np.clip(np.asarray(expected, dtype=np.float64), 0.0, None)
    return np.log((c + APPEAL_PRIOR) / (e + APPEAL_PRIOR)).astype(np.float32)


def _expectation_rows(history_topics: np.ndarray, shown_topics: np.ndarray) -> np.ndarray:
    """One listing's design rows: its slots (one-hot), no-history, topic share, log share."""
    n = len(shown_topics)
    x = np.zeros((n, EXPECTATION_SLOTS + 3), np.float64)
    x[np.arange(n), np.minimum(np.arange(n), EXPECTATION_SLOTS - 1)] = 1.0
    if len(history_topics):
        share = topic_shares(np.asarray(history_topics, np.int64), np.asarray(shown_topics, np.int64))
        x[:, -2] = share
        x[:, -1] = np.log(share + 0.1)
    else:
        x[:, -3] = 1.0
    return x


def expected_clicks(
    listings: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], ridge: float = 1.0, iterations: int = 25
) -> list[np.ndarray]:
    """Per listing ``(history topics, shown topics, clicked)``, each shown story's click
    probability had it been an average story: a logistic regression of the clicks on the slot
    and the reader's topic share (no story identity), fitted on these listings by Newton's
    method. Summed per story it is what the story's clicks are compared with (``appeal``)."""
    if not listings:
        return []
    blocks = [_expectation_rows(h, s) for h, s, _ in listings]
    x = np.concatenate(blocks)
    y = np.concatenate([np.asarray(c, dtype=np.float64) for _, _, c in listings])
    beta = np.zeros(x.shape[1])
    penalty = ridge * np.eye(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (p - y) + penalty @ beta
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    return np.split(p, np.cumsum([len(b) for b in blocks])[:-1])


class _Net(nn.Module):
    """A linear logistic head per event, plus an MLP body over the same features when
    ``hidden`` > 0 (the body's layout is the one rankers saved before linear became the default)."""

    def __init__(self, n_features: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, heads)
        self.body: nn.Sequential | None = None
        self.heads: nn.Linear | None = None
        if hidden > 0:
            self.body = nn.Sequential(
                nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
            )
            self.heads = nn.Linear(hidden, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.body is None or self.heads is None:
            return self.linear(x)
        return self.heads(self.body(x)) + self.linear(x)


class NewsRanker:
    """Multi-head ranker over :data:`FEATURES`; see the module docstring."""

    name = "news-ranker"

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        hidden: int = 0,
        epochs: int = 200,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 2048,
        seed: int = 42,
        l2: float = 300.0,
    ) -> None:
        chosen = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(chosen) - set(EVENTS)
        if unknown:
            raise ValueError(
                f"news ranker: weights for unknown events {sorted(unknown)}; expected {list(EVENTS)}"
            )
        self.weights = {e: float(chosen.get(e, 0.0)) for e in EVENTS}
        self.hidden, self.epochs, self.lr = hidden, epochs, lr
        self.weight_decay, self.batch_size, self.seed = weight_decay, batch_size, seed
        if l2 < 0:
            raise ValueError(f"news ranker: l2 must be ≥ 0, got {l2}")
        self.l2 = float(l2)
        self.mean = np.zeros(len(FEATURES), np.float32)
        self.std = np.ones(len(FEATURES), np.float32)
        self.trained_events: list[str] = []
        self.curve: list[dict[str, float]] = []
        self.net: _Net | None = None

    def fit(self, features: np.ndarray, labels: Mapping[str, np.ndarray]) -> NewsRanker:
        """``features`` (n, len(FEATURES)); ``labels[event]`` 0/1 per row for each event in
        :data:`EVENTS` that the log records (a missing event is a head that weighs zero)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != len(FEATURES):
            raise ValueError(f"news ranker: features must be (n, {len(FEATURES)}) in order {FEATURES}")
        if "click" not in labels:
            raise ValueError("news ranker: labels need at least 'click'")
        n = features.shape[0]
        targets = np.zeros((n, len(EVENTS)), np.float32)
        present = np.zeros(len(EVENTS), bool)
        for j, event in enumerate(EVENTS):
            if event in labels:
                given = np.asarray(labels[event], dtype=np.float32)
                if len(given) != n:
                    raise ValueError(f"news ranker: labels[{event!r}] has {len(given)} rows, features {n}")
                targets[:, j] = given
                present[j] = 0 < given.sum() < n
        if not present[0]:
            raise ValueError("news ranker: the click labels need both clicked and not-clicked rows")
        self.trained_events = [e for e, p in zip(EVENTS, present, strict=True) if p]
        self.mean = features.mean(axis=0)
        std = features.std(axis=0)
        # A feature constant in training (every row had history, say) keeps unit scale: divided
        # by ~0, a value it never took (a reader with no clicks) would saturate every head.
        self.std = np.where(std > 1e-6, std + 1e-6, 1.0).astype(np.float32)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.net = _Net(len(FEATURES), self.hidden, len(EVENTS))
        # A constant feature is 0 after centring, so its weights never get a gradient: left at
        # their random start they would turn any value it takes at serving into noise.
        constant = torch.from_numpy(std <= 1e-6)
        with torch.no_grad():
            self.net.linear.weight[:, constant] = 0.0
            if self.net.body is not None:
                first = self.net.body[0]
                assert isinstance(first, nn.Linear)
                first.weight[:, constant] = 0.0
        x_all = torch.from_numpy((features - self.mean) / self.std)
        y = torch.from_numpy(targets)
        mask = torch.from_numpy(present.astype(np.float32))
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        penalised = [p for name, p in self.net.named_parameters() if name.endswith("weight")]
        # Per head: mean log-loss + l2 / (2n) · ‖w‖², the heads' losses averaged as below.
        l2_scale = self.l2 / (2.0 * max(n, 1) * max(float(present.sum()), 1.0))
        self.curve = []
        for epoch in range(1, self.epochs + 1):
            self.net.train()
            order = torch.from_numpy(rng.permutation(n))
            total = 0.0
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                loss = (
                    F.binary_cross_entropy_with_logits(self.net(x_all[idx]), y[idx], reduction="none") * mask
                ).sum(dim=1).mean() / mask.sum().clamp(min=1.0)
                if l2_scale > 0:
                    loss = loss + l2_scale * torch.stack([(p * p).sum() for p in penalised]).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.item()) * len(idx)
            self.curve.append({"epoch": float(epoch), "loss": total / max(n, 1)})
        return self

    def head_probabilities(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Each event head's probability per row."""
        net = self._require()
        net.eval()
        x = torch.from_numpy((np.asarray(features, dtype=np.float32) - self.mean) / self.std)
        with torch.no_grad():
            probs = torch.sigmoid(net(x)).numpy()
        return {e: probs[:, j] for j, e in enumerate(EVENTS)}

    def score(self, features: np.ndarray) -> np.ndarray:
        """Σ weight(event) · P(event) over the heads that saw their event in training."""
        probs = self.head_probabilities(features)
        out = np.zeros(len(features), np.float32)
        for event in self.trained_events:
            out += self.weights[event] * probs[event]
        return out

    def params(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "hidden": self.hidden,
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "l2": self.l2,
        }

    def save(self, directory: Path) -> None:
        net = self._require()
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, directory / "state.pt")
        meta = {
            "name": self.name,
            "features": list(FEATURES),
            "events": list(EVENTS),
            "trained_events": self.trained_events,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "params": self.params(),
            "training_curve": self.curve,
        }
        (directory / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> NewsRanker:
        meta = json.loads((directory / "ranker.json").read_text())
        if meta.get("features") != list(FEATURES):
            raise FeatureMismatch(
                f"{directory}: ranker features {meta.get('features')} differ from {list(FEATURES)}"
            )
        ranker = cls(**meta["params"])
        ranker.mean = np.asarray(meta["mean"], np.float32)
        ranker.std = np.asarray(meta["std"], np.float32)
        ranker.trained_events = list(meta["trained_events"])
        ranker.curve = list(meta.get("training_curve", []))
        ranker.net = _Net(len(FEATURES), ranker.hidden, len(EVENTS))
        ranker.net.load_state_dict(torch.load(directory / "state.pt", map_location="cpu", weights_only=True))
        return ranker

    def _require(self) -> _Net:
        if self.net is None:
            raise RuntimeError("news ranker: not fitted; call fit() or load()")
        return self.net


def rank_labels(
    clicked: Sequence[bool] | np.ndarray,
    dwell_s: Sequence[float] | np.ndarray | None,
    liked: Sequence[bool] | None,
    dwell_threshold_s: float,
) -> dict[str, np.ndarray]:
    """Per-shown-story labels of one impression: click, skip (shown, not clicked), dwell
    (clicked and read at least ``dwell_threshold_s``), like when the log records it."""
    click = np.asarray(clicked, dtype=np.float32)
    out = {"click": click, "skip": 1.0 - click}
    if dwell_s is not None:
        out["dwell"] = (np.asarray(dwell_s, dtype=np.float32) >= dwell_threshold_s).astype(np.float32) * click
    if liked is not None:
        out["like"] = np.asarray(liked, dtype=np.float32)
    return out


@dataclass(frozen=True)
class ItemFacts:
    """What the rank stage knows per item index, beyond the models."""

    text_vectors: np.ndarray | None
    """L2-normalized text vectors, or None (retrieval feature 0)."""
    published_s: np.ndarray
    """Publication time in Unix seconds (NaN: unknown, read as a day old)."""
    topics: np.ndarray
    """Topic number per item (0: none)."""
    lexicon: Lexicon | None = None
    """Each item's words (the ``lexical`` feature), or None (feature 0)."""


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def retrieval_scores(vectors: np.ndarray | None, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine of each candidate to the mean vector of the history (0 without either)."""
    if vectors is None or len(history) == 0:
        return np.zeros(len(candidates), np.float32)
    profile = vectors[history].mean(axis=0)
    return (vectors[candidates] @ profile).astype(np.float32)


def ages_hours(facts: ItemFacts, candidates: np.ndarray, now_s: float) -> np.ndarray:
    published = facts.published_s[candidates]
    return np.where(np.isnan(published), 24.0, (now_s - np.nan_to_num(published)) / 3600.0)


def request_features(
    facts: ItemFacts,
    nrms: Any | None,
    history: np.ndarray,
    session: np.ndarray,
    candidates: np.ndarray,
    clicks: np.ndarray,
    shown: np.ndarray,
    now_s: float,
    reshown: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    expected: np.ndarray | None = None,
) -> np.ndarray:
    """One request's feature rows (see :data:`models.news_ranker.FEATURES`); ``reshown``: times
    each candidate was already shown to this reader without a click (None: never);
    ``positions``: slots of a logged listing (training), None when serving (the top);
    ``expected``: per item, the expected clicks beside ``clicks`` (None: ``appeal`` 0)."""
    history = np.asarray(history, dtype=np.int64)
    candidates = np.asarray(candidates, dtype=np.int64)
    nrms_scores = None
    if nrms is not None:
        nrms_scores = np.asarray(nrms.score([history], candidates)[0], dtype=np.float32)
    return candidate_features(
        retrieval=retrieval_scores(facts.text_vectors, history, candidates),
        nrms=nrms_scores,
        age_hours=ages_hours(facts, candidates, now_s),
        clicks=clicks[candidates],
        impressions=shown[candidates],
        candidate_topics=facts.topics[candidates],
        context=CandidateContext(facts.topics[history], facts.topics[np.asarray(session, dtype=np.int64)]),
        reshown=reshown,
        positions=positions,
        lexical=None if facts.lexicon is None else facts.lexicon.scores(history, candidates),
        expected=None if expected is None else expected[candidates],
    )


class NewsRankStage:
    """The ranker as the serving cascade's rank stage (``score(history, candidates)``).

    Everything it reads is in memory from the bundle: the text vectors, each story's
    publication time and topic, the NRMS model (its news vectors precomputed, so a request
    encodes no story, only the reader's user vector), and the per-story clicks and
    impressions the ranker shipped with. The request's history is the reader's clicks plus
    the session's, whose last :data:`SESSION_CLICKS` are the session topic feature.
    :meth:`for_reader` binds what this reader was already shown (the ``reshown`` feature);
    the stage itself is shared by every request and never changes.
    """

    orders_exploration = True
    """The cascade's exploration slot takes the best-scored novel story, not the seed's pick
    (``serving.cascade.diversify``): what a reader will click is what this stage learned."""

    def __init__(
        self,
        ranker: NewsRanker,
        facts: ItemFacts,
        nrms: Any | None,
        clicks: np.ndarray,
        shown: np.ndarray,
        reader_shown: tuple[np.ndarray, np.ndarray] | None = None,
        expected: np.ndarray | None = None,
    ) -> None:
        self.ranker, self.facts, self.nrms = ranker, facts, nrms
        self.clicks, self.shown, self.expected = clicks, shown, expected
        """Per item: clicks, listings and expected clicks (None: a ranker saved without them)."""
        self.reader_shown = reader_shown
        """(sorted item indices, times each was shown to this reader), or None: nothing shown."""

    def for_reader(self, items: np.ndarray, counts: np.ndarray) -> NewsRankStage:
        """This stage for one request whose reader was already shown ``items`` ``counts`` times."""
        items = np.asarray(items, dtype=np.int64)
        order = np.argsort(items, kind="stable")
        bound = (items[order], np.asarray(counts, dtype=np.float32)[order])
        return NewsRankStage(
            self.ranker, self.facts, self.nrms, self.clicks, self.shown, bound, self.expected
        )

    def reshown(self, candidates: np.ndarray) -> np.ndarray | None:
        """Times each candidate was already shown to the bound reader (None when unbound)."""
        if self.reader_shown is None or not len(self.reader_shown[0]):
            return None
        items, counts = self.reader_shown
        at = np.clip(np.searchsorted(items, candidates), 0, len(items) - 1)
        return np.where(items[at] == candidates, counts[at], 0.0).astype(np.float32)

    def features(self, history: np.ndarray, candidates: np.ndarray, now_s: float | None = None) -> np.ndarray:
        history = np.asarray(history, dtype=np.int64)
        candidates = np.asarray(candidates, dtype=np.int64)
        return request_features(
            self.facts,
            self.nrms,
            history,
            history[-SESSION_CLICKS:],
            candidates,
            self.clicks,
            self.shown,
            time.time() if now_s is None else now_s,
            self.reshown(candidates),
            expected=self.expected,
        )

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self.ranker.score(self.features(history, candidates)).astype(np.float64)

    @classmethod
    def load(cls, directory: Path, item_ids: Sequence[str], facts: ItemFacts, model: Any) -> NewsRankStage:
        """The ranker in ``directory`` over a bundle's items (``item_ids`` in index order);
        ``model`` feeds the NRMS feature when it is NRMS."""
        exposure = json.loads((directory / EXPOSURE_FILE).read_text())
        position = {str(i): n for n, i in enumerate(item_ids)}
        clicks = np.zeros(len(item_ids), np.float64)
        shown = np.zeros(len(item_ids), np.float64)
        expected = np.zeros(len(item_ids), np.float64)
        given = exposure.get("expected") or [0.0] * len(exposure["item_ids"])
        for item, c, s, e in zip(
            exposure["item_ids"], exposure["clicks"], exposure["impressions"], given, strict=True
        ):
            n = position.get(str(item))
            if n is not None:
                clicks[n], shown[n], expected[n] = c, s, e
        nrms = model if getattr(model, "name", None) == "nrms" else None
        return cls(NewsRanker.load(directory), facts, nrms, clicks, shown, expected=expected)


def is_news_ranker(directory: Path) -> bool:
    """A bundle's ``ranker/`` written by :func:`tasks.news_ranking.train_news_ranker`."""
    return (directory / "ranker.json").is_file() and (directory / EXPOSURE_FILE).is_file()
