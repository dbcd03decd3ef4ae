"""What an event means for training: the one place a label is decided (contract C1).

A serving event is ``positive`` (the reader wanted the item: retrieval models learn from it
and it may be held out as a validation or test target), ``negative`` (the reader refused it:
a skip) or ``weak_negative`` (the reader looked and left quickly: a short dwell). Only
positives enter k-core, the splits and the retrieval models' training data; negatives and
weak negatives stay in ``interactions`` for the ranker. The mapping lives in settings
(``events.labels``, ``events.dwell_positive_s``) so an operator can change what an event
means without touching code; :func:`label_of` applies it, at ingestion, when the k-core
input is built, and (online) wherever a session's state weighs an event.

This module lives in ``storage`` so the offline tasks and the online service both import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # only for annotations: serving imports this module and needs neither at run time
    import duckdb

    from storage.settings import EventsSettings

EventType = Literal["click", "like", "share", "dwell", "skip"]
"""The event names of contract C1."""
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
Label = Literal["positive", "negative", "weak_negative"]
LABELS: tuple[str, ...] = get_args(Label)
POSITIVE: Label = "positive"

DEFAULT_LABELS: dict[EventType, Label] = {
    "click": "positive",
    "like": "positive",
    "share": "positive",
    "skip": "negative",
}
"""Fixed labels of the events whose meaning does not depend on time spent; ``dwell`` is
labelled by its duration against ``events.dwell_positive_s`` instead."""


def label_of(event: str, dwell_s: float | None, events: EventsSettings | None = None) -> Label:
    """The label of one event under ``events`` (default: the default mapping).

    ``dwell`` is positive when ``dwell_s`` reaches ``events.dwell_positive_s`` and a weak
    negative otherwise, including when no duration was sent: a dwell that cannot show it
    held the reader is no evidence of interest. Raises ``ValueError`` for an event name
    outside contract C1, so a typo never silently trains.
    """
    if events is None:
        from storage.settings import EventsSettings

        events = EventsSettings()
    if event == "dwell":
        return POSITIVE if dwell_s is not None and dwell_s >= events.dwell_positive_s else "weak_negative"
    if event not in events.labels:
        raise ValueError(f"event {event!r} is not one of {sorted(EVENT_TYPES)}")
    return events.labels[event]


def label_rows(con: duckdb.DuckDBPyConnection, table: str, events: EventsSettings | None = None) -> int:
    """Set ``table.label`` from the current mapping; returns the rows whose label changed.

    Rows named by a contract C1 event are labelled by :func:`label_of`, so a changed mapping
    (say, ``like`` relabelled) applies to events ingested before the change as well. Rows of
    other kinds come from batch sources (MovieLens ratings, CSV purchases, MIND clicks...),
    whose loaders keep every row as a positive, as they always have; a label such a row
    already has is left alone. ``label_of`` runs once per distinct (event, dwell) pair.
    """
    pairs = con.execute(
        f"SELECT DISTINCT event_type, dwell_s FROM {table} WHERE event_type IN ?", [list(EVENT_TYPES)]
    ).df()
    changed = 0
    if len(pairs):
        pairs["label"] = labelled(zip(pairs["event_type"], pairs["dwell_s"], strict=True), events)
        con.register("event_labels", pairs)
        try:
            changed = con.execute(
                f"""
                UPDATE {table} AS t SET label = l.label FROM event_labels AS l
                WHERE t.event_type = l.event_type AND t.dwell_s IS NOT DISTINCT FROM l.dwell_s
                  AND t.label IS DISTINCT FROM l.label
                """
            ).fetchall()[0][0]
        finally:
            con.unregister("event_labels")
    batch = con.execute(
        f"UPDATE {table} SET label = '{POSITIVE}' WHERE label IS NULL AND event_type NOT IN ?",
        [list(EVENT_TYPES)],
    ).fetchall()[0][0]
    return int(changed) + int(batch)


def labelled(
    events_and_dwells: Iterable[tuple[str, float | None]], events: EventsSettings | None = None
) -> list[Label]:
    """:func:`label_of` over (event, dwell seconds) pairs; a missing dwell may be NaN."""
    return [
        label_of(e, None if d is None or math.isnan(d) else float(d), events) for e, d in events_and_dwells
    ]
