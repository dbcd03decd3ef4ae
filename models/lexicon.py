"""The words of each story, for the news ranker's ``lexical`` feature.

A sentence embedding places "Arsenal beat Chelsea" near every football story: it knows the
topic, and the mean of a reader's clicked vectors blurs the rest. Readers also follow named
things (a club, a company, a disease) whose names an embedding does not keep apart, and an
exact word match finds them. The feature is the cosine between a story's words and the
words of the stories the reader clicked, each word weighted by its inverse document
frequency (a TF-IDF profile), so a word every story uses counts for little and a name the
reader keeps clicking for a lot.

The vocabulary and document frequencies are those of the catalogue the lexicon was built
from; stories added later (the freshness delta) are tokenised against it, and their words
the catalogue never had count as the rarest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOKEN = re.compile(r"[a-z0-9][a-z0-9'-]{2,}")
"""Lower-cased words of three or more letters or digits (hyphens and apostrophes kept inside)."""
_STOP_WORDS = """about above after again against also among and any are around because been before
    being below between both but can could did does doing down during each even every few
    for from further had has have having her here hers him his how into its itself just
    last latest least less like made make many more most much must near new news next not
    now off once only other our ours out over own said same says she should since some
    still such than that the their theirs them then there these they this those though
    through today told too under until upon very was way well were what when where which
    while who whom whose why will with would year years yet you your yours"""
STOP = frozenset(_STOP_WORDS.split())


def tokens(text: str | None) -> list[str]:
    """The distinct words of ``text`` that the lexicon counts, in first-seen order."""
    seen: dict[str, None] = {}
    for word in TOKEN.findall((text or "").lower()):
        if word not in STOP:
            seen.setdefault(word.strip("'-"), None)
    return [w for w in seen if len(w) >= 3]


def story_texts(titles: Sequence[str | None], summaries: Sequence[str | None]) -> list[str]:
    """What the lexicon reads of each story: its title and summary."""
    pairs = zip(titles, summaries, strict=True)
    return [" ".join(t for t in (title, summary) if t) for title, summary in pairs]


@dataclass(frozen=True)
class Lexicon:
    """Each item's distinct word ids (CSR rows ``words[indptr[i]:indptr[i + 1]]``), each
    word's IDF, and each item's IDF norm; built once per bundle, read per request."""

    vocabulary: dict[str, int]
    indptr: np.ndarray
    words: np.ndarray
    idf: np.ndarray
    norms: np.ndarray

    @classmethod
    def build(cls, texts: Sequence[str | None]) -> Lexicon:
        """The lexicon of a catalogue whose item ``i`` reads ``texts[i]`` (title and summary)."""
        vocabulary: dict[str, int] = {}
        rows = [[vocabulary.setdefault(w, len(vocabulary)) for w in tokens(t)] for t in texts]
        df = np.bincount(
            np.fromiter((w for r in rows for w in r), np.int64), minlength=len(vocabulary)
        ).astype(np.float64)
        idf = (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)
        return cls._with_rows(vocabulary, rows, idf)

    @classmethod
    def _with_rows(cls, vocabulary: dict[str, int], rows: list[list[int]], idf: np.ndarray) -> Lexicon:
        indptr, words, norms = cls._csr(rows, idf)
        return cls(vocabulary, indptr, words, idf, norms)

    @staticmethod
    def _csr(rows: list[list[int]], idf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indptr = np.zeros(len(rows) + 1, np.int64)
        indptr[1:] = np.cumsum([len(r) for r in rows])
        words = np.fromiter((w for r in rows for w in r), np.int32, int(indptr[-1]))
        squared = np.bincount(
            np.repeat(np.arange(len(rows)), np.diff(indptr)), weights=idf[words] ** 2, minlength=len(rows)
        )
        return indptr, words, np.sqrt(squared).astype(np.float32)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def extended(self, texts: Sequence[str | None]) -> Lexicon:
        """This lexicon with items appended (the freshness delta's stories): their words are
        read with today's IDF; a word it never had gets a new id and the rarest weight."""
        vocabulary = dict(self.vocabulary)
        rows = [[vocabulary.setdefault(w, len(vocabulary)) for w in tokens(t)] for t in texts]
        rarest = float(self.idf.max(initial=1.0))
        idf = np.concatenate([self.idf, np.full(len(vocabulary) - len(self.idf), rarest, np.float32)])
        indptr, words, norms = self._csr(rows, idf)
        return Lexicon(
            vocabulary,
            np.concatenate([self.indptr, self.indptr[-1] + indptr[1:]]),
            np.concatenate([self.words, words]),
            idf,
            np.concatenate([self.norms, norms]),
        )

    def _concat(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of ``items`` one after another, and the position in ``items`` of each."""
        starts, ends = self.indptr[items], self.indptr[items + 1]
        lengths = ends - starts
        owner = np.repeat(np.arange(len(items)), lengths)
        first = np.cumsum(lengths) - lengths
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(first, lengths)
        return self.words[starts[owner] + offsets], owner

    def scores(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """TF-IDF cosine of each candidate's words to the words of ``history`` (0 without
        history or shared words); a word counts once per history item that has it."""
        history = np.asarray(history, dtype=np.int64)
        candidates = np.asarray(candidates, dtype=np.int64)
        out = np.zeros(len(candidates), np.float32)
        if not len(history) or not len(candidates):
            return out
        history_words, _ = self._concat(history)
        profile_words, counts = np.unique(history_words, return_counts=True)
        weights = self.idf[profile_words] * counts
        norm = float(np.sqrt((weights**2).sum()))
        if norm == 0.0:
            return out
        cand_words, owner = self._concat(candidates)
        at = np.clip(np.searchsorted(profile_words, cand_words), 0, len(profile_words) - 1)
        hit = profile_words[at] == cand_words
        dots = np.bincount(
            owner[hit], weights=self.idf[cand_words[hit]] * weights[at[hit]], minlength=len(candidates)
        )
        denom = np.maximum(self.norms[candidates] * norm, 1e-12)
        return (dots / denom).astype(np.float32)
