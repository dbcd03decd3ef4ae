"""What the nightly refresh trains when a catalogue has (almost) no interactions yet.

A news catalogue fed by scraping starts with items only; its interactions come from the
serving event log. Until enough users have a held-out interaction to evaluate on, training
a collaborative model would publish numbers that mean nothing, so the bundle carries a
popularity model (all zeros with no interactions) and serving's /feed relies on the daily
pool and freshness; the nightly log says so.
"""

from __future__ import annotations

import uuid

from tasks.training import SplitData, TrainResult, fit_for_serving

MIN_EVALUATED_USERS = 20
"""Users with a test interaction needed before a model is trained and evaluated."""


def cold_start_reason(data: SplitData, min_users: int = MIN_EVALUATED_USERS) -> str | None:
    """Why the catalogue is too cold to train on, or None when it is warm enough."""
    evaluated = sum(1 for t in data.test if len(t))
    if evaluated >= min_users:
        return None
    interactions = sum(len(h) for h in data.histories(("train", "valid", "test")))
    return (
        f"only {interactions} interactions and {evaluated} users with a held-out one (< {min_users}): "
        "publishing a popularity model; serving ranks by the daily pool and freshness"
    )


def cold_start_result(data: SplitData) -> TrainResult:
    """A popularity model fitted on whatever interactions exist, with no metrics."""
    model = fit_for_serving(data, "popularity", {})
    return TrainResult(uuid.uuid4().hex, "popularity", model.params(), {}, {}, 0.0, model)
