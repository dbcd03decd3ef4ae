"""Natural-language intent: what a sentence such as "something to get my blood pumping" asks
of the catalogue, and the list that answers it (``POST /recommend/intent``).

A sentence is read three ways, each of which the answer reports:

* **genres** it names ("space", "aliens" → Sci-Fi) from the lexicon's words per genre, or
  implies by its vector's cosine to each genre's description;
* **moods** from an affect lexicon (``intent_lexicon.json``): a keyword reads a mood outright
  (keyword boosting), otherwise its vector's cosine to the mood's anchor sentences must pass
  ``intent.mood_threshold``; each mood implies genres with a strength;
* **negations**: a keyword within three words after "not", "no", "nothing", "without"… of
  the same clause is *suppressed* instead: "nothing scary" drops the mood and rules out the
  genres it would bring (items of those genres are not listed), and the negated words are
  cut from the text before it is encoded, so "scary" does not pull the vector toward horror.
  A mood read by keyword also overrides a conflicting mood read only by similarity.

Items are then scored by four parts in [0, 1], blended by weights that are parameters
(defaults ``serving.intent``): the user's model score (min–max over unseen items), genre
match (noisy-or of the item's genres' read weights), popularity (log-scaled) and the cosine
of the text's vector to the item's (min–max over the catalogue).

Why the vectors are precomputed per bundle: anchors and genre descriptions are ~50 sentences,
~0.5 s to encode on a CPU; :func:`intent_space` encodes them once per loaded bundle (they
must come from the bundle's own text model) and keeps them as long as the bundle lives.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from serving.bundle import LoadedBundle
from storage.settings import IntentSettings

LEXICON = Path(__file__).with_name("intent_lexicon.json")
NEGATION_WINDOW = 3
"""A negator negates a keyword that starts at most this many words after it (same clause)."""
MAX_MOODS = 3
MAX_GENRES = 5
GENRE_FLOOR = 0.25
"""Read weight from which a genre is reported (and counts in the genre part)."""
MOOD_MARGIN = 0.15
"""A mood read by similarity alone must come within this cosine of the best such mood."""
MOOD_PULL = 0.5
"""How far each read mood's anchor centroid pulls the vector that items are compared with."""
PARTS = ("user", "genre", "popularity", "similarity")

_WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")
_CLAUSE = re.compile(r"[,;.!?:()\n]+|\bbut\b")


# The lexicon ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mood:
    name: str
    anchors: list[str]
    keywords: list[str]
    genres: dict[str, float]
    avoid: list[str]
    conflicts: list[str]


@dataclass(frozen=True)
class Lexicon:
    """Genre words and descriptions, moods and negators (see ``intent_lexicon.json``)."""

    negators: frozenset[str]
    genre_words: dict[str, list[str]]
    genre_descriptions: dict[str, str]
    moods: dict[str, Mood]


def load_lexicon(path: Path = LEXICON) -> Lexicon:
    """The lexicon at ``path``; a malformed file is a ``ValueError`` naming what is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        genres = raw["genres"]
        moods = {
            name: Mood(
                name,
                list(m["anchors"]),
                list(m["keywords"]),
                {str(g): float(w) for g, w in m["genres"].items()},
                list(m.get("avoid", [])),
                list(m.get("conflicts", [])),
            )
            for name, m in raw["moods"].items()
        }
        lexicon = Lexicon(
            frozenset(str(w).lower() for w in raw["negators"]),
            {g: [str(w).lower() for w in e["words"]] for g, e in genres.items()},
            {g: str(e["description"]) for g, e in genres.items()},
            moods,
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"intent lexicon {path} is malformed: {type(exc).__name__}: {exc}") from exc
    for mood in moods.values():
        if not mood.anchors:
            raise ValueError(f"intent lexicon {path}: mood {mood.name!r} has no anchor sentences")
        unknown = set(mood.conflicts) - set(moods)
        if unknown:
            raise ValueError(f"intent lexicon {path}: mood {mood.name!r} conflicts with unknown {unknown}")
    return lexicon


@cache
def default_lexicon() -> Lexicon:
    return load_lexicon()


# Per-bundle vectors -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class IntentSpace:
    """What one bundle needs to answer intents, computed once per bundle."""

    genres: list[str]
    """The bundle's category names (row order of the arrays below)."""
    genre_vectors: np.ndarray
    """(n_genres, d) unit vectors of each genre's description (``"<name>."`` when the lexicon
    has none)."""
    genre_words: dict[str, list[str]]
    """Bundle category → the lexicon's words for it, its own name always among them."""
    mood_names: list[str]
    anchor_vectors: np.ndarray
    """(n_anchors, d) unit vectors of every mood's anchor sentences."""
    anchor_mood: np.ndarray
    """Mood row of each anchor."""
    membership: sp.csr_matrix
    """(n_items, n_genres) 1 where the item carries the genre."""
    item_vectors: np.ndarray
    """(n_items, d) unit text vectors of the items."""
    popularity: np.ndarray
    """log1p(interactions) scaled to [0, 1]."""
    lexicon: Lexicon = field(repr=False)


_spaces: weakref.WeakKeyDictionary[LoadedBundle, IntentSpace] = weakref.WeakKeyDictionary()
_spaces_lock = threading.Lock()


def intent_space(bundle: LoadedBundle, lexicon: Lexicon | None = None) -> IntentSpace:
    """The bundle's :class:`IntentSpace`, built on first use and kept while the bundle lives.

    Raises ``FeatureUnavailableError`` (503) when the bundle has no text vectors or model.
    """
    lexicon = lexicon if lexicon is not None else default_lexicon()
    space = _spaces.get(bundle)
    if space is not None and space.lexicon is lexicon:
        return space
    with _spaces_lock:
        space = _spaces.get(bundle)
        if space is None or space.lexicon is not lexicon:
            space = _build_space(bundle, lexicon)
            _spaces[bundle] = space
    return space


def _build_space(bundle: LoadedBundle, lexicon: Lexicon) -> IntentSpace:
    by_lower = {g.lower(): g for g in lexicon.genre_descriptions}
    genres = list(bundle.category_names)
    descriptions = [lexicon.genre_descriptions.get(by_lower.get(g.lower(), ""), f"{g}.") for g in genres]
    words = {
        g: sorted({g.lower(), *lexicon.genre_words.get(by_lower.get(g.lower(), ""), [])}) for g in genres
    }
    moods = list(lexicon.moods.values())
    anchors = [a for m in moods for a in m.anchors]
    owner = np.array([i for i, m in enumerate(moods) for _ in m.anchors], dtype=np.int64)
    encoded = bundle._encode([*descriptions, *anchors]) if descriptions or anchors else None
    if encoded is None:  # pragma: no cover - a lexicon always has anchors (load_lexicon checks)
        raise ValueError("nothing to encode")
    encoded = _unit(encoded.astype(np.float32))
    column = {g: i for i, g in enumerate(genres)}
    rows = [i for i, cats in enumerate(bundle.categories) for c in cats if c in column]
    cols = [column[c] for cats in bundle.categories for c in cats if c in column]
    membership = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(bundle.n_items, len(genres))
    )
    assert bundle.vectors is not None  # _encode checked it
    pop = np.log1p(bundle.popularity.astype(np.float64))
    return IntentSpace(
        genres=genres,
        genre_vectors=encoded[: len(descriptions)],
        genre_words=words,
        mood_names=[m.name for m in moods],
        anchor_vectors=encoded[len(descriptions) :],
        anchor_mood=owner,
        membership=membership,
        item_vectors=_unit(bundle.vectors.astype(np.float32)),
        popularity=pop / pop.max() if len(pop) and pop.max() > 0 else np.zeros(len(pop)),
        lexicon=lexicon,
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# Reading a sentence -----------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """A lexicon phrase found in the text."""

    phrase: str
    clause: int
    start: int
    end: int
    negated_by: int | None
    """Position of the negator in the clause, when the phrase is negated."""


def clauses(text: str) -> list[list[str]]:
    """The text's clauses as lists of lower-case words (split at punctuation and "but")."""
    return [_WORD.findall(part) for part in _CLAUSE.split(text.lower().replace("’", "'"))]


def find(phrases: list[str], parts: list[list[str]], negators: frozenset[str]) -> list[Hit]:
    """Every occurrence of each phrase (whole words), and whether a negator precedes it."""
    hits = []
    for phrase in phrases:
        target = _WORD.findall(phrase.lower())
        n = len(target)
        if not n:
            continue
        for c, words in enumerate(parts):
            for s in range(len(words) - n + 1):
                if words[s : s + n] != target:
                    continue
                negated = next(
                    (j for j in range(s - 1, max(-1, s - 1 - NEGATION_WINDOW), -1) if words[j] in negators),
                    None,
                )
                hits.append(Hit(phrase, c, s, s + n, negated))
    return hits


@dataclass
class Reading:
    """What a sentence was read as, and the arrays the scoring needs."""

    text: str
    cleaned: str
    """The text without its negated spans: what is encoded."""
    genres: list[dict[str, Any]]
    moods: list[dict[str, Any]]
    suppressed: list[dict[str, Any]]
    genre_weights: np.ndarray
    """(n_genres,) read weight per bundle genre, 0 for suppressed ones."""
    avoid: np.ndarray
    """(n_genres,) True for genres whose items are ruled out."""
    vector: np.ndarray | None
    """The cleaned text's unit vector (None when nothing is left after the negations)."""
    query: np.ndarray | None = None
    """What items are compared with: ``vector`` pulled toward the read moods' anchors."""


def read(
    text: str,
    space: IntentSpace,
    settings: IntentSettings,
    encode: Any,
    selected: list[str] | None = None,
) -> Reading:
    """Read ``text`` against ``space``; ``encode(list[str]) -> (n, d)`` is the bundle's encoder;
    ``selected``: genres the user picked (read as named)."""
    lex = space.lexicon
    parts = clauses(text)
    genre_hits = {g: find(words, parts, lex.negators) for g, words in space.genre_words.items()}
    mood_hits = {m.name: find(m.keywords, parts, lex.negators) for m in lex.moods.values()}
    # Cut negated spans (negator .. keyword) from the text that is encoded.
    cut: set[tuple[int, int]] = set()
    for hit in [h for hs in (*genre_hits.values(), *mood_hits.values()) for h in hs]:
        if hit.negated_by is not None:
            cut.update((hit.clause, j) for j in range(hit.negated_by, hit.end))
    kept = [" ".join(w for j, w in enumerate(words) if (c, j) not in cut) for c, words in enumerate(parts)]
    cleaned = ", ".join(k for k in kept if k)
    vector = _unit(encode([cleaned]).astype(np.float32))[0] if cleaned else None

    suppressed: list[dict[str, Any]] = []
    avoid_names: dict[str, str] = {}
    for g, hits in genre_hits.items():
        negated = [h for h in hits if h.negated_by is not None]
        if negated and not any(h.negated_by is None for h in hits):
            avoid_names[g] = _span(parts, negated[0])
            suppressed.append({"name": g, "kind": "genre", "because": avoid_names[g]})
    # Moods: keyword (strength 1) or anchor similarity; negated keywords suppress.
    mood_sim = np.full(len(space.mood_names), -1.0)
    if vector is not None:
        np.maximum.at(mood_sim, space.anchor_mood, space.anchor_vectors @ vector)
    moods: dict[str, dict[str, Any]] = {}
    negated_moods: set[str] = set()
    for i, name in enumerate(space.mood_names):
        hits = mood_hits[name]
        plain = [h for h in hits if h.negated_by is None]
        negated = [h for h in hits if h.negated_by is not None]
        if negated and not plain:
            negated_moods.add(name)
            because = _span(parts, negated[0])
            suppressed.append({"name": name, "kind": "mood", "because": because})
            for g in lex.moods[name].avoid:
                match = _bundle_genre(space, g)
                if match is not None and match not in avoid_names:
                    avoid_names[match] = because
                    suppressed.append({"name": match, "kind": "genre", "because": because})
        elif plain:
            moods[name] = {"name": name, "strength": 1.0, "source": "keyword", "matched": plain[0].phrase}
        elif mood_sim[i] >= settings.mood_threshold:
            strength = round(float(mood_sim[i]), 4)
            moods[name] = {"name": name, "strength": strength, "source": "similarity", "matched": None}
    for name, mood in list(moods.items()):
        if mood["source"] != "keyword":
            continue
        for other in lex.moods[name].conflicts:
            if other in moods and moods[other]["source"] == "similarity":
                del moods[other]
                suppressed.append({"name": other, "kind": "mood", "because": f"conflicts with {name}"})
    best = max((m["strength"] for m in moods.values() if m["source"] == "similarity"), default=0.0)
    for name in [n for n, m in moods.items() if m["source"] == "similarity"]:
        if moods[name]["strength"] < best - MOOD_MARGIN:  # a clear winner: the runners-up are noise
            del moods[name]
    chosen = sorted(moods.values(), key=lambda m: -m["strength"])[:MAX_MOODS]
    # Genres: named (1.0), selected (1.0), implied by a mood (strength × affinity) or by the
    # text's cosine to the genre's description.
    weights = np.zeros(len(space.genres))
    source: list[str | None] = [None] * len(space.genres)

    def lift(row: int, value: float, why: str) -> None:
        if value > weights[row]:
            weights[row], source[row] = value, why

    index = {g: i for i, g in enumerate(space.genres)}
    for g, hits in genre_hits.items():
        plain = [h for h in hits if h.negated_by is None]
        if plain:
            lift(index[g], 1.0, f"named: {plain[0].phrase}")
    for g in selected or []:
        lift(index[g], 1.0, "selected")
    for mood in chosen:
        for g, affinity in lex.moods[mood["name"]].genres.items():
            match = _bundle_genre(space, g)
            if match is not None:
                lift(index[match], mood["strength"] * affinity, f"mood: {mood['name']}")
    if vector is not None and len(space.genres):
        sims = space.genre_vectors @ vector
        for row in np.flatnonzero(sims >= settings.genre_threshold).tolist():
            lift(row, float(sims[row]), "similar to the text")
    avoid = np.zeros(len(space.genres), dtype=bool)
    for g in avoid_names:
        avoid[index[g]] = True
    weights[avoid] = 0.0
    order = [i for i in np.argsort(-weights, kind="stable").tolist() if weights[i] >= GENRE_FLOOR]
    genres = [
        {"name": space.genres[i], "weight": round(float(weights[i]), 4), "source": source[i]}
        for i in order[:MAX_GENRES]
    ]
    weights[weights < GENRE_FLOOR] = 0.0
    # Items are compared with the text pulled toward its moods' anchors: "blood pumping" should
    # find films like its anchors (non-stop action), not titles that share the word "blood".
    query = vector
    if vector is not None and chosen:
        rows = {n: i for i, n in enumerate(space.mood_names)}
        anchors = space.anchor_vectors
        pull = sum(
            MOOD_PULL * m["strength"] * _unit(anchors[space.anchor_mood == rows[m["name"]]].mean(0))
            for m in chosen
        )
        query = _unit(vector + pull)
    return Reading(text, cleaned, genres, chosen, suppressed, weights, avoid, vector, query)


def _bundle_genre(space: IntentSpace, name: str) -> str | None:
    lower = name.lower()
    return next((g for g in space.genres if g.lower() == lower), None)


def _span(parts: list[list[str]], hit: Hit) -> str:
    """The negator and the words it negates, as the text had them (lower-cased)."""
    start = hit.negated_by if hit.negated_by is not None else hit.start
    return " ".join(parts[hit.clause][start : hit.end])


# Scoring ----------------------------------------------------------------------------------
@dataclass
class Scored:
    indices: np.ndarray
    scores: np.ndarray
    parts: dict[str, np.ndarray]
    """Each part's weighted contribution per listed item (same order as ``indices``)."""
    weights: dict[str, float]
    """The effective weights, normalised to sum to 1."""
    candidates: int


def score(
    space: IntentSpace,
    reading: Reading,
    weights: dict[str, float],
    k: int,
    *,
    user_scores: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    strict: list[str] | None = None,
) -> Scored:
    """The top ``k`` items by the weighted blend of the four parts.

    ``user_scores``: the user's model score per item (None: no user; its weight drops to 0);
    ``exclude``: item indices never to list (seen); ``strict``: only items of these genres.
    Items of a suppressed genre are never listed.
    """
    n = space.membership.shape[0]
    w = dict(weights)
    if user_scores is None:
        w["user"] = 0.0
    if reading.query is None:
        w["similarity"] = 0.0
    total = sum(w.values())
    if total <= 0:
        raise ValueError("every weight that applies is 0: nothing to rank by")
    w = {p: v / total for p, v in w.items()}
    allowed = np.ones(n, dtype=bool)
    if reading.avoid.any():
        allowed &= np.asarray(space.membership[:, reading.avoid].sum(axis=1)).ravel() == 0
    if strict:
        cols = [space.genres.index(g) for g in strict]
        allowed &= np.asarray(space.membership[:, cols].sum(axis=1)).ravel() > 0
    if exclude is not None and len(exclude):
        allowed[exclude] = False
    candidates = np.flatnonzero(allowed)
    parts: dict[str, np.ndarray] = {}
    g = np.clip(reading.genre_weights, 0.0, 0.999)
    parts["genre"] = 1.0 - np.exp(space.membership[candidates] @ np.log1p(-g))
    parts["popularity"] = space.popularity[candidates]
    if reading.query is not None:
        parts["similarity"] = _minmax(space.item_vectors[candidates] @ reading.query)
    else:
        parts["similarity"] = np.zeros(len(candidates))
    parts["user"] = _minmax(user_scores[candidates]) if user_scores is not None else np.zeros(len(candidates))
    blended = sum(w[p] * parts[p] for p in PARTS)
    assert isinstance(blended, np.ndarray)
    take = min(k, len(candidates))
    top = np.argpartition(-blended, take - 1)[:take] if take else np.zeros(0, dtype=np.int64)
    # Ties (equal blends) fall back to popularity, then item index: stable answers.
    top = top[np.lexsort((candidates[top], -parts["popularity"][top], -blended[top]))]
    return Scored(
        candidates[top],
        blended[top],
        {p: w[p] * parts[p][top] for p in PARTS},
        w,
        len(candidates),
    )


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not len(x):
        return x
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(len(x))
    lo, hi = float(x[finite].min()), float(x[finite].max())
    out = (np.where(finite, x, lo) - lo) / (hi - lo) if hi > lo else np.zeros(len(x))
    return np.asarray(out, dtype=np.float64)


def why(space: IntentSpace, reading: Reading, idx: int, contrib: dict[str, float], user: str | None) -> str:
    """The listed item's reason in plain words: its two largest parts."""
    words: list[str] = []
    for part, value in sorted(contrib.items(), key=lambda kv: -kv[1]):
        if value <= 0 or len(words) == 2:
            continue
        if part == "genre":
            cols = space.membership[idx].indices.tolist()
            matched = sorted(
                (c for c in cols if reading.genre_weights[c] > 0), key=lambda c: -reading.genre_weights[c]
            )
            if matched:
                words.append(" & ".join(space.genres[c] for c in matched[:2]) + " as asked")
        elif part == "similarity":
            words.append("close to your words")
        elif part == "popularity":
            words.append("popular")
        elif part == "user" and user is not None:
            words.append(f"fits user {user}'s taste")
    return " · ".join(words) if words else "best of what is left"
