"""The demo world stays the same for the same seed and clock, and its vocabulary is usable data.

The digests were taken from the demo's feeds before the vocabulary moved from code into
``demo/vocabulary.json``; any change to the words, their order, the generator or the rendering
changes them (and every figure measured on the demo with it).
"""

from __future__ import annotations

import hashlib
import json
import string
from datetime import UTC, datetime
from importlib import resources

import pytest

from demo.feeds import DemoFeedServer, bench_feed
from demo.stories import OUTLETS, TOPICS, VOCABULARY_FILE, TopicVocabulary, generate_stories

NOW = datetime(2026, 11, 20, 9, 17, tzinfo=UTC)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.mark.parametrize(
    ("slug", "digest"),
    [
        ("harbor-gazette", "465be4b7c85f2f36"),  # RSS 2.0
        ("daily-meridian", "90658d8a5a8771e8"),  # Atom, tracking parameters
        ("the-courier", "ae6dc3099c361fe5"),  # RSS 1.0
        ("globe-and-anchor", "153aa6b19c952838"),  # Atom, HTML summaries
    ],
)
def test_outlet_feeds_are_byte_for_byte_the_same(slug: str, digest: str) -> None:
    server = DemoFeedServer(seed=7, clock=lambda: NOW)  # not started: documents only
    document = server.outlet_document(slug)
    assert document is not None
    assert _digest(document.body) == digest


def test_every_feed_bench_feed_and_story_list_are_the_same() -> None:
    server = DemoFeedServer(seed=7, clock=lambda: NOW)
    everything = hashlib.sha256()
    for outlet in OUTLETS:
        document = server.outlet_document(outlet.slug)
        assert document is not None
        everything.update(document.body)
    assert everything.hexdigest()[:16] == "d4bbcb7111a55e01"
    assert _digest(bench_feed(3, 20, seed=7)) == "a95d6641ae2e8e08"
    stories = generate_stories(seed=11, now=NOW, days=2)
    assert len(stories) == 983
    assert _digest(repr(stories).encode()) == "32379cec7a1e8820"


def test_vocabulary_file_fills_every_template() -> None:
    """Every topic has every part, and templates name only the facts the generator draws."""
    raw = json.loads(resources.files("demo").joinpath(VOCABULARY_FILE).read_text(encoding="utf-8"))
    assert list(raw["topics"]) == list(TOPICS)  # file order is the order seeds draw topics in
    parts = set(TopicVocabulary.__dataclass_fields__)
    facts = {"who", "where", "what", "n"}
    for name, vocab in raw["topics"].items():
        assert set(vocab) == parts, name
        assert all(vocab[part] and all(isinstance(w, str) and w for w in vocab[part]) for part in parts), name
        for template in vocab["headlines"] + vocab["summaries"]:
            used = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
            assert used <= facts, (name, template)
    covered = {t for o in OUTLETS for t in o.topics}
    assert covered <= set(TOPICS)  # every topical outlet writes about a topic that has words
