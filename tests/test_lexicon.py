"""The news ranker's lexical feature: TF-IDF cosine of a story's words to a reader's clicked stories."""

from __future__ import annotations

import numpy as np
import pytest

from models.lexicon import Lexicon, story_texts, tokens
from models.news_ranker import FEATURES, ItemFacts, request_features

STORIES = [
    "Arsenal beat Chelsea in the London derby",  # 0
    "Arsenal sign a striker before the deadline",  # 1
    "Chelsea manager says the season is long",  # 2
    "Mars rover finds signs of ancient water",  # 3
    "Election results: the governor wins again",  # 4
    "The council says the bridge will reopen",  # 5
]


def test_tokens_are_lower_case_distinct_and_skip_stop_words() -> None:
    assert tokens("The Arsenal, the ARSENAL and Mars' rover!") == ["arsenal", "mars", "rover"]
    assert tokens(None) == [] and tokens("") == []


def test_a_story_sharing_the_readers_words_scores_above_one_that_does_not() -> None:
    lexicon = Lexicon.build(STORIES)
    scores = lexicon.scores(np.array([0]), np.arange(len(STORIES)))
    assert scores[0] == pytest.approx(1.0, abs=1e-6), "a story is its own best match"
    assert scores[1] > 0 and scores[2] > 0, "shares Arsenal / Chelsea"
    assert scores[3] == scores[4] == scores[5] == 0.0
    # two clicks on Arsenal: the Arsenal story now beats the Chelsea one by more
    twice = lexicon.scores(np.array([0, 1]), np.array([1, 2]))
    once = lexicon.scores(np.array([0]), np.array([1, 2]))
    assert twice[0] / twice[1] > once[0] / once[1]


def test_a_rare_word_weighs_more_than_a_common_one() -> None:
    texts = ["common alpha"] * 8 + ["common rare", "rare beta", "common gamma"]
    lexicon = Lexicon.build(texts)
    rare_match, common_match = lexicon.scores(np.array([8]), np.array([9, 10]))
    assert rare_match > common_match > 0


def test_no_history_or_no_candidates_scores_zero() -> None:
    lexicon = Lexicon.build([*STORIES, None])
    assert not lexicon.scores(np.array([], np.int64), np.arange(7)).any()
    assert lexicon.scores(np.array([0]), np.array([], np.int64)).shape == (0,)
    assert lexicon.scores(np.array([0]), np.array([6]))[0] == 0.0, "a story without text"


def test_extended_appends_stories_and_keeps_the_old_ones_scores() -> None:
    lexicon = Lexicon.build(STORIES)
    more = lexicon.extended(["Arsenal striker injured", "Quantum widget unveiled"])
    assert len(more) == len(STORIES) + 2
    old = lexicon.scores(np.array([0, 1]), np.arange(len(STORIES)))
    new = more.scores(np.array([0, 1]), np.arange(len(STORIES) + 2))
    assert np.allclose(new[: len(STORIES)], old)
    assert new[6] > 0 and new[7] == 0.0
    # a new story clicked: its unseen words are in the profile at the rarest weight
    assert more.scores(np.array([7]), np.array([7]))[0] == pytest.approx(1.0, abs=1e-6)


def test_story_texts_join_title_and_summary() -> None:
    assert story_texts(["A", None, "C"], ["x", "y", None]) == ["A x", "y", "C"]


def test_request_features_carry_the_lexical_column() -> None:
    n = len(STORIES)
    facts = ItemFacts(None, np.full(n, 0.0), np.zeros(n, np.int64), Lexicon.build(STORIES))
    zero = np.zeros(n)
    rows = request_features(facts, None, np.array([0]), np.array([0]), np.arange(1, n), zero, zero, 3600.0)
    column = rows[:, FEATURES.index("lexical")]
    assert column[0] > 0 and column[2] == 0.0
    bare = request_features(
        ItemFacts(None, np.full(n, 0.0), np.zeros(n, np.int64)),
        None,
        np.array([0]),
        np.array([0]),
        np.arange(1, n),
        zero,
        zero,
        3600.0,
    )
    assert not bare[:, FEATURES.index("lexical")].any(), "no lexicon: the feature is 0"
