"""Per-session reader state: what a session did, kept durably so it survives a restart.

Why SQLite (WAL) and not memory: a session must keep learning across a restart and across
several uvicorn workers that each answer some of its requests. Every worker appends the
session's events to one SQLite file (``var/<catalogue>/sessions.sqlite``) and keeps an
in-memory copy that it tops up with the rows it has not seen yet (two indexed lookups per
request that names a session), so a like answered by worker A changes worker B's next answer.

What is stored are item *ids* and event types, not vectors: the state means the same thing
under the next bundle, and the private user-vector delta is recomputed from it in the
bundle's own vector space (``serving.cascade.session_delta``). Shared model weights are never
touched: online learning is private to the session.

Why the state is bounded: a session keeps its last ``serving.session_max_events`` events one
by one; older ones fold into a per-item summary (accumulated weight, engaged or not), capped
to the strongest ``session_max_events`` items. The delta is linear in the weights, so folding
keeps the session's taste while the work per request stays bounded however long it reads.
A session is forgotten ``session_ttl_hours`` after its last event, and the store keeps at
most ``session_max_sessions`` (least recently active evicted first). A request that names no
known session stores and caches nothing: only an interaction creates a session.

The same file holds the idempotency keys of ``/interact`` (``event_keys``): SQLite's unique
key makes a claim atomic across worker processes, and the first answer is kept for retries.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serving.events import Event
from storage.labels import label_of
from storage.settings import EventsSettings

EVENT_WEIGHTS: dict[str, float] = {"like": 1.0, "share": 1.0, "click": 0.5, "skip": -0.5}
"""How strongly each event pulls the session's user vector toward (or away from) the item."""
DWELL_FULL_S = 30.0
"""Dwell time that counts as much as a click; shorter dwells count proportionally less."""
PENDING_STALE_S = 30.0
"""An idempotency key claimed this long ago whose event never completed (its request died):
a retry takes it over instead of waiting for it."""
EVICT_EVERY_S = 60.0
"""How often a writer looks for expired sessions and keys, and re-counts the sessions."""

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
CREATE TABLE IF NOT EXISTS session_summary (
    session TEXT NOT NULL,
    item_id TEXT NOT NULL,
    weight  REAL NOT NULL,
    engaged INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (session, item_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_keys (
    key    TEXT PRIMARY KEY,
    ts     REAL NOT NULL,
    answer TEXT
);
CREATE INDEX IF NOT EXISTS event_keys_by_ts ON event_keys (ts);
"""
_SESSIONS = """
CREATE TABLE sessions (
    session TEXT PRIMARY KEY,
    last_ts REAL NOT NULL,
    folded  INTEGER NOT NULL DEFAULT 0,
    user_id TEXT,
    created REAL NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_last_ts ON sessions (last_ts);
INSERT INTO sessions (session, last_ts, created, user_id)
    SELECT session, MAX(ts), MIN(ts), (SELECT e2.user_id FROM session_events e2 WHERE e2.session = e.session
                               AND e2.user_id IS NOT NULL ORDER BY e2.seq DESC LIMIT 1)
    FROM session_events e GROUP BY session;
"""
"""One row per session (created with the table, from a store written before it existed)."""


WEAK_NEGATIVE_WEIGHT = -0.1
"""A glance-and-leave (a short dwell, by default) pulls away less than a skip."""


def event_weight(event: str, dwell_s: float | None, events: EventsSettings | None = None) -> float:
    """The signed strength of one event. Its sign comes from the one label mapping
    (:func:`storage.labels.label_of`, the same one the nightly trains by), its size from
    :data:`EVENT_WEIGHTS`; a positive dwell scales with time spent, up to a click's weight."""
    label = label_of(event, dwell_s, events)
    if label == "negative":
        return EVENT_WEIGHTS["skip"]
    if label == "weak_negative":
        return WEAK_NEGATIVE_WEIGHT
    if event == "dwell":
        return EVENT_WEIGHTS["click"] * min(max(dwell_s or 0.0, 0.0) / DWELL_FULL_S, 1.0)
    return abs(EVENT_WEIGHTS[event])


@dataclass
class SessionState:
    """What a session did: a folded summary of its older events, then its recent ones in order."""

    session: str
    user_id: str | None = None
    """The dataset user this session belongs to, if an event named one."""
    summary: dict[str, tuple[float, bool]] = field(default_factory=dict)
    """Folded older events: item_id → (accumulated weight, engaged), least recent first."""
    events: list[tuple[str, str, float]] = field(default_factory=list)
    """Recent (item_id, event, weight) in the order they happened."""
    folded: int = 0
    """How many events the summary stands for."""
    created: float = 0.0
    """When the store's row for the session was made: a session forgotten and started again
    under the same name is another one, whatever a worker still caches of the old."""
    last_seq: int = 0

    @property
    def positives(self) -> list[str]:
        """Items the reader engaged with (events labelled positive), oldest first: history to append."""
        older = [item for item, (_, engaged) in self.summary.items() if engaged]
        return older + [item for item, _, weight in self.events if weight > 0]

    @property
    def touched(self) -> set[str]:
        """Every item the session interacted with, skips included: never recommend them again."""
        return set(self.summary) | {item for item, _, _ in self.events}

    @property
    def weights(self) -> list[tuple[str, float]]:
        """(item_id, weight) pairs whose weighted sum is the session's delta."""
        older = [(item, weight) for item, (weight, _) in self.summary.items()]
        return older + [(item, w) for item, _, w in self.events]

    @property
    def size(self) -> int:
        """Entries held (summary items + recent events): what a request's work grows with."""
        return len(self.summary) + len(self.events)

    def __len__(self) -> int:
        """Events the session has had, folded ones included."""
        return self.folded + len(self.events)


Claim = tuple[Literal["new", "done", "busy"], dict[str, Any] | None]
"""What claiming an idempotency key found: ``new`` (go ahead), ``done`` (the first answer),
``busy`` (a request with this key is still in flight)."""


class SessionStore:
    """Session events in a SQLite file shared by every worker, with a bounded in-memory cache."""

    def __init__(
        self,
        path: Path,
        *,
        cache_size: int = 10_000,
        max_events: int = 200,
        ttl_hours: float = 720.0,
        max_sessions: int = 100_000,
        events: EventsSettings | None = None,
    ) -> None:
        self.path = Path(path)
        self.events = events
        """The label mapping (``events`` settings); None: its defaults."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_events = max_events
        self.ttl_s = ttl_hours * 3600.0
        self.max_sessions = max_sessions
        self._con = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute("PRAGMA busy_timeout=30000")
        self._con.executescript(_SCHEMA)
        with self._transaction():
            exists = self._con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sessions'"
            ).fetchall()
            if not exists:
                for statement in _SESSIONS.split(";"):
                    if statement.strip():
                        self._con.execute(statement)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, SessionState] = OrderedDict()
        self._cache_size = cache_size
        self._next_evict = 0.0
        self._sessions_seen = 0
        with self._lock:
            self._evict()

    # Sessions ---------------------------------------------------------------------------------
    def record(self, event: Event) -> SessionState:
        """Store one event durably and return the session's state including it (folding the
        session's oldest events when it holds more than ``max_events``)."""
        with self._lock:
            with self._transaction():
                inserted = self._con.execute(
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
                ).rowcount
                updated = self._con.execute(
                    "UPDATE sessions SET last_ts = MAX(last_ts, ?), user_id = COALESCE(?, user_id)"
                    " WHERE session = ?",
                    (event.ts, event.user_id, event.session),
                ).rowcount
                if not updated:
                    self._con.execute(
                        "INSERT INTO sessions (session, last_ts, user_id, created) VALUES (?, ?, ?, ?)",
                        (event.session, event.ts, event.user_id, time.time()),
                    )
                    self._sessions_seen += 1
                if inserted:
                    (n,) = self._con.execute(
                        "SELECT COUNT(*) FROM session_events WHERE session = ?", (event.session,)
                    ).fetchone()
                    if n > self.max_events:
                        self._fold(event.session, n - self.max_events // 2)
            if self._sessions_seen > self.max_sessions or time.monotonic() >= self._next_evict:
                self._evict()
            return self._refresh(event.session)

    def state(self, session: str) -> SessionState:
        """The session's state, topped up with events other workers stored since the last look.
        A session the store does not know is empty and is not cached."""
        with self._lock:
            return self._refresh(session)

    def _refresh(self, session: str) -> SessionState:
        meta = self._con.execute(
            "SELECT folded, user_id, created FROM sessions WHERE session = ?", (session,)
        ).fetchone()
        if meta is None:
            self._cache.pop(session, None)
            return SessionState(session)
        folded, user_id, created = meta
        state = self._cache.get(session)
        if state is None or (state.folded, state.created) != (folded, created):
            # New here, folded by another writer, or forgotten and started again.
            state = SessionState(session, folded=folded, created=created)
            for item, weight, engaged, seq in self._con.execute(
                "SELECT item_id, weight, engaged, seq FROM session_summary WHERE session = ? ORDER BY seq",
                (session,),
            ):
                state.summary[item] = (weight, bool(engaged))
                state.last_seq = max(state.last_seq, seq)
            self._cache[session] = state
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(session)
        state.user_id = user_id
        rows = self._con.execute(
            "SELECT seq, item_id, event, dwell_s FROM session_events"
            " WHERE session = ? AND seq > ? ORDER BY seq",
            (session, state.last_seq),
        ).fetchall()
        for seq, item_id, event, dwell_s in rows:
            state.events.append((item_id, event, event_weight(event, dwell_s, self.events)))
            state.last_seq = seq
        return state

    def _fold(self, session: str, count: int) -> None:
        """Fold the session's ``count`` oldest events into its summary (inside a transaction)."""
        rows = self._con.execute(
            "SELECT seq, item_id, event, dwell_s FROM session_events WHERE session = ? ORDER BY seq LIMIT ?",
            (session, count),
        ).fetchall()
        summary = {
            item: (weight, bool(engaged), seq)
            for item, weight, engaged, seq in self._con.execute(
                "SELECT item_id, weight, engaged, seq FROM session_summary WHERE session = ?", (session,)
            )
        }
        for seq, item, event, dwell_s in rows:
            weight, engaged, _ = summary.get(item, (0.0, False, 0))
            w = event_weight(event, dwell_s, self.events)
            summary[item] = (weight + w, engaged or w > 0, seq)
        # The strongest items, then the most recent, stand for the session's taste.
        kept = sorted(summary.items(), key=lambda kv: (abs(kv[1][0]), kv[1][2]), reverse=True)
        self._con.execute("DELETE FROM session_summary WHERE session = ?", (session,))
        self._con.executemany(
            "INSERT INTO session_summary (session, item_id, weight, engaged, seq) VALUES (?, ?, ?, ?, ?)",
            [(session, item, w, int(e), seq) for item, (w, e, seq) in kept[: self.max_events]],
        )
        self._con.execute("DELETE FROM session_events WHERE session = ? AND seq <= ?", (session, rows[-1][0]))
        self._con.execute("UPDATE sessions SET folded = folded + ? WHERE session = ?", (len(rows), session))

    def _evict(self) -> None:
        """Forget sessions idle longer than the retention window, then the least recently active
        beyond ``max_sessions``; forget idempotency keys older than the window."""
        cutoff = time.time() - self.ttl_s
        with self._transaction():
            gone = [
                s for (s,) in self._con.execute("SELECT session FROM sessions WHERE last_ts < ?", (cutoff,))
            ]
            (n,) = self._con.execute("SELECT COUNT(*) FROM sessions WHERE last_ts >= ?", (cutoff,)).fetchone()
            if n > self.max_sessions:
                gone += [
                    s
                    for (s,) in self._con.execute(
                        "SELECT session FROM sessions WHERE last_ts >= ? ORDER BY last_ts LIMIT ?",
                        (cutoff, n - self.max_sessions),
                    )
                ]
            for table in ("session_events", "session_summary", "sessions"):
                self._con.executemany(f"DELETE FROM {table} WHERE session = ?", [(s,) for s in gone])
            self._con.execute("DELETE FROM event_keys WHERE ts < ?", (cutoff,))
        for s in gone:
            self._cache.pop(s, None)
        self._sessions_seen = min(n, self.max_sessions)
        self._next_evict = time.monotonic() + EVICT_EVERY_S

    def count(self) -> int:
        """Sessions the store holds (each has had at least one event)."""
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])

    @property
    def cached(self) -> int:
        """Sessions held in this process's memory."""
        return len(self._cache)

    # Idempotency keys -------------------------------------------------------------------------
    def claim(self, key: str) -> Claim:
        """Claim ``key`` for a new event, atomically across processes; or find its first answer."""
        now = time.time()
        with self._lock, self._transaction():
            if self._con.execute(
                "INSERT OR IGNORE INTO event_keys (key, ts, answer) VALUES (?, ?, NULL)", (key, now)
            ).rowcount:
                return "new", None
            ts, answer = self._con.execute(
                "SELECT ts, answer FROM event_keys WHERE key = ?", (key,)
            ).fetchone()
            if answer is not None:
                return "done", json.loads(answer)
            if now - ts > PENDING_STALE_S:  # its request died: this retry takes over
                self._con.execute("UPDATE event_keys SET ts = ? WHERE key = ?", (now, key))
                return "new", None
            return "busy", None

    def settle(self, key: str, answer: dict[str, Any]) -> None:
        """Keep the answer a claimed key's event got, for its retries."""
        with self._lock:
            self._con.execute("UPDATE event_keys SET answer = ? WHERE key = ?", (json.dumps(answer), key))

    def release(self, key: str) -> None:
        """Give back a claim whose event was not stored, so a retry can store it."""
        with self._lock:
            self._con.execute("DELETE FROM event_keys WHERE key = ? AND answer IS NULL", (key,))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._con)

    def close(self) -> None:
        with self._lock:
            self._con.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an error): the write lock is taken up
    front, so two workers never interleave a read-then-write on one session."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def __enter__(self) -> None:
        self._con.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._con.execute("COMMIT" if exc_type is None else "ROLLBACK")
