"""The cascade plumbing the recommend, feed and catalogue routers share.

How a request becomes ``CascadeParams``, where the cascade runs (event loop or thread pool),
whose history and session state it sees, and how its result becomes a list of items.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import Response
from starlette.concurrency import run_in_threadpool

from serving.bundle import LoadedBundle
from serving.cascade import CascadeParams, CascadeResult, ItemBoost, Stage, stable_seed
from serving.impressions import new_request_id
from serving.schemas import SESSION_PATTERN
from serving.sessions import SessionState
from storage.settings import ServingSettings

INLINE_MAX_K = 50
"""Deepest list a request may ask for and still run on the event loop (see ``run_cascade``)."""
INLINE_MIN_HISTORY = 100
"""History length that always counts as ordinary, however short the warm-up's were."""
_SESSION_RE = re.compile(SESSION_PATTERN)
SESSION_MODES = ("private", "global")
"""The ``update_mode`` values in which a session's own events change its answers."""


async def run_cascade(
    serving: ServingSettings,
    bundle: LoadedBundle,
    who: str,
    history: np.ndarray,
    p: CascadeParams,
    **kwargs: Any,
) -> CascadeResult:
    """``bundle.recommend_for`` on the event loop for an ordinary request to a bundle that
    measured cheap at load, else in the thread pool.

    A sub-millisecond numpy/FAISS cascade holds the GIL for most of its time, so a thread
    gains no parallelism and the hop (~0.1 ms) is a tenth of the request. But whatever
    runs on the loop stalls every other connection, so deep requests (k up to ``max_k``,
    histories far longer than the warm-up's: 8–17 ms on MovieLens) and slow bundles
    (a torch model's longer, GIL-releasing work) go to the thread pool.
    """
    ordinary = p.k <= INLINE_MAX_K and len(history) <= max(2 * bundle.warm_history, INLINE_MIN_HISTORY)
    if ordinary and bundle.cascade_ms <= serving.inline_below_ms:
        return bundle.recommend_for(who, history, p, **kwargs)
    return await run_in_threadpool(bundle.recommend_for, who, history, p, **kwargs)


def cascade_params(
    serving: ServingSettings, k: int, mmr_lambda: float | None, explore: bool | None, *seed: object
) -> CascadeParams:
    """The request's cascade knobs; its exploration seed is stable for ``seed`` within a day."""
    day_seed = stable_seed(*seed, datetime.now(UTC).date())
    return CascadeParams.from_settings(serving, k, mmr_lambda=mmr_lambda, explore=explore, seed=day_seed)


def cascade_info(result: CascadeResult, p: CascadeParams) -> dict[str, Any]:
    """How the list was made (``schemas.CascadeInfo``)."""
    return {
        "pipeline": result.pipeline,
        "candidates": result.candidates,
        "duplicates_removed": result.duplicates_removed,
        "mmr_lambda": p.mmr_lambda,
    }


def listed(bundle: LoadedBundle, result: CascadeResult) -> list[dict[str, Any]]:
    """The cascade's items as ``schemas.CascadeItem`` dicts, ranked from 1."""
    return [
        {**bundle.item_record(idx), "score": score, "rank": rank, "stage": stage}
        for rank, (idx, score, stage) in enumerate(
            zip(result.indices, result.scores, result.stages, strict=True), start=1
        )
    ]


def item_list(bundle: LoadedBundle, rows: Any, scores: Any, query: str, stage: Stage) -> dict[str, Any]:
    """Nearest items to ``query`` as a ``schemas.ItemList`` dict."""
    items = [
        {**bundle.item_record(int(i)), "score": float(sc), "rank": r, "stage": stage}
        for r, (i, sc) in enumerate(zip(rows.tolist(), scores.tolist(), strict=True), start=1)
    ]
    return {"query": query, "bundle_version": bundle.version, "items": items}


def reader(
    serving: ServingSettings, bundle: LoadedBundle, user_id: str | None, session: SessionState | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float]] | None, bool]:
    """(history, exclude, session weights, known) for a user and/or a session."""
    base = bundle.histories.get(user_id) if user_id is not None else None
    known = base is not None
    history = base if base is not None else np.zeros(0, dtype=np.int64)
    weights = None
    exclude = history
    if session is not None and len(session) and serving.update_mode in SESSION_MODES:
        extra = bundle.indices_of(session.positives)
        history = np.concatenate([history.astype(np.int64), extra]) if len(extra) else history
        exclude = np.union1d(history, bundle.indices_of(sorted(session.touched)))
        weights = session.weights
    else:
        exclude = np.unique(history)
    return history, exclude, weights, known


def session_from(
    serving: ServingSettings, explicit: str | None, cookie: str | None, response: Response
) -> tuple[str, bool]:
    """The request's session and whether the reader brought it: explicit, else a valid cookie,
    else a new one (set as cookie; it is stored only once the reader interacts)."""
    known = True
    if explicit is not None:
        session = explicit
    elif cookie is not None and _SESSION_RE.match(cookie):
        session = cookie
    else:
        session, known = uuid.uuid4().hex, False
    if session != cookie:
        response.set_cookie(
            serving.session_cookie, session, max_age=365 * 86400, httponly=True, samesite="lax"
        )
    return session, known


def global_boost(app_state: Any, bundle: LoadedBundle) -> ItemBoost | None:
    """The shared item scores for ``bundle`` in ``update_mode: global``; None otherwise."""
    signals = app_state.signals
    return signals.boost(bundle) if signals is not None else None


def log_impression(
    app_state: Any,
    endpoint: str,
    session: str | None,
    user_id: str | None,
    bundle: LoadedBundle,
    result: CascadeResult,
) -> str:
    """Queue the answer's impression (when ``serving.impressions`` is on); returns its request id.

    Only references are queued (the bundle's id list, the listed indices): the background
    writer formats the line, so this costs a uuid and a tuple on the request's path."""
    request_id = new_request_id()
    impressions = app_state.impressions
    if impressions is not None:
        impressions.log(
            (
                request_id,
                time.time(),
                endpoint,
                session,
                user_id,
                bundle.item_ids,
                result.indices,
                result.stages,
                bundle.model_name,
                bundle.version,
                bundle.delta_seq,
                result.strategy,
            )
        )
    return request_id
