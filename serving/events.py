"""The serving event log (contract C1): every accepted interaction, durable before the reply.

Why it looks like this:

* **One line, one ``os.write``, on an ``O_APPEND`` descriptor.** The kernel places each
  append at the current end of file atomically, so several uvicorn workers (processes) can
  share one file without a lock and lines never interleave.
* **``fsync`` before the 2xx.** An event the caller was told is accepted survives a crash
  or a power cut; the nightly flow ingests the files idempotently by ``event_id``.
* **A torn tail starts a new file.** A crash in the middle of a write can leave a last line
  without its newline; readers skip such a line (C1). Appending after it would glue the next
  event onto it, so a process that finds a torn tail writes to the next file name instead.
* **One file per UTC day** (``YYYYMMDD.jsonl``, then ``YYYYMMDD.1.jsonl``... after a torn
  tail), so ingestion can skip days it has fully read.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from storage.artifacts import fsync_dir

EventType = Literal["click", "skip", "like", "share", "dwell"]
EVENT_TYPES: tuple[str, ...] = ("click", "skip", "like", "share", "dwell")


@dataclass(frozen=True)
class Event:
    """One line of the log, with exactly the fields of contract C1."""

    event_id: str
    ts: float
    session: str
    user_id: str | None
    item_id: str
    event: EventType
    dwell_s: float | None
    client: str | None = None
    """The client app that sent it (``serving.client_keys``); None: anonymous (or a line
    written before the field existed)."""

    @classmethod
    def new(
        cls,
        *,
        session: str,
        item_id: str,
        event: EventType,
        user_id: str | None = None,
        dwell_s: float | None = None,
        ts: float | None = None,
        event_id: str | None = None,
        client: str | None = None,
    ) -> Event:
        """A fresh event at the current time (UTC Unix seconds), with the client's idempotency
        key as its id, else a uuid4."""
        return cls(
            event_id=uuid.uuid4().hex if event_id is None else event_id,
            ts=time.time() if ts is None else ts,
            session=session,
            user_id=user_id,
            item_id=item_id,
            event=event,
            dwell_s=dwell_s,
            client=client,
        )

    def to_line(self) -> bytes:
        """The event as one JSON line, newline included."""
        return (json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class EventLog:
    """Appends events to ``directory/<UTC day>[.<n>].jsonl``; one descriptor per process and day."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day: str | None = None
        self._path: Path | None = None

    @property
    def path(self) -> Path | None:
        """The file the last event went to."""
        return self._path

    def append(self, event: Event) -> Path:
        """Write ``event`` durably; returns the file it went to. Raises ``OSError`` on failure,
        in which case the caller must not report the event as accepted."""
        return self.append_lines(day_of(event.ts), event.to_line())

    def append_lines(self, day: str, data: bytes) -> Path:
        """Append whole lines (``data`` ends with a newline) to ``day``'s file in one
        ``os.write``, so another process's lines never land between them; fsynced when the
        log was opened with ``fsync``. Returns the file; raises ``OSError`` on failure."""
        with self._lock:
            fd = self._descriptor(day)
            written = os.write(fd, data)
            if written != len(data):  # a full disk: never leave a half line for the next one
                self._close()
                raise OSError(f"short write to the event log {self._path}: {written} of {len(data)} bytes")
            if self.fsync:
                os.fsync(fd)
            assert self._path is not None
            return self._path

    def sync(self) -> None:
        """fsync the current file (a log opened without ``fsync``, before it closes)."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def _descriptor(self, day: str) -> int:
        if self._fd is not None and self._day == day:
            return self._fd
        self._close()
        self.directory.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            path = self.directory / (f"{day}.jsonl" if n == 0 else f"{day}.{n}.jsonl")
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            if not _torn_tail(fd):
                break
            os.close(fd)
            n += 1
        fsync_dir(self.directory)  # a newly created file's name must be durable too
        self._fd, self._day, self._path = fd, day, path
        return fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._day = self._path = None

    def close(self) -> None:
        with self._lock:
            self._close()


def day_of(ts: float) -> str:
    """The UTC day (``YYYYMMDD``) whose file an entry written at ``ts`` goes to."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d")


TORN_TAIL_CHECKS = 5
"""Looks at a file's last byte before calling its tail torn, ``TORN_TAIL_SETTLE_S`` apart."""
TORN_TAIL_SETTLE_S = 0.005


def _torn_tail(fd: int) -> bool:
    """True when the file's last byte is not a newline (a crash cut its last write short).

    Another worker appending to the same file can be caught in the middle of its write: a
    reader may see part of an append before the rest lands. That tail completes within
    microseconds, so it is looked at again a few times; only a tail that stays cut is torn."""
    for attempt in range(TORN_TAIL_CHECKS):
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return False
        if attempt < TORN_TAIL_CHECKS - 1:
            time.sleep(TORN_TAIL_SETTLE_S)
    return True


def read_events(directory: Path) -> list[Event]:
    """Every complete event under ``directory`` in file then line order (torn lines skipped).

    A reference reader for tests and tools; the pipeline's ingestion follows the same rules.
    """
    events: list[Event] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        data = path.read_bytes()
        for raw in data.split(b"\n")[:-1]:  # the part after the last newline is torn or empty
            try:
                events.append(Event(**json.loads(raw)))
            except (ValueError, TypeError):
                continue
    return events
