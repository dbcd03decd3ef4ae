"""Per-session reader state: what a session did, kept durably so it survives a restart.

Why SQLite (WAL) and not memory: a session must keep learning across a restart and across
several uvicorn workers that each answer some of its requests. Every worker appends the
session's events to one SQLite file (``var/<catalogue>/sessions.sqlite``) and keeps an
in-memory copy that it tops up with the rows it has not seen yet (one indexed query per
request that names a session), so a like answered by worker A changes worker B's next answer.

What is stored are item *ids* and event types, not vectors: the state means the same thing
under the next bundle, and the private user-vector delta is recomputed from it in the
bundle's own vector space (``serving.cascade.session_delta``). Shared model weights are never
touched: online learning is private to the session.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from serving.events import Event

EVENT_WEIGHTS: dict[str, float] = {"like": 1.0, "share": 1.0, "click": 0.5, "dwell": 0.25, "skip": -0.5}
"""How strongly each event pulls the session's user vector toward (or away from) the item."""
DWELL_FULL_S = 30.0
"""Dwell time that counts as much as a click; shorter dwells count proportionally less."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    session  TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    ts       REAL NOT NULL,
    user_id  TEXT,
    item_id  TEXT NOT NULL,
    event    TEXT NOT NULL,
    dwell_s  REAL
);
CREATE INDEX IF NOT EXISTS session_events_by_session ON session_events (session, seq);
"""


def event_weight(event: str, dwell_s: float | None) -> float:
    """The signed strength of one event; dwell scales with time spent, up to a click's weight."""
    if event == "dwell":
        if dwell_s is None:
            return EVENT_WEIGHTS["dwell"]
        return EVENT_WEIGHTS["click"] * min(max(dwell_s, 0.0) / DWELL_FULL_S, 1.0)
    return EVENT_WEIGHTS[event]


@dataclass
class SessionState:
    """Everything a session did, in order; derived views are computed on demand."""

    session: str
    user_id: str | None = None
    """The dataset user this session belongs to, if an event named one."""
    events: list[tuple[str, str, float]] = field(default_factory=list)
    """(item_id, event, weight) in the order they happened."""
    last_seq: int = 0

    @property
    def positives(self) -> list[str]:
        """Items the reader engaged with (everything but skips), oldest first: history to append."""
        return [item for item, event, _ in self.events if event != "skip"]

    @property
    def touched(self) -> set[str]:
        """Every item the session interacted with, skips included: never recommend them again."""
        return {item for item, _, _ in self.events}

    @property
    def weights(self) -> list[tuple[str, float]]:
        return [(item, w) for item, _, w in self.events]

    def __len__(self) -> int:
        return len(self.events)


class SessionStore:
    """Session events in a SQLite file shared by every worker, with a bounded in-memory cache."""

    def __init__(self, path: Path, *, cache_size: int = 10_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute("PRAGMA busy_timeout=30000")
        self._con.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, SessionState] = OrderedDict()
        self._cache_size = cache_size

    def record(self, event: Event) -> SessionState:
        """Store one event durably and return the session's state including it."""
        with self._lock:
            self._con.execute(
                "INSERT OR IGNORE INTO session_events"
                " (session, event_id, ts, user_id, item_id, event, dwell_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.session,
                    event.event_id,
                    event.ts,
                    event.user_id,
                    event.item_id,
                    event.event,
                    event.dwell_s,
                ),
            )
            return self._refresh(event.session)

    def state(self, session: str) -> SessionState:
        """The session's state, topped up with events other workers stored since the last look."""
        with self._lock:
            return self._refresh(session)

    def _refresh(self, session: str) -> SessionState:
        state = self._cache.get(session)
        if state is None:
            state = SessionState(session)
            self._cache[session] = state
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(session)
        rows = self._con.execute(
            "SELECT seq, user_id, item_id, event, dwell_s FROM session_events"
            " WHERE session = ? AND seq > ? ORDER BY seq",
            (session, state.last_seq),
        ).fetchall()
        for seq, user_id, item_id, event, dwell_s in rows:
            state.events.append((item_id, event, event_weight(event, dwell_s)))
            if user_id is not None:
                state.user_id = user_id
            state.last_seq = seq
        return state

    def count(self) -> int:
        """Sessions with at least one stored event."""
        with self._lock:
            return int(
                self._con.execute("SELECT COUNT(DISTINCT session) FROM session_events").fetchall()[0][0]
            )

    def close(self) -> None:
        with self._lock:
            self._con.close()
