"""``update_mode: global``: item-level signals every reader shares between nightlies.

A story that readers are clicking right now should rise for everyone before tonight's
training sees it. Per item, two time-decayed counts (half-life ``serving.global_half_life_h``):

* **positives**: events labelled positive by ``storage.labels.label_of`` (click, like, share,
  a long dwell; never a skip), read from the event log;
* **shows**: how often it was listed, read from the impression log (``serving.impressions``).

From them, per item: a **trending** score (``log1p(positives)`` over the most trending item's)
and a smoothed **click-through rate** (positives per show, starting from
``global_ctr_prior`` shows' worth of the average rate, relative to the best item's). The
rank score gets ``global_trending_weight · trending + global_ctr_weight · ctr`` on top, and
the most trending items join the candidates (see ``serving.cascade.ItemBoost``).

Why every process reads the log files rather than sharing memory: several uvicorn workers
answer one catalogue, and a restart must not forget the afternoon. The log files are already
the durable, shared record, so each process follows their tails (every ``global_poll_s``) and,
on start, replays the last ``global_window_h`` of them. Every worker then holds the same counts
(within one poll), and a restarted one rebuilds them from disk. Memory stays bounded: at most
``global_max_items`` items are kept (the weakest dropped first) and a file's bytes are read once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from serving.cascade import ItemBoost
from storage.labels import label_of

if TYPE_CHECKING:
    from serving.bundle import LoadedBundle
    from storage.settings import EventsSettings, ServingSettings

logger = logging.getLogger("recflow.serving")

READ_CHUNK = 8 << 20
"""Bytes read from one file per pass: a long backlog is read in bounded steps."""
RESCORE_EVERY_S = 60.0
"""Scores are recomputed at least this often (decay moves them), else only after new lines."""


@dataclass(frozen=True)
class Snapshot:
    """The scores as of one moment: item ids with their trending and click-through scores."""

    generation: int
    item_ids: list[str]
    trending: np.ndarray
    ctr: np.ndarray
    positives: np.ndarray
    shows: np.ndarray


class GlobalSignals:
    """Decayed positives and shows per item, followed from the event and impression logs."""

    def __init__(
        self,
        events_dir: Path,
        impressions_dir: Path,
        serving: ServingSettings,
        events: EventsSettings | None = None,
    ) -> None:
        self.events_dir = Path(events_dir)
        self.impressions_dir = Path(impressions_dir)
        self.serving = serving
        self.events = events
        self.tau = serving.global_half_life_h * 3600.0 / math.log(2.0)
        self.window_s = serving.global_window_h * 3600.0
        self.max_items = serving.global_max_items
        # item_id → [positives, shows, ts the two are decayed to]
        self._counts: dict[str, list[float]] = {}
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._scored_at = 0.0
        self._snapshot = Snapshot(0, [], *(np.zeros(0) for _ in range(4)))
        self._boosts: tuple[int, int, ItemBoost] | None = None
        self.lines_read = 0

    # Following the logs -------------------------------------------------------------------
    def start(self) -> None:
        """Replay the recent window (blocking), then follow the logs in a daemon thread."""
        self.poll()
        self._thread = threading.Thread(target=self._run, name="global-signals", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.serving.global_poll_s):
            try:
                self.poll()
            except Exception:  # a bad line or a vanished file must not end the follower
                logger.exception("global signals: reading the event log failed")

    def poll(self, now: float | None = None) -> bool:
        """Read every new complete line of the recent files; rescore when something changed
        (or a while has passed). Returns whether anything new was read."""
        now = time.time() if now is None else now
        cutoff = now - self.window_s
        first_day = datetime.fromtimestamp(cutoff, UTC).strftime("%Y%m%d")
        changed = False
        for kind, folder in (
            ("event", self.events_dir),
            ("impression", self.impressions_dir),
        ):
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.jsonl")):
                if path.name[:8] < first_day:
                    self._offsets.pop(path, None)
                    continue
                changed |= self._follow(path, kind, cutoff)
        if changed or now - self._scored_at >= RESCORE_EVERY_S:
            self._rescore(now)
        return changed

    def _follow(self, path: Path, kind: str, cutoff: float) -> bool:
        offset = self._offsets.get(path, 0)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self._offsets.pop(path, None)
            return False
        if size < offset:  # replaced: read again
            offset = 0
        changed = False
        while size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(min(size - offset, READ_CHUNK))
            complete, newline, _ = data.rpartition(b"\n")
            if not newline:  # only a torn or unfinished line: look again next time
                break
            offset += len(complete) + 1
            with self._lock:
                for raw in complete.split(b"\n"):
                    self._apply(raw, kind, cutoff)
                self._trim()
            changed = True
        self._offsets[path] = offset
        return changed

    def _apply(self, raw: bytes, kind: str, cutoff: float) -> None:
        try:
            entry = orjson.loads(raw)
            ts = float(entry["ts"])
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError):
            return
        if ts < cutoff:
            return
        self.lines_read += 1
        if kind == "event":
            try:
                positive = label_of(str(entry["event"]), entry.get("dwell_s"), self.events) == "positive"
            except (ValueError, KeyError, TypeError):
                return
            if positive and isinstance(entry.get("item_id"), str):
                self._add(entry["item_id"], ts, 1.0, 0.0)
        else:
            for shown in entry.get("items") or ():
                if isinstance(shown, dict) and isinstance(shown.get("item_id"), str):
                    self._add(shown["item_id"], ts, 0.0, 1.0)

    def _add(self, item_id: str, ts: float, positives: float, shows: float) -> None:
        entry = self._counts.get(item_id)
        if entry is None:
            self._counts[item_id] = [positives, shows, ts]
            return
        if ts >= entry[2]:
            f = math.exp(-(ts - entry[2]) / self.tau)
            entry[0] = entry[0] * f + positives
            entry[1] = entry[1] * f + shows
            entry[2] = ts
        else:  # an older line (another worker's batch): decay it to the entry's time
            f = math.exp(-(entry[2] - ts) / self.tau)
            entry[0] += positives * f
            entry[1] += shows * f

    def _trim(self) -> None:
        """Keep the ``max_items`` strongest items (by positives, then shows, decayed to now)."""
        if len(self._counts) <= self.max_items:
            return
        now = time.time()
        strength = {
            item: (c[0] * math.exp(-(now - c[2]) / self.tau), c[1] * math.exp(-(now - c[2]) / self.tau))
            for item, c in self._counts.items()
        }
        keep = sorted(strength, key=strength.__getitem__, reverse=True)[: self.max_items]
        self._counts = {item: self._counts[item] for item in keep}

    def _rescore(self, now: float) -> None:
        with self._lock:
            items = list(self._counts)
            raw = np.array([self._counts[i] for i in items], dtype=np.float64).reshape(-1, 3)
        decay = np.exp(-np.maximum(now - raw[:, 2], 0.0) / self.tau)
        positives, shows = raw[:, 0] * decay, raw[:, 1] * decay
        trending = np.log1p(positives)
        if len(trending) and trending.max() > 0:
            trending /= trending.max()
        ctr = np.zeros(len(items))
        shown = np.maximum(shows, positives)
        if shows.sum() > 0:  # without impressions there is no rate to speak of
            prior = self.serving.global_ctr_prior
            mean = min(positives.sum() / shown.sum(), 1.0)
            ctr = (
                (positives + prior * mean) / (shown + prior)
                if prior > 0
                else positives / np.maximum(shown, 1e-9)
            )
            ctr = ctr / ctr.max() if ctr.max() > 0 else ctr
        self._generation += 1
        self._scored_at = now
        self._snapshot = Snapshot(self._generation, items, trending, ctr, positives, shows)

    # Reading the scores --------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def __len__(self) -> int:
        """Items whose counts are held."""
        return len(self._counts)

    def boost(self, bundle: LoadedBundle) -> ItemBoost:
        """The current scores in ``bundle``'s item indices (cached per bundle and snapshot)."""
        snap = self._snapshot
        cached = self._boosts
        if cached is not None and cached[0] == id(bundle) and cached[1] == snap.generation:
            return cached[2]
        serving = self.serving
        scores = np.zeros(bundle.n_items, dtype=np.float64)
        index = bundle.item_index
        rows = np.array([index.get(i, -1) for i in snap.item_ids], dtype=np.int64)
        known = rows >= 0
        value = serving.global_trending_weight * snap.trending + serving.global_ctr_weight * snap.ctr
        scores[rows[known]] = value[known]
        order = np.argsort(-snap.trending[known], kind="stable")
        positive = snap.positives[known][order] > 0
        top = rows[known][order][positive][: serving.global_trending_top]
        boost = ItemBoost(scores=scores, top=top)
        self._boosts = (id(bundle), snap.generation, boost)
        return boost

    def describe(self) -> dict[str, Any]:
        """What the follower holds (for tests and the metrics)."""
        return {"items": len(self._counts), "lines_read": self.lines_read, "generation": self._generation}
