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
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb
import numpy as np
import scipy.sparse as sp

from models.base import Recommender, flat_to_csr, histories_to_csr
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
from models.ranking import NO_ITEM, popularity_rank, top_k
from models.registry import build_model
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, TEMPORAL, splits_describe

Part = Literal["valid", "test"]

REPORT_LIST_K = 50
"""Length of the test top-K lists evaluation keeps for the report (its popularity and
coverage plots), so users are scored once per split."""


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
    eval_users: np.ndarray | None = None
    """Sorted user indices evaluation is restricted to (:func:`sample_eval_users`); None:
    every user with a target."""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        """Interactions in all three parts."""
        return int(sum(len(h) for part in (self.train, self.valid, self.test) for h in part))

    def flat(self, parts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Every user's items in ``parts`` as one array, user after user, each user's in time
        order (train < valid < test), and the ``n_users + 1`` offsets of the users' runs.

        Each part is placed with a few whole-array operations: a Python concatenation per
        user took seconds at 25M ratings, and most callers only want the flat form."""
        chosen = [getattr(self, p) for p in parts]
        lengths = [np.fromiter(map(len, c), dtype=np.int64, count=self.n_users) for c in chosen]
        offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        if lengths:
            np.cumsum(np.sum(lengths, axis=0), out=offsets[1:])
        items = np.empty(int(offsets[-1]), dtype=np.int64)
        before = offsets[:-1].copy()  # where each user's run of the next part starts
        for part, n in zip(chosen, lengths, strict=True):
            total = int(n.sum())
            if total:
                # the i-th item of this part lands at its user's start plus its place in the run
                run_start = np.cumsum(n) - n
                place = np.repeat(before - run_start, n) + np.arange(total, dtype=np.int64)
                items[place] = np.concatenate(part)
            before += n
        return offsets, items

    def histories(self, parts: tuple[str, ...]) -> list[np.ndarray]:
        """The given parts per user, preserving time order (train < valid < test): views of
        one :meth:`flat` array."""
        offsets, items = self.flat(parts)
        return np.split(items, offsets[1:-1]) if self.n_users else []

    def histories_of(self, users: Iterable[int], parts: tuple[str, ...]) -> dict[int, np.ndarray]:
        """:meth:`histories` of ``users`` only (an evaluation sample of a large catalogue)."""
        chosen = [getattr(self, p) for p in parts]
        return {u: np.concatenate([c[u] for c in chosen]) for u in users}

    def matrix(self, parts: tuple[str, ...] = ("train",)) -> sp.csr_matrix:
        """Binary users × items matrix of ``parts`` (:func:`models.base.histories_to_csr`)."""
        return flat_to_csr(*self.flat(parts), self.n_items)


def load_split_data(
    con: duckdb.DuckDBPyConnection,
    split_name: str = LEAVE_LAST_OUT,
    table: str = KCORE_TABLE,
    restrict_items_to_table: bool = False,
) -> SplitData:
    """Read ``table`` joined with its recorded split into index arrays.

    The item universe is every item of the ``items`` table (so never-interacted items are
    ranked too), or only those left in ``table`` when k-core filtering removed items.

    DuckDB maps ids to indices and sorts; rows come back as three numpy columns (int32 user,
    int32 item, int8 part: 9 bytes a row, no Python object per row), so 25 million ratings
    load in seconds and a few hundred MB. Users and items are ordered numerically where
    their ids are numbers, then as text; each user's events by time, then file order.
    """
    item_sql = (
        f"SELECT DISTINCT item_id FROM {table}" if restrict_items_to_table else "SELECT item_id FROM items"
    )
    order = "ORDER BY TRY_CAST({0} AS BIGINT) NULLS LAST, {0}"
    item_ids = _ids(con.execute(f"SELECT item_id FROM ({item_sql}) {order.format('item_id')}"))
    # the join on event ids is most of the cost: once, into a temporary table both reads share;
    # when the recorded split describes every row of the table, only its few rows that are not
    # train are joined (a hash table of every event id was 25 s of a 25M night)
    if split_name in (LEAVE_LAST_OUT, TEMPORAL) and splits_describe(con, table):
        rows_sql = f"""
            SELECT t.user_id, t.item_id, t.ts, t.seq,
                   CAST(CASE s.part WHEN 'valid' THEN 1 WHEN 'test' THEN 2 ELSE 0 END AS TINYINT) AS part
            FROM {table} t
            LEFT JOIN (SELECT event_id, part FROM splits WHERE split_name = ? AND part <> 'train') s
                ON s.event_id = t.event_id"""
    else:
        rows_sql = f"""
            SELECT t.user_id, t.item_id, t.ts, t.seq,
                   CAST(CASE s.part WHEN 'train' THEN 0 WHEN 'valid' THEN 1 ELSE 2 END AS TINYINT) AS part
            FROM {table} t JOIN splits s ON s.event_id = t.event_id AND s.split_name = ?"""
    con.execute(f"CREATE OR REPLACE TEMP TABLE split_rows AS {rows_sql}", [split_name])
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE split_users AS
                SELECT user_id, CAST(row_number() OVER ({order.format("user_id")}) - 1 AS INTEGER) AS user_idx
                FROM (SELECT DISTINCT user_id FROM split_rows)"""
        )
        user_ids = _ids(con.execute("SELECT user_id FROM split_users ORDER BY user_idx"))
        columns = con.execute(
            f"""
            WITH split_items AS (
                SELECT item_id, CAST(row_number() OVER ({order.format("item_id")}) - 1 AS INTEGER) AS item_idx
                FROM ({item_sql})
            )
            SELECT u.user_idx, i.item_idx, r.part
            FROM split_rows r
            JOIN split_users u ON u.user_id = r.user_id
            JOIN split_items i ON i.item_id = r.item_id
            ORDER BY u.user_idx, r.ts, r.seq
            """
        ).fetchnumpy()
    finally:
        con.execute("DROP TABLE IF EXISTS split_rows")
        con.execute("DROP TABLE IF EXISTS split_users")
    users = np.asarray(columns["user_idx"], dtype=np.int64)
    items = np.asarray(columns["item_idx"], dtype=np.int64)
    part_codes = np.asarray(columns["part"], dtype=np.int8)
    del columns

    def arrays(code: int) -> list[np.ndarray]:
        chosen = part_codes == code
        counts = np.bincount(users[chosen], minlength=len(user_ids))
        return np.split(items[chosen], np.cumsum(counts)[:-1]) if len(user_ids) else []

    return SplitData(split_name, user_ids, item_ids, arrays(0), arrays(1), arrays(2))


def _ids(result: duckdb.DuckDBPyConnection) -> np.ndarray:
    """The one column of a query as an object array of its values (ids keep their type)."""
    column = next(iter(result.fetchnumpy().values()))
    return np.asarray(column.tolist() if hasattr(column, "tolist") else column, dtype=object)


def sample_eval_users(data: SplitData, max_users: int | None, seed: int) -> None:
    """Restrict evaluation of ``data`` to a fixed sample of at most ``max_users`` users.

    Scoring every user against every item is what evaluation costs: at 25M ratings that is
    162,000 users × 62,000 items per split and per model. A uniform sample (``seed``, so the
    same users every night the data allow) of the users with a validation or test target
    keeps the metrics' error small (about ±0.003 NDCG@10 at 10,000 users, ±0.002 at 20,000)
    for a bounded cost. The sample is the users with the smallest seeded hash of their id,
    so it stays put as users arrive.
    Fewer users than ``max_users`` (None: no cap): everyone is evaluated and nothing is
    recorded, so small data's figures are exactly the full evaluation's. The sample's size is
    recorded in ``data.protocol`` (``user_sample``), which :func:`protocol` reports."""
    if max_users is not None and max_users < 1:
        raise ValueError(f"evaluation max_users must be at least 1 or None, got {max_users}")
    with_target = np.flatnonzero(
        np.fromiter(
            (len(v) > 0 or len(t) > 0 for v, t in zip(data.valid, data.test, strict=True)),
            dtype=bool,
            count=data.n_users,
        )
    )
    data.protocol.pop("user_sample", None)
    data.eval_users = None
    if max_users is None or len(with_target) <= max_users:
        return
    # the users whose seeded hash of their id is smallest: a new user changes the sample by
    # at most one, so an incremental night re-scores only the users whose data changed
    keys = np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(f"{seed}:{data.user_ids[u]}".encode(), digest_size=8).digest(), "little"
            )
            for u in with_target
        ),
        dtype=np.uint64,
        count=len(with_target),
    )
    data.eval_users = np.sort(with_target[np.argsort(keys, kind="stable")[:max_users]])
    data.protocol["user_sample"] = {"users": int(max_users), "of": len(with_target), "seed": seed}


def evaluated_users(data: SplitData, part: Part) -> list[int]:
    """The users ``part`` is evaluated on: those with a target in it, within the sample."""
    targets = getattr(data, part)
    pool = range(data.n_users) if data.eval_users is None else data.eval_users.tolist()
    return [u for u in pool if len(targets[u])]


def list_tiebreak(
    data: SplitData, part: Part, counts: dict[tuple[str, ...], np.ndarray] | None = None
) -> np.ndarray:
    """The tie-break key of evaluated lists: the popularity rank over the history ``part`` is
    scored from (train for valid, train + valid for test), as the service ranks by its bundle's.
    ``counts``: :func:`item_users`'s memo."""
    history_parts: tuple[str, ...] = ("train",) if part == "valid" else ("train", "valid")
    return popularity_rank(item_users(data, history_parts, counts))


def item_users(
    data: SplitData, parts: tuple[str, ...], memo: dict[tuple[str, ...], np.ndarray] | None = None
) -> np.ndarray:
    """Each item's number of users with it in ``parts`` (column sums of ``data.matrix``);
    ``memo`` keeps them per parts for later calls on the same split (a matrix build is half a
    second at 5M ratings)."""
    if memo is not None and parts in memo:
        return memo[parts]
    offsets, items = data.flat(parts)
    # Column-major, each item's users come out ascending with a repeat next to its first
    # (a linear-time transpose): no sort of every row's items, which cost seconds at 25M.
    by_item = sp.csr_matrix(
        (np.ones(len(items), dtype=np.int8), items, offsets), shape=(data.n_users, data.n_items)
    ).tocsc()
    users, starts = by_item.indices, by_item.indptr
    repeat = np.flatnonzero(users[1:] == users[:-1]) + 1
    column = np.searchsorted(starts, repeat, "right") - 1
    repeated = column[starts[column] != repeat]  # a column's first entry repeats nothing
    out = (np.diff(starts) - np.bincount(repeated, minlength=data.n_items)).astype(
        np.float32  # the dtype of the binary matrix's column sums it replaces
    )
    if memo is not None:
        memo[parts] = out
    return out


def evaluate(
    model: Recommender, data: SplitData, part: Part, ks: list[int], batch_size: int = 1024
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``part`` (:func:`evaluate_with_lists`'s metrics)."""
    return evaluate_with_lists(model, data, part, ks, batch_size)[0]


EvalEntry = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One user's evaluation on one part: target ranks, top list, and the scores of the list's
items followed by the best score left out of it (−∞: none)."""


def eval_key(history: np.ndarray, targets: np.ndarray) -> int:
    """A 64-bit BLAKE2b digest of what one user's evaluation reads besides the model and the
    catalogue: the history scored from and the targets, item indices in order (lengths first,
    so the boundary between the two is part of the key). Equal keys under the same fit: the
    same target ranks and the same list scores, whatever the part (a user with one new event
    is validated tonight exactly as they were tested last night)."""
    h = np.asarray(history, dtype=np.int64)
    t = np.asarray(targets, dtype=np.int64)
    payload = np.array([len(h), len(t)], dtype=np.int64).tobytes() + h.tobytes() + t.tobytes()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def relist(items: np.ndarray, scores: np.ndarray, width: int, tiebreak: np.ndarray) -> np.ndarray | None:
    """A cached top list cut to ``width`` and ordered by tonight's tie-break, or None when
    only scoring again can give it: the cached list is shorter, or its last kept place shares
    its score with an item left out (which of them is listed depends on the tie-break).

    ``items``/``scores``: the cached list and its scores, one score more than items (the best
    score left out). Equal scores are ordered by ``tiebreak`` (``models/ranking.py``'s rule),
    which moves as popularity does, so a cached order is never reused as it is."""
    if len(items) < width or len(scores) < width + 1:
        return None
    edge = scores[width]
    if edge > -np.inf and edge == scores[width - 1]:
        return None
    head, head_scores = items[:width], scores[:width]
    listed = head != NO_ITEM
    out = np.full(width, NO_ITEM, dtype=np.int64)
    chosen = head[listed]
    out[: len(chosen)] = chosen[np.lexsort((tiebreak[chosen], -head_scores[listed]))]
    return out


def evaluate_with_lists(
    model: Recommender,
    data: SplitData,
    part: Part,
    ks: list[int],
    batch_size: int = 1024,
    list_k: int = 0,
    known: Mapping[tuple[str, int], EvalEntry] | None = None,
    detail: dict[str, Any] | None = None,
    workers: int = 1,
    counts: dict[tuple[str, ...], np.ndarray] | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Full-ranking metrics of ``model`` on ``part``; keys like ``ndcg@10``.

    HR, NDCG, MRR, recall, precision and MAP rank each target after every item tied with it
    (``models/metrics.py``); coverage, novelty and intra-list diversity read the top-k lists
    cut as the service cuts them (``models/ranking.py``, equal scores by the popularity rank
    of the history part). ``diversity@K`` (by category) is there only when
    ``data.item_features`` has categories for the listed items.

    Also returns the top-``max(ks, list_k)`` lists of the evaluated users (rows in user
    order), what :func:`tasks.eval_report.recommendation_lists` computes, so a report reads
    them instead of scoring every user again.

    ``known`` maps (user id as text, :func:`eval_key`) to an :data:`EvalEntry` from an
    earlier evaluation of the same fit on the same catalogue (an incremental night): a user
    whose history and targets have a cached entry is not scored again, unless the cached
    list cannot be re-cut exactly (:func:`relist`). ``detail``, when given, receives
    ``users`` (the evaluated user indices), ``keys``, ``ranks``, ``list_scores`` and
    ``scored`` (users scored here), what a later night passes back as ``known``.
    ``workers`` > 1 scores batches on that many threads (the model's ``score`` must allow
    it; results do not depend on it). ``counts``: :func:`item_users`'s memo, shared by the
    caller between the parts of one split."""
    history_parts: tuple[str, ...] = ("train",) if part == "valid" else ("train", "valid")
    targets = getattr(data, part)
    users = evaluated_users(data, part)
    histories = data.histories_of(users, history_parts)
    max_k = max(ks)
    counts = {} if counts is None else counts  # train's counts: novelty's and valid's tie-break
    popularity = item_users(data, ("train",), counts)
    tiebreak = list_tiebreak(data, part, counts)
    width = min(max(max_k, list_k), data.n_items)
    recommended = np.zeros((len(users), width), dtype=np.int64)
    ranks: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(users)
    keep = detail is not None or known is not None
    keys = np.zeros(len(users) if keep else 0, dtype=np.uint64)
    list_scores = np.full((len(users) if keep else 0, width + 1), -np.inf, dtype=np.float32)
    todo: list[int] = []  # positions in ``users`` to score
    for pos, u in enumerate(users):
        if not keep:
            todo.append(pos)
            continue
        keys[pos] = key = eval_key(histories[u], targets[u])
        hit = known.get((str(data.user_ids[u]), key)) if known else None
        listed = relist(hit[1], hit[2], width, tiebreak) if hit is not None else None
        if hit is None or listed is None:
            todo.append(pos)
            continue
        ranks[pos], recommended[pos], list_scores[pos] = hit[0], listed, hit[2][: width + 1]

    def score(positions: list[int]) -> None:
        batch = [users[pos] for pos in positions]
        scores = model.score([histories[u] for u in batch])
        mask_seen(scores, [histories[u] for u in batch])
        for pos, r in zip(positions, target_ranks(scores, [targets[u] for u in batch]), strict=True):
            ranks[pos] = r
        # one place more than listed when kept: the best score left out (a top-(k+1) list
        # starts with the top-k list, keys being distinct)
        top = top_k(scores, width + 1 if keep else width, tiebreak=tiebreak)
        recommended[positions] = top[:, :width]
        if keep:
            got = np.take_along_axis(scores, np.maximum(top, 0), axis=1)
            got[top == NO_ITEM] = -np.inf
            list_scores[np.asarray(positions)[:, None], np.arange(top.shape[1])] = got

    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    if workers > 1 and len(batches) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(score, batches))  # list(): raises a batch's error here
    else:
        for positions in batches:
            score(positions)
    if detail is not None:
        detail.update(
            users=np.asarray(users, dtype=np.int64),
            keys=keys,
            ranks=ranks,
            list_scores=list_scores,
            scored=len(todo),
        )
    ranked = metrics_at_k(ranks, ks)
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
    return out, recommended


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
        **({"user_sample": data.protocol["user_sample"]} if "user_sample" in data.protocol else {}),
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
    test_lists: np.ndarray | None = None
    """The evaluated users' top-:data:`REPORT_LIST_K` test lists, for the report (None: not kept)."""
    eval_detail: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per part: ``evaluate_with_lists``'s ``detail`` and the lists (``tasks/incremental.py``
    keeps them in the bundle, so the next night re-scores only changed users)."""


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
    detail: dict[str, dict[str, Any]] = {"valid": {}, "test": {}}
    valid: dict[str, float] = {}
    if validate:
        valid, detail["valid"]["lists"] = evaluate_with_lists(
            model, data, "valid", ks, list_k=REPORT_LIST_K, detail=detail["valid"]
        )
    test, lists = evaluate_with_lists(model, data, "test", ks, list_k=REPORT_LIST_K, detail=detail["test"])
    detail["test"]["lists"] = lists
    return TrainResult(
        run_id=uuid.uuid4().hex,
        model_name=model_name,
        params=model.params(),
        valid=valid,
        test=test,
        train_seconds=round(seconds, 3),
        model=model,
        cpu_seconds=round(cpu, 3),
        test_lists=lists,
        eval_detail={p: d for p, d in detail.items() if d},
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
