"""Turn a recorded split into index arrays, fit models, evaluate them with full ranking.

Protocol (recorded with every result): the model is fitted on ``train``; validation scores
users from their train history and masks train items; test scores users from train + valid
history and masks those items. Every item of the catalogue is ranked.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb
import numpy as np
import scipy.sparse as sp

from models.base import Recommender, histories_to_csr
from models.features import ItemFeatures
from models.metrics import (
    RANK_METRICS,
    coverage,
    intra_list_diversity,
    mask_seen,
    metrics_at_k,
    novelty,
    target_ranks,
)
from models.ranking import popularity_rank, top_k
from models.registry import build_model
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT

Part = Literal["valid", "test"]


@dataclass
class SplitData:
    """A split as dense indices: per user, time-ordered item indices of each part."""

    split_name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    protocol: dict[str, Any] = field(default_factory=dict)
    item_features: ItemFeatures | None = None
    """Side information for hybrid models (``tasks/features.py::load_item_features``)."""
    impressions: list[Any] | None = None
    """The warehouse's impression log in this split's item indices, oldest first
    (``tasks/features.py::LoggedImpression``): what NRMS and the news ranker train on (None:
    not loaded)."""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def histories(self, parts: tuple[str, ...]) -> list[np.ndarray]:
        """Concatenate the given parts per user, preserving time order (train < valid < test)."""
        chosen = [getattr(self, p) for p in parts]
        return [np.concatenate([c[u] for c in chosen]) for u in range(self.n_users)]

    def matrix(self, parts: tuple[str, ...] = ("train",)) -> sp.csr_matrix:
        return histories_to_csr(self.histories(parts), self.n_items)


def load_split_data(
    con: duckdb.DuckDBPyConnection,
    split_name: str = LEAVE_LAST_OUT,
    table: str = KCORE_TABLE,
    restrict_items_to_table: bool = False,
) -> SplitData:
    """Read ``table`` joined with its recorded split into index arrays.

    The item universe is every item of the ``items`` table (so never-interacted items are
    ranked too), or only those left in ``table`` when k-core filtering removed items.
    """
    item_sql = (
        f"SELECT DISTINCT item_id FROM {table}" if restrict_items_to_table else "SELECT item_id FROM items"
    )
    item_ids = np.array(
        [
            r[0]
            for r in con.execute(
                f"SELECT item_id FROM ({item_sql}) ORDER BY TRY_CAST(item_id AS BIGINT) NULLS LAST, item_id"
            ).fetchall()
        ],
        dtype=object,
    )
    item_index = {item: i for i, item in enumerate(item_ids)}
    rows = con.execute(
        f"""
        SELECT t.user_id, t.item_id, s.part
        FROM {table} t JOIN splits s ON s.event_id = t.event_id AND s.split_name = ?
        ORDER BY TRY_CAST(t.user_id AS BIGINT) NULLS LAST, t.user_id, t.ts, t.seq
        """,
        [split_name],
    ).fetchall()
    user_ids: list[str] = []
    parts: dict[str, list[list[int]]] = {"train": [], "valid": [], "test": []}
    last_user = None
    for user, item, part in rows:
        if user != last_user:
            user_ids.append(user)
            for p in parts.values():
                p.append([])
            last_user = user
        idx = item_index.get(item)
        if idx is not None:
            parts[part][-1].append(idx)

    def arrays(p: str) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.int64) for x in parts[p]]

    return SplitData(
        split_name,
        np.array(user_ids, dtype=object),
        item_ids,
        arrays("train"),
        arrays("valid"),
        arrays("test"),
    )


def list_tiebreak(data: SplitData, part: Part) -> np.ndarray:
    """The tie-break key of evaluated lists: the popularity rank over the history ``part`` is
    scored from (train for valid, train + valid for test), as the service ranks by its bundle's."""
    history_parts: tuple[str, ...] = ("train",) if part == "valid" else ("train", "valid")
    return popularity_rank(np.asarray(data.matrix(history_parts).sum(axis=0)).ravel())


def evaluate(
    model: Recommender, data: SplitData, part: Part, ks: list[int], batch_size: int = 1024
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``part``; keys like ``ndcg@10``.

    HR, NDCG, MRR, recall, precision and MAP rank each target after every item tied with it
    (``models/metrics.py``); coverage, novelty and intra-list diversity read the top-k lists
    cut as the service cuts them (``models/ranking.py``, equal scores by the popularity rank
    of the history part). ``diversity@K`` (by category) is there only when
    ``data.item_features`` has categories for the listed items."""
    history_parts: tuple[str, ...] = ("train",) if part == "valid" else ("train", "valid")
    histories = data.histories(history_parts)
    targets = getattr(data, part)
    users = [u for u in range(data.n_users) if len(targets[u])]
    max_k = max(ks)
    tiebreak = list_tiebreak(data, part)
    recommended = np.zeros((len(users), min(max_k, data.n_items)), dtype=np.int64)
    ranks: list[np.ndarray] = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = model.score([histories[u] for u in batch])
        mask_seen(scores, [histories[u] for u in batch])
        ranks.extend(target_ranks(scores, [targets[u] for u in batch]))
        recommended[start : start + len(batch)] = top_k(scores, max_k, tiebreak=tiebreak)
    ranked = metrics_at_k(ranks, ks)
    popularity = np.asarray(data.matrix(("train",)).sum(axis=0)).ravel()
    categories = data.item_features.categories if data.item_features is not None else None
    out: dict[str, float] = {}
    for k in ks:
        for metric in RANK_METRICS:
            out[f"{metric}@{k}"] = round(ranked[metric][k], 6)
        out[f"coverage@{k}"] = round(coverage(recommended, data.n_items, k), 6)
        out[f"novelty@{k}"] = round(novelty(recommended, popularity, data.n_users, k), 6)
        diversity = None if categories is None else intra_list_diversity(recommended, categories, k)
        if diversity is not None:
            out[f"diversity@{k}"] = round(diversity, 6)
    out["users_evaluated"] = float(len(users))
    return out


def protocol(data: SplitData, ks: list[int], kcore: dict[str, int]) -> dict[str, Any]:
    """The evaluation protocol as data, stored next to every metric."""
    return {
        "split": data.split_name,
        "order": "timestamp, then file order",
        "mode": "full ranking over all catalogue items",
        "fit_on": "train",
        "valid": {"history": "train", "excluded": "train items"},
        "test": {"history": "train+valid", "excluded": "train+valid items"},
        "ks": ks,
        "kcore": kcore,
        "users": data.n_users,
        "items": data.n_items,
    }


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    params: dict[str, Any]
    valid: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    model: Recommender
    cpu_seconds: float = 0.0
    """CPU time of the fit (all of the process's threads): comparable on a shared machine,
    where wall-clock time depends on the neighbours."""


def train_and_evaluate(
    data: SplitData, model_name: str, params: dict[str, Any], ks: list[int], *, validate: bool = True
) -> TrainResult:
    """Fit on train, evaluate on valid and test. Returns the fitted model too.

    ``validate=False`` is for a split without a validation part (the global temporal cut): no
    early stopping on it, ``valid`` left empty, the test part read once; torch models then stop
    on their own hold-out of each user's last train item."""
    model = build_model(model_name, **params)
    prepare_model(model, data)
    if validate and hasattr(model, "set_validation"):  # early stopping on the same validation NDCG@10
        model.set_validation(data.train, data.valid)
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(data.matrix(("train",)), data.train)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return TrainResult(
        run_id=uuid.uuid4().hex,
        model_name=model_name,
        params=model.params(),
        valid=evaluate(model, data, "valid", ks) if validate else {},
        test=evaluate(model, data, "test", ks),
        train_seconds=round(seconds, 3),
        model=model,
        cpu_seconds=round(cpu, 3),
    )


def fit_for_serving(data: SplitData, model_name: str, params: dict[str, Any]) -> Recommender:
    """Refit on every interaction (train + valid + test): what the live bundle serves."""
    model = build_model(model_name, **params)
    prepare_model(model, data, ("train", "valid", "test"))
    everything = data.histories(("train", "valid", "test"))
    model.fit(histories_to_csr(everything, data.n_items), everything)
    return model


def prepare_model(model: Recommender, data: SplitData, parts: tuple[str, ...] = ("train",)) -> None:
    """Hand item side information to the models that use it (text, categories, recency), and
    the impressions a fit on ``parts`` may learn from to those that read them (NRMS)."""
    if hasattr(model, "set_item_features"):
        model.set_item_features(data.item_features or ItemFeatures.empty(data.n_items))
    prepare_impressions(model, data, parts)


def prepare_impressions(model: Recommender, data: SplitData, parts: tuple[str, ...]) -> None:
    """The logged impressions a fit on ``parts`` may learn from, for models that read them."""
    if callable(getattr(model, "set_impressions", None)) and data.impressions is not None:
        from tasks.features import impressions_for_parts

        model.set_impressions(  # type: ignore[attr-defined]
            [logged.impression for logged in impressions_for_parts(data, parts)]
        )


def record_run(
    con: duckdb.DuckDBPyConnection,
    result: TrainResult,
    proto: dict[str, Any],
    fingerprint: str,
    flow_run_id: str | None,
) -> None:
    """One row in ``model_runs`` per training run: parameters, metrics and protocol."""
    con.execute(
        "INSERT INTO model_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
        [
            result.run_id,
            result.model_name,
            json.dumps(result.params),
            json.dumps({"valid": result.valid, "test": result.test}),
            json.dumps(proto),
            fingerprint,
            flow_run_id,
            result.train_seconds,
            datetime.now(UTC).replace(tzinfo=None),
        ],
    )


def data_fingerprint(con: duckdb.DuckDBPyConnection, table: str, extra: dict[str, Any]) -> str:
    """Content hash of the training data and the settings that shape the model.

    Order-independent (XOR of row hashes), so the same rows give the same fingerprint however
    they were loaded: two runs on unchanged data publish nothing new.
    """
    inter = con.execute(f"SELECT count(*), bit_xor(hash(event_id)) FROM {table}").fetchall()[0]
    items = con.execute(
        "SELECT count(*), bit_xor(hash(item_id || coalesce(content_hash, ''))) FROM items"
    ).fetchall()[0]
    payload = json.dumps(
        {"interactions": list(inter or ()), "items": list(items or ()), **extra}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
