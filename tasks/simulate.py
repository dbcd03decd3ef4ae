"""Simulated readers through the real service: ``GET /feed`` then ``POST /interact``.

The offline persona simulator (:mod:`tasks.personas`) writes impression tables that never
touch the service. Here the same personas read the live service over HTTP, so everything
they do arrives the way a real reader's does: ``/feed`` logs the impression, ``/interact``
appends clicks, likes, skips and dwell to the event log (with an ``event_id``, so a retry is
never counted twice), the session's state changes the next answer, and the nightly learns
from it exactly as from real readers.

A reader's visit: ``GET /feed?session=<persona session>&k=…``, then the slate is read top
down. Position ``r`` (0-based) is looked at with probability ``(1 + r) ** -position_bias``,
lowered by ``fatigue`` for every story already clicked in this visit. A looked-at story is
clicked with the persona click model of :mod:`tasks.personas` (topic taste, favourite words
in the headline and summary, a per-story appeal every reader shares, freshness); a click
has a dwell time and may be liked; a looked-at story that is not clicked is skipped
explicitly with probability ``skip_share × (1 − P(click))``. Tastes drift across days: each
day a share ``drift`` of a persona's topic interest moves to a new random draw.

Every random draw comes from generators seeded by (seed, day, persona, visit), and a fixed
number of draws is made per listed story whatever happens, so a seed gives the same
decisions whenever the service gives the same answers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from storage.settings import Settings
from storage.warehouse import connect
from tasks.personas import Persona, PersonaConfig, make_personas, validate_item_table

EventName = Literal["click", "dwell", "like", "skip"]


class SimulationError(RuntimeError):
    """The service refused or failed a simulated reader's request."""


@dataclass(frozen=True)
class ReaderConfig:
    """How simulated readers read a slate (see the module docstring)."""

    k: int = 10
    """Stories asked for per visit."""
    position_bias: float = 0.7
    fatigue: float = 0.4
    """Per click already made in this visit, the chance of looking further is × e^-fatigue."""
    drift: float = 0.15
    """Share of a persona's topic interest that moves to a new random draw each day."""
    like_shift: float = -1.2
    """P(like | click) = sigmoid(click logit + like_shift)."""
    skip_share: float = 0.5
    repeat_penalty: float = 0.7
    """Click logit lost per earlier listing of a story the reader saw and left: a headline
    met again is less tempting (a story already clicked is never clicked again)."""
    max_visits_per_day: int = 4
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    """Persona tastes and the click model's weights (its ``personas`` and ``seed`` are set
    by the simulation)."""

    def __post_init__(self) -> None:
        checks = {
            "k": self.k >= 1,
            "position_bias": self.position_bias >= 0,
            "fatigue": self.fatigue >= 0,
            "repeat_penalty": self.repeat_penalty >= 0,
            "drift": 0 <= self.drift <= 1,
            "skip_share": 0 <= self.skip_share <= 1,
            "max_visits_per_day": self.max_visits_per_day >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"reader config: invalid {bad}; expected k ≥ 1, position_bias ≥ 0, fatigue ≥ 0, "
                "drift and skip_share in [0, 1], max_visits_per_day ≥ 1"
            )


@dataclass(frozen=True)
class Action:
    """One thing a reader did with one listed story."""

    item_id: str
    position: int
    event: EventName
    dwell_s: float | None = None


@dataclass(frozen=True)
class Visit:
    """One visit: what the service listed and what the reader did with it."""

    day: int
    persona: str
    session: str
    arm: str
    request_id: str | None
    shown: tuple[str, ...]
    ages_h: tuple[float, ...]
    """Age of each listed story at the visit (hours; NaN where the service gave no time)."""
    actions: tuple[Action, ...]
    session_events: int = 0
    """The session's events the service said it applied when it answered (0: no session state)."""

    def count(self, event: EventName) -> int:
        return sum(a.event == event for a in self.actions)

    @property
    def dwell_s(self) -> float:
        return float(sum(a.dwell_s or 0.0 for a in self.actions if a.event == "dwell"))

    @property
    def clicked_ages_h(self) -> list[float]:
        at = {item: age for item, age in zip(self.shown, self.ages_h, strict=True)}
        return [at[a.item_id] for a in self.actions if a.event == "click" and not math.isnan(at[a.item_id])]


@dataclass(frozen=True)
class DaySummary:
    day: int
    visits: int
    shown: int
    clicks: int
    likes: int
    skips: int
    dwell_s: float

    @property
    def ctr(self) -> float:
        return self.clicks / self.shown if self.shown else 0.0

    def line(self) -> str:
        return (
            f"day {self.day + 1}: {self.visits} visits, {self.shown} stories listed, {self.clicks} clicks "
            f"(CTR {self.ctr:.3f}), {self.likes} likes, {self.skips} skips, {self.dwell_s:.0f} s read"
        )


@dataclass
class SimulationResult:
    """Every visit, in the order they were made."""

    seed: int
    personas: int
    days: int
    visits: list[Visit] = field(default_factory=list)

    def summary(self) -> list[DaySummary]:
        rows = []
        for day in range(self.days):
            vs = [v for v in self.visits if v.day == day]
            rows.append(
                DaySummary(
                    day=day,
                    visits=len(vs),
                    shown=sum(len(v.shown) for v in vs),
                    clicks=sum(v.count("click") for v in vs),
                    likes=sum(v.count("like") for v in vs),
                    skips=sum(v.count("skip") for v in vs),
                    dwell_s=sum(v.dwell_s for v in vs),
                )
            )
        return rows

    def decisions(self) -> list[tuple[int, str, str, int, str]]:
        """(day, persona, item, position, event) of every action: what "same decisions" means."""
        return [(v.day, v.persona, a.item_id, a.position, a.event) for v in self.visits for a in v.actions]


# --- personas and their daily tastes ---------------------------------------------------------


def warehouse_items(settings: Settings) -> pd.DataFrame:
    """The catalogue's stories as a persona item table (topic = first category)."""
    if not settings.warehouse_path.exists():
        raise SimulationError(
            f"catalogue {settings.catalogue!r} has no warehouse at {settings.warehouse_path}: "
            "scrape and publish a bundle first (e.g. `make demo` or `recflow run scrape`)"
        )
    with connect(settings.warehouse_path, read_only=True) as con:
        items = con.execute(
            "SELECT item_id, title, coalesce(description, '') AS text, "
            "coalesce(categories[1], 'other') AS topic, "
            "to_timestamp(coalesce(published_ts, 0)) AS published FROM items ORDER BY item_id"
        ).df()
    if len(items) < 2:
        raise SimulationError(
            f"catalogue {settings.catalogue!r} has {len(items)} item(s); simulated readers need at least 2"
        )
    return items


def personas_for(items: pd.DataFrame, n: int, seed: int, config: PersonaConfig) -> list[Persona]:
    """``n`` personas whose topics and favourite words come from ``items``."""
    if n < 1:
        raise ValueError(f"personas must be ≥ 1, got {n}")
    cfg = PersonaConfig(**{**config.__dict__, "personas": n, "seed": seed})
    return make_personas(validate_item_table(items), cfg)


def drifted(
    taste: Mapping[str, float], drift: float, rng: np.random.Generator, concentration: float
) -> dict[str, float]:
    """Tomorrow's topic interest: ``drift`` of today's moved to a fresh Dirichlet draw."""
    topics = sorted(taste)
    new = rng.dirichlet(np.full(len(topics), concentration))
    mixed = [(1 - drift) * taste[t] + drift * float(x) for t, x in zip(topics, new, strict=True)]
    total = sum(mixed) or 1.0
    return {t: m / total for t, m in zip(topics, mixed, strict=True)}


def appeal(item_id: str) -> float:
    """A story's attractiveness to every reader: a standard normal fixed by its id alone.

    A property of the story, not of the crowd reading it: every simulation against the
    catalogue (any seed, warm-up or A/B) agrees which stories are appealing, as yesterday's
    and today's readers of one outlet do. Drawn per run seed, what one run's readers clicked
    would say nothing about the next run's, and no popularity could ever carry over."""
    digest = hashlib.sha256(f"appeal:{item_id}".encode()).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "big")).normal())


def session_id(run: str, persona: Persona) -> str:
    return f"sim-{run}-{persona.user_id}"[:64]


def event_id(*parts: object) -> str:
    """A stable idempotency key: a retried POST of the same decision is stored once."""
    return "sim" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:40]


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def _published_ts(value: object) -> float:
    if not isinstance(value, str) or not value:
        return math.nan
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return math.nan


@dataclass
class Memory:
    """What one reader remembers across visits."""

    seen: dict[str, int] = field(default_factory=dict)
    """Story → times it was looked at and left."""
    read: set[str] = field(default_factory=set)

    def remember(self, actions: Sequence[Action], looked: Sequence[str]) -> None:
        clicked = {a.item_id for a in actions if a.event == "click"}
        self.read |= clicked
        for item_id in looked:
            if item_id not in clicked:
                self.seen[item_id] = self.seen.get(item_id, 0) + 1


# --- one visit -------------------------------------------------------------------------------


def click_logit(
    persona: Persona,
    taste: Mapping[str, float],
    item: Mapping[str, Any],
    now: float,
    config: PersonaConfig,
) -> float:
    """The persona click model of :mod:`tasks.personas` for one listed story."""
    from tasks.personas import _words

    topic = item.get("topic") or ((item.get("categories") or ["other"])[0])
    share = taste.get(str(topic), 0.0)
    hits = len(
        _words(f"{item.get('title') or ''} {item.get('summary') or ''}").intersection(persona.keywords)
    )
    published = _published_ts(item.get("published"))
    age_days = 0.0 if math.isnan(published) else max(0.0, now - published) / 86400.0
    return (
        persona.click_bias
        + config.taste_weight * float(np.clip(np.log(len(taste) * share + 1e-3), -3.0, 2.5))
        + config.keyword_weight * min(hits, 3)
        + config.appeal_weight * appeal(str(item["item_id"]))
        - config.freshness_weight * age_days
    )


def decide(
    persona: Persona,
    taste: Mapping[str, float],
    items: Sequence[Mapping[str, Any]],
    now: float,
    rng: np.random.Generator,
    config: ReaderConfig,
    memory: Memory | None = None,
) -> list[Action]:
    """What the reader does with a slate, top down (position bias, fatigue, click model,
    and the reader's ``memory`` of earlier visits, which this visit then updates)."""
    memory = memory if memory is not None else Memory()
    actions: list[Action] = []
    looked: list[str] = []
    clicks = 0
    for position, item in enumerate(items):
        look, click, like, skip = rng.random(4)
        noise = rng.normal()
        if look >= (1 + position) ** -config.position_bias * math.exp(-config.fatigue * clicks):
            continue
        item_id = str(item["item_id"])
        if item_id in memory.read:
            continue  # already read: scrolled past
        logit = click_logit(persona, taste, item, now, config.persona)
        looked.append(item_id)
        logit -= config.repeat_penalty * memory.seen.get(item_id, 0)
        p = 1.0 / (1.0 + math.exp(-logit))
        if click < p:
            clicks += 1
            read = persona.reading_s * float(np.clip(math.exp(0.5 * logit), 0.2, 5.0)) * math.exp(0.3 * noise)
            actions.append(Action(item_id, position, "click"))
            actions.append(Action(item_id, position, "dwell", round(max(read, 1.0), 1)))
            if like < 1.0 / (1.0 + math.exp(-(logit + config.like_shift))):
                actions.append(Action(item_id, position, "like"))
        elif skip < config.skip_share * (1.0 - p):
            actions.append(Action(item_id, position, "skip"))
    memory.remember(actions, looked)
    return actions


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise SimulationError(
            f"{what}: HTTP {response.status_code} from {response.url}: {response.text[:300]}"
        )
    body: dict[str, Any] = response.json()
    return body


def read_feed(
    client: httpx.Client,
    persona: Persona,
    taste: Mapping[str, float],
    *,
    index: int,
    day: int,
    visit: int,
    run: str,
    arm: str,
    now: float,
    seed: int,
    config: ReaderConfig,
    memory: Memory | None = None,
) -> Visit:
    """One visit through HTTP: the feed, the reader's decisions, each posted to ``/interact``."""
    session = session_id(run, persona)
    feed = _check(client.get("/feed", params={"session": session, "k": config.k}), f"GET /feed for {session}")
    items = feed.get("items", [])
    actions = decide(persona, taste, items, now, _rng(seed, day, index, visit, 1), config, memory)
    for n, action in enumerate(actions):
        body: dict[str, Any] = {
            "session": session,
            "item_id": action.item_id,
            "event": action.event,
            "event_id": event_id(run, day, persona.user_id, visit, n, action.item_id, action.event),
        }
        if action.dwell_s is not None:
            body["dwell_s"] = action.dwell_s
        _check(client.post("/interact", json=body), f"POST /interact {action.event} for {session}")
    ages = tuple(
        (now - ts) / 3600.0 if not math.isnan(ts := _published_ts(i.get("published"))) else math.nan
        for i in items
    )
    return Visit(
        day=day,
        persona=persona.user_id,
        session=session,
        arm=arm,
        request_id=feed.get("request_id"),
        shown=tuple(str(i["item_id"]) for i in items),
        ages_h=ages,
        actions=tuple(actions),
        session_events=int(feed.get("session_events") or 0),
    )


# --- days ------------------------------------------------------------------------------------


def simulate(
    route: Callable[[str], tuple[str, httpx.Client]],
    personas: Sequence[Persona],
    *,
    days: int,
    seed: int,
    run: str | None = None,
    config: ReaderConfig = ReaderConfig(),
    clock: Callable[[int], float] | None = None,
    between_days: Callable[[int], object] | None = None,
    on_day: Callable[[DaySummary], object] | None = None,
    progress: bool = True,
) -> SimulationResult:
    """``days`` simulated days of ``personas`` reading the service.

    ``route(session)`` gives the arm name and the HTTP client that serves a session (one
    service: always the same; an A/B test: split by a stable hash of the session).
    ``clock(day)`` is the Unix time readers judge freshness by on that day (default: now);
    ``between_days(day)`` runs after each day but the last (demo feeds publish, a scrape,
    a nightly); ``on_day`` gets each day's summary as it ends.
    """
    if days < 1:
        raise ValueError(f"days must be ≥ 1, got {days}")
    run = run or str(seed)
    result = SimulationResult(seed=seed, personas=len(personas), days=days)
    tastes = [dict(p.taste) for p in personas]
    memories = [Memory() for _ in personas]
    for day in range(days):
        now = clock(day) if clock is not None else datetime.now().timestamp()
        if day > 0:
            tastes = [
                drifted(t, config.drift, _rng(seed, day, i, 0), config.persona.taste_concentration)
                for i, t in enumerate(tastes)
            ]
        schedule: list[tuple[float, int, int]] = []
        for i, persona in enumerate(personas):
            rng = _rng(seed, day, i, 0, 2)
            n = min(int(rng.poisson(persona.visits_per_day)), config.max_visits_per_day)
            schedule.extend((float(t), i, v) for v, t in enumerate(sorted(rng.random(n))))
        schedule.sort()
        for _, i, v in tqdm(schedule, desc=f"day {day + 1}/{days}", unit="visit", disable=not progress):
            persona = personas[i]
            arm, client = route(session_id(run, persona))
            visit = read_feed(
                client,
                persona,
                tastes[i],
                index=i,
                day=day,
                visit=v,
                run=run,
                arm=arm,
                now=now,
                seed=seed,
                config=config,
                memory=memories[i],
            )
            result.visits.append(visit)
        if on_day is not None:
            on_day(result.summary()[day])
        if between_days is not None and day < days - 1:
            between_days(day)
    return result


def stable_arm(session: str, arms: Sequence[str] = ("a", "b")) -> str:
    """The arm a session belongs to: a hash of the session id, the same on every visit and run."""
    digest = hashlib.sha256(session.encode()).digest()
    return arms[int.from_bytes(digest[:8], "big") % len(arms)]
