"""The impression log: what every ``/feed`` and ``/recommend`` answer showed, and to whom.

An impression is the other half of a click: a model learns "clicked against shown but not
clicked" only if what was shown is known. Each answer gets a ``request_id`` (returned in its
body) and one JSON line under ``events_dir/impressions/<UTC day>[.<n>].jsonl``
(``Settings.impressions_dir``; the event ingestion reads only the event area's own files, so
the two logs never mix). The record is contract C6 (``docs/contracts.md``).

Why it is written this way:

* **Not on the request's path.** ``/recommend`` serves over 1,000 requests a second; an
  ``fsync`` per answer would cap it far below that. A request only appends a small tuple to
  an in-memory queue; a background thread turns what is queued into JSON lines every
  ``serving.impression_flush_s`` and appends them with **one** ``os.write`` per batch.
* **Same file rules as the event log** (``serving.events.EventLog``): ``O_APPEND``, whole
  lines per write, so several uvicorn workers share one file without a lock and their
  batches never interleave inside a line; a torn tail starts the next file.
* **Bounded.** The queue holds at most ``serving.impression_queue`` entries; when the writer
  falls behind, new impressions are dropped and counted (``recflow_impressions_dropped_total``
  in ``/metrics``) rather than slowing answers down or growing memory.
* **Flushed on shutdown** (and fsynced then): a clean stop loses nothing queued. A crash may
  lose the last ``impression_flush_s`` of impressions: they are statistics, not promises
  made to a caller (events, which are, stay fsynced before their 2xx).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from serving.events import EventLog, day_of

logger = logging.getLogger("recflow.serving")

Pending = tuple[
    str, float, str, str | None, str | None, Sequence[str], Sequence[int], Sequence[str], str, str, Any, str
]
"""(request_id, ts, endpoint, session, user_id, the bundle's item ids, listed indices, stages,
model, bundle version, delta sequence, strategy): what a request hands over, unformatted."""


def new_request_id() -> str:
    """A fresh request id (uuid4 hex)."""
    return uuid.uuid4().hex


def impression_line(pending: Pending) -> bytes:
    """One impression as its JSON line (the contract's fields, newline included)."""
    request_id, ts, endpoint, session, user_id, item_ids, indices, stages, model, version, delta, strategy = (
        pending
    )
    record = {
        "request_id": request_id,
        "ts": ts,
        "endpoint": endpoint,
        "session": session,
        "user_id": user_id,
        "items": [
            {"item_id": item_ids[idx], "position": pos, "stage": stage}
            for pos, (idx, stage) in enumerate(zip(indices, stages, strict=True), start=1)
        ],
        "model": model,
        "bundle_version": version,
        "delta_seq": delta,
        "strategy": strategy,
    }
    return orjson.dumps(record) + b"\n"


class ImpressionLog:
    """A bounded queue of impressions and the background thread that appends them in batches."""

    def __init__(
        self,
        directory: Path,
        *,
        max_queue: int = 10_000,
        flush_s: float = 0.25,
        on_written: Any = None,
        on_dropped: Any = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_queue = max_queue
        self.flush_s = flush_s
        self._log = EventLog(self.directory, fsync=False)
        self._queue: deque[Pending] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._on_written = on_written
        self._on_dropped = on_dropped
        self.written = 0
        self.dropped = 0
        self.failed = 0

    def log(self, pending: Pending) -> bool:
        """Queue one impression; False (and counted as dropped) when the queue is full.

        Never blocks and never raises: an answer is not worse for a lost impression."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            if self._on_dropped is not None:
                self._on_dropped(1)
            return False
        self._queue.append(pending)  # deque.append is atomic: no lock on the request's path
        return True

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="impression-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, fsync it and stop the writer."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        try:
            self._log.sync()
        except OSError as exc:
            logger.error("impression log fsync failed: %s", exc)
        self._log.close()

    def flush(self) -> int:
        """Append what is queued now, one write per UTC day it spans; returns lines written."""
        batch: list[Pending] = []
        queue = self._queue
        while queue:
            batch.append(queue.popleft())
        if not batch:
            return 0
        by_day: dict[str, list[bytes]] = {}
        for pending in batch:
            by_day.setdefault(day_of(pending[1]), []).append(impression_line(pending))
        written = 0
        for day, lines in by_day.items():
            try:
                self._log.append_lines(day, b"".join(lines))
            except OSError as exc:
                self.failed += len(lines)
                self.dropped += len(lines)
                if self._on_dropped is not None:
                    self._on_dropped(len(lines))
                logger.error("impression log append failed, %d impressions lost: %s", len(lines), exc)
                continue
            written += len(lines)
        self.written += written
        if written and self._on_written is not None:
            self._on_written(written)
        return written

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must outlive a bad batch
                logger.exception("impression writer failed")
                time.sleep(self.flush_s)


class ReaderExposure:
    """How many times each story was already listed to each reader, for the news ranker's
    ``reshown`` feature (``models.news_ranker``): the nightly learns from the impression log
    how much less a reader clicks a story they scrolled past before, and serving needs the
    same count for the request at hand without reading the log back.

    A reader is the user id, else ``session:<session>`` (the key the log's impressions get in
    training). Kept in this worker's memory: bounded to ``max_readers`` readers (least
    recently served dropped first) and ``max_items`` stories each (the oldest dropped first),
    so its cost per request is one dict lookup and an update of the listed stories. Several
    workers each count the requests they answered, an undercount the ranker tolerates.
    """

    def __init__(self, max_readers: int = 100_000, max_items: int = 1_000) -> None:
        if max_readers < 1 or max_items < 1:
            raise ValueError(
                f"ReaderExposure: max_readers ({max_readers}) and max_items ({max_items}) must be ≥ 1"
            )
        self.max_readers, self.max_items = max_readers, max_items
        self._readers: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def reader(user_id: str | None, session: str | None) -> str | None:
        """The key a reader's impressions are counted under (None: anonymous, no session)."""
        if user_id:
            return user_id
        return f"session:{session}" if session else None

    def counts(self, reader: str | None) -> dict[str, int]:
        """Item id → times listed to ``reader`` so far (a copy; empty for an unknown reader)."""
        if reader is None:
            return {}
        with self._lock:
            seen = self._readers.get(reader)
            return dict(seen) if seen else {}

    def add(self, reader: str | None, item_ids: Sequence[str]) -> None:
        """Count one more listing of each of ``item_ids`` to ``reader``."""
        if reader is None or not item_ids:
            return
        with self._lock:
            seen = self._readers.get(reader)
            if seen is None:
                seen = self._readers[reader] = {}
                while len(self._readers) > self.max_readers:
                    self._readers.popitem(last=False)
            else:
                self._readers.move_to_end(reader)
            for item in item_ids:
                seen[item] = seen.pop(item, 0) + 1  # re-inserted: the dict's order is recency
            while len(seen) > self.max_items:
                del seen[next(iter(seen))]

    def __len__(self) -> int:
        return len(self._readers)
