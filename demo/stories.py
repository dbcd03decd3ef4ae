"""The demo's world: fictional outlets, topic vocabularies and a deterministic story generator.

No real article text is available offline, so the demo writes its own: templated but varied
headlines and summaries per topic, each topic with its own people, places and things, so a
text model can learn topics from them. The words live in ``vocabulary.json`` beside this
module (data, not code: edit it to change what the demo writes about). Time is cut into fixed
slots of ``SLOT_SECONDS`` on the Unix clock; every slot holds one story whose content is drawn
from a generator seeded by ``(seed, slot)`` alone. The stories of the last ``days`` days up to
``now`` therefore do not depend on when you ask (a story keeps its id, headline and time), and
as the clock moves new slots fill, so each hourly scrape finds news. About a quarter of the
stories are carried by one or two more outlets, later and under a different headline built from
the same facts: the near-duplicates the morning harvest must collapse.

Contract C3 (fixed): :class:`DemoStory` and :func:`generate_stories`. ``story_id`` names the
underlying story, so several ``DemoStory`` rows share it when several outlets carry it; ``url``
is unique per row (one outlet's article).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources

SLOT_SECONDS = 240
"""One new story every four minutes: 15 an hour, 360 a day."""
DEFAULT_DAYS = 8
"""Days of history generated (2,880 stories, well over the 2,000 the demo promises)."""
CARRY_SHARE = 0.27
"""Share of stories carried by more than one outlet."""


"""Share of stories carried by more than one outlet."""


@dataclass(frozen=True)
class DemoStory:
    """One outlet's article about one story (contract C3)."""

    story_id: str
    outlet: str
    topic: str
    title: str
    summary: str
    url: str
    published: datetime


@dataclass(frozen=True)
class DemoOutlet:
    """A fictional outlet and how its feed is written (format and quirks the scraper must handle)."""

    slug: str
    name: str
    host: str
    topics: tuple[str, ...]
    """Topics it covers; empty = a general outlet covering all of them."""
    format: str
    """``rss2``, ``atom`` or ``rss1``."""
    entry_categories: bool = True
    """Whether entries carry a category (topical outlets may rely on the feed's default)."""
    dates: bool = True
    """Whether entries carry a date (one outlet omits them: the scraper uses the fetch time)."""
    enclosures: bool = False
    """Whether entries carry an image enclosure."""
    tracking: bool = False
    """Whether links carry utm_* tracking parameters (the scraper drops them)."""
    html_summary: bool = False
    """Whether the summary is HTML (the scraper strips it to text)."""

    @property
    def default_category(self) -> str | None:
        """The category a feed config gives this outlet's entries that carry none."""
        return self.topics[0] if len(self.topics) == 1 else None


@dataclass(frozen=True)
class TopicVocabulary:
    """Words one topic's stories are made of."""

    who: tuple[str, ...]
    where: tuple[str, ...]
    what: tuple[str, ...]
    headlines: tuple[str, ...]
    summaries: tuple[str, ...]


VOCABULARY_FILE = "vocabulary.json"
"""The topic vocabularies, a package data file of :mod:`demo`."""


def load_vocabulary() -> dict[str, TopicVocabulary]:
    """Every topic's vocabulary, in the file's order (the order seeds draw topics in, so it is
    part of what makes a seed's stories the same from run to run)."""
    text = resources.files("demo").joinpath(VOCABULARY_FILE).read_text(encoding="utf-8")
    topics = json.loads(text)["topics"]
    return {
        name: TopicVocabulary(**{part: tuple(words) for part, words in vocab.items()})
        for name, vocab in topics.items()
    }


TOPICS: dict[str, TopicVocabulary] = load_vocabulary()

_TOPIC_NAMES = tuple(TOPICS)

OUTLETS: tuple[DemoOutlet, ...] = (
    DemoOutlet("harbor-gazette", "The Harbor Gazette", "harborgazette.example", (), "rss2"),
    DemoOutlet("daily-meridian", "Daily Meridian", "dailymeridian.example", (), "atom", tracking=True),
    DemoOutlet("northern-ledger", "Northern Ledger", "northernledger.example", (), "rss2", enclosures=True),
    DemoOutlet("the-courier", "The Courier", "thecourier.example", (), "rss1"),
    DemoOutlet("morning-wire", "Morning Wire", "morningwire.example", (), "rss2", dates=False),
    DemoOutlet("globe-and-anchor", "Globe & Anchor", "globeandanchor.example", (), "atom", html_summary=True),
    DemoOutlet("capitol-brief", "Capitol Brief", "capitolbrief.example", ("politics",), "rss2", False),
    DemoOutlet("ballot-box", "Ballot Box Weekly", "ballotbox.example", ("politics", "world"), "atom"),
    DemoOutlet(
        "market-street", "Market Street Journal", "marketstreet.example", ("business",), "rss2", tracking=True
    ),
    DemoOutlet("ledger-lines", "Ledger Lines", "ledgerlines.example", ("business", "technology"), "rss1"),
    DemoOutlet("circuit-board", "Circuit Board", "circuitboard.example", ("technology",), "atom", False),
    DemoOutlet(
        "byte-daily", "Byte Daily", "bytedaily.example", ("technology", "science"), "rss2", enclosures=True
    ),
    DemoOutlet("lab-notes", "Lab Notes", "labnotes.example", ("science",), "rss1", False),
    DemoOutlet("pulse-health", "Pulse Health", "pulsehealth.example", ("health",), "rss2", html_summary=True),
    DemoOutlet("wellbeing-today", "Wellbeing Today", "wellbeingtoday.example", ("health", "food"), "atom"),
    DemoOutlet("full-time", "Full Time", "fulltime.example", ("sports",), "rss2", False, enclosures=True),
    DemoOutlet("the-touchline", "The Touchline", "touchline.example", ("sports",), "atom", tracking=True),
    DemoOutlet("marquee", "Marquee", "marquee.example", ("entertainment",), "rss2"),
    DemoOutlet("encore", "Encore Magazine", "encore.example", ("entertainment", "food"), "rss1"),
    DemoOutlet("world-desk", "World Desk", "worlddesk.example", ("world",), "atom", False),
    DemoOutlet(
        "green-dispatch", "Green Dispatch", "greendispatch.example", ("climate",), "rss2", html_summary=True
    ),
    DemoOutlet("weather-front", "Weather Front", "weatherfront.example", ("climate", "travel"), "atom"),
    DemoOutlet(
        "wanderlust", "Wanderlust Post", "wanderlust.example", ("travel",), "rss2", False, enclosures=True
    ),
    DemoOutlet("the-larder", "The Larder", "thelarder.example", ("food",), "rss1", False),
    DemoOutlet("campus-times", "Campus Times", "campustimes.example", ("education",), "rss2", False),
    DemoOutlet("class-notes", "Class Notes", "classnotes.example", ("education", "science"), "atom"),
)

_OUTLETS_BY_TOPIC: dict[str, tuple[DemoOutlet, ...]] = {
    topic: tuple(o for o in OUTLETS if not o.topics or topic in o.topics) for topic in _TOPIC_NAMES
}
# Topical outlets write most of their topic; general ones pick up the rest.
_PRIMARY_WEIGHT = {True: 3.0, False: 1.0}


def slugify(text: str, limit: int = 60) -> str:
    """Lower-case words joined by dashes, at most ``limit`` characters: the article part of a URL."""
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")[:limit].rstrip("-")


_SENTENCE_START = re.compile(r"([.:?!] )([a-z])")


def _fill(template: str, facts: dict[str, str]) -> str:
    text = template.format(**facts)
    text = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)
    return text[0].upper() + text[1:]


def slot_stories(seed: int, slot: int) -> list[DemoStory]:
    """The story of one time slot, as written by each outlet that carries it."""
    rng = random.Random(f"recflow-demo:{seed}:{slot}")
    topic = rng.choice(_TOPIC_NAMES)
    vocab = TOPICS[topic]
    facts = {
        "who": rng.choice(vocab.who),
        "where": rng.choice(vocab.where),
        "what": rng.choice(vocab.what),
        "n": str(rng.randint(2, 98)),
    }
    story_id = hashlib.sha1(f"{seed}:{slot}".encode()).hexdigest()[:16]
    candidates = _OUTLETS_BY_TOPIC[topic]
    weights = [_PRIMARY_WEIGHT[bool(o.topics)] for o in candidates]
    primary = rng.choices(candidates, weights=weights, k=1)[0]
    carriers = [primary]
    if rng.random() < CARRY_SHARE:
        others = [o for o in candidates if o is not primary]
        carriers += rng.sample(others, k=min(len(others), rng.choice((1, 1, 2))))
    headline_order = rng.sample(range(len(vocab.headlines)), k=len(carriers))
    summary_order = rng.sample(range(len(vocab.summaries)), k=len(carriers))
    published = datetime.fromtimestamp(slot * SLOT_SECONDS + rng.randrange(SLOT_SECONDS), tz=UTC)
    stories = []
    for i, outlet in enumerate(carriers):
        title = _fill(vocab.headlines[headline_order[i]], facts)
        summary = _fill(vocab.summaries[summary_order[i]], facts)
        when = published + timedelta(minutes=rng.randint(12, 240)) if i else published
        url = f"https://{outlet.host}/{when:%Y/%m/%d}/{slugify(title)}-{story_id[:8]}"
        stories.append(DemoStory(story_id, outlet.name, topic, title, summary, url, when))
    return stories


def generate_stories(
    seed: int = 7, now: datetime | None = None, *, days: int = DEFAULT_DAYS
) -> list[DemoStory]:
    """All outlets' articles published in the ``days`` days up to ``now`` (default: the clock).

    Deterministic for ``(seed, now)``; an article's content depends only on ``seed`` and its
    time slot, so moving ``now`` forward only adds articles (and drops those older than
    ``days``). Sorted by publication time, oldest first.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    end = now.timestamp()
    start = end - days * 86_400
    first_slot = int(start // SLOT_SECONDS) + 1
    last_slot = int(end // SLOT_SECONDS)
    stories = [
        story
        for slot in range(first_slot, last_slot + 1)
        for story in slot_stories(seed, slot)
        if story.published.timestamp() <= end
    ]
    stories.sort(key=lambda s: (s.published, s.url))
    return stories


def outlet_by_name(name: str) -> DemoOutlet:
    """The outlet called ``name`` (as in ``DemoStory.outlet``)."""
    for outlet in OUTLETS:
        if outlet.name == name:
            return outlet
    raise KeyError(f"no demo outlet named {name!r}; known: {[o.name for o in OUTLETS]}")
