"""Item vectors → a FAISS index for candidate retrieval, with its recall measured before it ships.

Why it looks like this:

* **Exact below a size, approximate above it.** An exact inner-product scan (``IndexFlatIP``)
  is cheap to build, needs no tuning and is always right; below ``exact_below`` items a query
  costs a few milliseconds, so approximation buys nothing. Above it, an IVF index (the
  default: k-means cells, a query scans the ``nprobe`` nearest cells' vectors in memory
  order) or an HNSW graph answers in well under a millisecond. IVF builds in seconds where
  HNSW takes minutes, and at 500,000 items it answered 3× faster at higher recall here,
  because its scans stream memory while a graph walk misses the cache at every hop.
* **Recall is measured, not assumed.** Approximate quality depends on the data (random
  high-dim vectors are the hardest case) and on the parameters. Every approximate build is
  checked against exact search on sampled items and sums of item pairs (user vectors lie
  between items); below ``recall_floor`` the build fails with :class:`IndexQualityError`, so
  a bad index never reaches a bundle (a failed run never moves ``CURRENT``). IVF's ``nprobe``
  is tuned at build time to the smallest power of two that reaches the floor, on a different
  sample than the one the reported recall is measured on.
* **Shards by item range.** One index per contiguous range of rows lets a catalogue beyond
  one machine's memory be built (and later served) in pieces; :meth:`ItemIndex.search`
  merges the shards' answers by score, so callers never see the split.
* **Rows, not ids, come back from search.** Row ``i`` of the vectors is ``item_ids[i]``;
  rows index straight into the bundle's other per-item arrays without a dictionary lookup.

Vectors are expected L2-normalized float32, so inner product is cosine similarity. This is
documented rather than enforced: a two-tower model's item vectors are deliberately not unit
length and still want maximum inner product search.

It lives in ``models/`` because serving loads and searches the index and may not import
``tasks/``; the pipeline builds it through ``tasks.indexing``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from storage.settings import IndexSettings

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw"]

FORMAT_VERSION = 1
"""Version of the on-disk layout written by :meth:`ItemIndex.save`; bumped on incompatible change."""

_META_FILE = "index.json"
_IDS_FILE = "item_ids.npy"
_ADD_CHUNK = 100_000
"""Rows added to an HNSW graph per call: big enough to keep all cores busy, small enough to log progress."""
_FINITE_CHUNK = 65_536
"""Rows scanned per step when checking vectors for NaN/inf, bounding the temporary mask's memory."""
_RECALL_QUERY_CHUNK = 256
"""Queries per step when re-scoring returned rows for recall, bounding the gathered block's memory."""
_MISSING_SCORE = np.float32(-np.inf)


class IndexQualityError(RuntimeError):
    """An index measured worse than the configured recall floor; it must not be published."""

    def __init__(self, *, recall: float, floor: float, k: int, sample: int, kind: str, n: int, detail: str):
        self.recall = recall
        self.floor = floor
        self.k = k
        self.kind = kind
        self.n = n
        super().__init__(
            f"{kind} index over {n} items: measured recall@{k} = {recall:.4f} on {sample} sampled "
            f"queries is below the floor {floor:.4f} ({detail}); raise hnsw_ef_search or hnsw_m "
            "(hnsw) or ivf_nprobe (ivf), or lower recall_floor"
        )


@dataclass
class ItemIndex:
    """A built (or loaded) item index: one or more FAISS shards over contiguous row ranges."""

    kind: IndexKind
    """``flat`` (exact inner product), ``ivf`` or ``hnsw`` (approximate)."""
    item_ids: np.ndarray
    """Unicode array; row ``i`` of the indexed vectors is the vector of ``item_ids[i]``."""
    shards: list[faiss.Index]
    """Shard ``j`` holds rows ``[offsets[j], offsets[j + 1])``, numbered from 0 inside the shard."""
    offsets: np.ndarray
    """int64 row boundaries of the shards, ``len(shards) + 1`` entries from 0 to ``n``."""
    dim: int
    """Vector dimension."""
    recall: float | None
    """Measured recall@k against exact search (1.0 for flat by construction; None if not measured)."""
    build_seconds: float
    """Wall time spent adding vectors to the shards (recall measurement not included)."""
    settings: IndexSettings = field(default_factory=IndexSettings)
    """The settings it was built with: recorded in the metadata, and the default efSearch."""
    nprobe: int = 0
    """IVF cells scanned per query (tuned or set at build); 0 for other kinds."""

    def __post_init__(self) -> None:
        """Reject an inconsistent index at construction, so a corrupt bundle fails at load, not per query."""
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.item_ids = np.asarray(self.item_ids)
        if self.kind not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"index kind must be 'flat', 'ivf' or 'hnsw', got {self.kind!r}")
        if self.kind == "ivf" and self.nprobe < 1:
            raise ValueError(f"an ivf index needs nprobe >= 1, got {self.nprobe}")
        if self.item_ids.ndim != 1:
            raise ValueError(f"item_ids must be 1-D, got shape {self.item_ids.shape}")
        if not self.shards:
            raise ValueError("an item index needs at least one shard")
        if self.offsets.shape != (len(self.shards) + 1,):
            raise ValueError(
                f"offsets must have len(shards) + 1 = {len(self.shards) + 1} entries, "
                f"got {self.offsets.shape}"
            )
        if (
            self.offsets[0] != 0
            or self.offsets[-1] != len(self.item_ids)
            or np.any(np.diff(self.offsets) < 0)
        ):
            raise ValueError(
                f"offsets must rise from 0 to the number of items ({len(self.item_ids)}), "
                f"got {self.offsets.tolist()}"
            )
        for j, shard in enumerate(self.shards):
            expected = int(self.offsets[j + 1] - self.offsets[j])
            if shard.ntotal != expected or shard.d != self.dim:
                raise ValueError(
                    f"shard {j} holds {shard.ntotal} vectors of dim {shard.d}; "
                    f"expected {expected} vectors of dim {self.dim}"
                )

    @property
    def n(self) -> int:
        """Number of indexed items."""
        return len(self.item_ids)

    @property
    def nlists(self) -> list[int]:
        """IVF cells per shard (empty for the other kinds)."""
        return [faiss.extract_index_ivf(s).nlist for s in self.shards] if self.kind == "ivf" else []

    def search(
        self, queries: np.ndarray, k: int, *, ef_search: int | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest inner-product rows per query, best first, merged over all shards.

        Returns ``(scores, rows)``, float32 and int64, both ``(n_queries, k)``. Where fewer than
        ``k`` items exist, the tail is padded with row ``-1`` and score ``-inf`` (drop those
        before serialising: JSON has no infinity).

        For HNSW the beam width is ``max(ef_search, k)``: FAISS does not widen it itself, and a
        beam narrower than ``k`` returns fewer than ``k`` results. ``ef_search`` overrides the
        built default for this call only, through per-call search parameters, so concurrent
        requests never race on shared index state. ``nprobe`` does the same for IVF. Both
        are ignored by the other kinds.
        """
        if k < 1:
            raise ValueError(f"k must be a positive number of results, got {k}")
        q = _as_matrix(queries, "queries", expected_dim=self.dim)
        params = None
        if self.kind == "hnsw":
            ef = ef_search if ef_search is not None else self.settings.hnsw_ef_search
            if ef < 1:
                raise ValueError(f"ef_search must be positive, got {ef}")
            params = faiss.SearchParametersHNSW(efSearch=max(ef, k))  # type: ignore[attr-defined]  # not in faiss's .pyi
        elif self.kind == "ivf":
            probe = nprobe if nprobe is not None else self.nprobe
            if probe < 1:
                raise ValueError(f"nprobe must be positive, got {probe}")
            params = _ivf_params(probe)

        all_scores, all_rows = [], []
        for j, (shard, start) in enumerate(zip(self.shards, self.offsets[:-1], strict=True)):
            if shard.ntotal == 0:
                continue
            scores, rows = shard.search(q, k, params=params)
            if self.kind == "ivf" and params is not None:
                scores, rows = self._widen_ivf(j, q, k, params.nprobe, scores, rows)
            missing = rows < 0
            # On the serving path (one shard, every row found) both rewrites are no-ops: skip them.
            if start or missing.any():
                rows = np.where(missing, -1, rows + start)
                scores = np.where(missing, _MISSING_SCORE, scores)
            all_rows.append(rows)
            all_scores.append(scores.astype(np.float32, copy=False))
        if not all_rows:  # an index of zero items only arises from a hand-built ItemIndex
            return (np.full((len(q), k), _MISSING_SCORE, np.float32), np.full((len(q), k), -1, np.int64))
        if len(all_rows) == 1:
            return all_scores[0], all_rows[0].astype(np.int64, copy=False)

        scores = np.concatenate(all_scores, axis=1)
        rows = np.concatenate(all_rows, axis=1)
        # Best score first; equal scores by lower row, so the merge is deterministic. Missing
        # entries carry -inf and sort last. Every shard returned k columns, so >= k remain.
        order = np.lexsort((rows, -scores), axis=-1)[:, :k]
        return (
            np.take_along_axis(scores, order, axis=1),
            np.take_along_axis(rows, order, axis=1).astype(np.int64, copy=False),
        )

    def _widen_ivf(
        self, j: int, q: np.ndarray, k: int, nprobe: int, scores: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the queries of shard ``j`` that came back short again, with twice the cells,
        until each has ``k`` rows (or every cell is scanned).

        IVF returns at most what its ``nprobe`` cells hold; a deep request (large k, a long
        exclusion list) or small cells would silently get fewer candidates. Like HNSW's beam
        widening to ``k``, this keeps "k results when the shard has k items" true. Only the
        short queries are searched again, so a batch (the recall measurement) gets exactly
        what the same queries would get one at a time.
        """
        shard = self.shards[j]
        want = min(k, shard.ntotal)
        short = rows[:, want - 1] < 0  # FAISS fills from the left
        if not short.any():
            return scores, rows
        nlist = faiss.extract_index_ivf(shard).nlist
        while nprobe < nlist and short.any():
            nprobe = min(nlist, nprobe * 2)
            again_scores, again_rows = shard.search(q[short], k, params=_ivf_params(nprobe))
            scores[short], rows[short] = again_scores, again_rows
            short = rows[:, want - 1] < 0
        return scores, rows

    def metadata(self) -> dict[str, Any]:
        """What the bundle manifest records about the index: enough to tell how it was made."""
        return {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "n": self.n,
            "shards": len(self.shards),
            "offsets": self.offsets.tolist(),
            "recall": self.recall,
            "recall_k": self.settings.recall_k if self.kind != "flat" else None,
            "nprobe": self.nprobe if self.kind == "ivf" else None,
            "nlist": self.nlists or None,
            "build_seconds": round(self.build_seconds, 4),
            "params": self.settings.model_dump(),
            "faiss_version": faiss.__version__,
        }

    def save(self, directory: Path) -> None:
        """Write the shards, the item ids and ``index.json`` into ``directory``.

        Item ids are stored as a unicode array with ``allow_pickle=False``: loading a bundle
        must never execute code. ``index.json`` is written last and names every file, so a
        directory without it is incomplete, and stray files from an earlier save are ignored.
        Atomic publication is the bundle writer's job (temporary directory, then rename).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shard_files = [f"shard-{j:04d}.faiss" for j in range(len(self.shards))]
        for shard, name in zip(self.shards, shard_files, strict=True):
            faiss.write_index(shard, str(directory / name))
        np.save(directory / _IDS_FILE, np.asarray(self.item_ids, dtype=str), allow_pickle=False)
        meta = {**self.metadata(), "item_ids_file": _IDS_FILE, "shard_files": shard_files}
        (directory / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, *, mmap: bool = False) -> ItemIndex:
        """Read an index written by :meth:`save`; raises ValueError if its files disagree.

        ``mmap``: map the shards' vectors (IVF lists, flat codes) from their files instead of
        reading them, so processes that load the same index share one copy in the page cache.
        Only for files that are never rewritten in place (a published bundle's)."""
        directory = Path(directory)
        meta_path = directory / _META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{meta_path} is missing: not an item index directory, or an incomplete save"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: index format {meta.get('format')!r}; this code reads format {FORMAT_VERSION}"
            )
        settings = IndexSettings.model_validate(meta["params"])
        item_ids = np.load(directory / meta["item_ids_file"], allow_pickle=False)
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        shards = [faiss.read_index(str(directory / name), flags) for name in meta["shard_files"]]
        if meta["kind"] == "hnsw":
            for shard in shards:
                faiss.downcast_index(shard).hnsw.efSearch = settings.hnsw_ef_search  # type: ignore[attr-defined]
        index = cls(
            kind=meta["kind"],
            item_ids=item_ids,
            shards=shards,
            offsets=np.asarray(meta["offsets"], dtype=np.int64),
            dim=int(meta["dim"]),
            recall=meta["recall"],
            build_seconds=float(meta["build_seconds"]),
            settings=settings,
            nprobe=int(meta.get("nprobe") or 0),
        )
        if index.n != meta["n"]:
            raise ValueError(
                f"{meta_path} records {meta['n']} items but {meta['item_ids_file']} holds {index.n}"
            )
        return index


def build_index(vectors: np.ndarray, item_ids: Sequence[str], settings: IndexSettings) -> ItemIndex:
    """Index ``vectors`` (row ``i`` belongs to ``item_ids[i]``) the way ``settings`` asks.

    Fewer than ``exact_below`` items give an exact flat index (recall 1.0). Otherwise one
    ``settings.approximate`` index (IVF or HNSW) per shard is built, IVF's ``nprobe`` tuned
    unless set, and its recall@k measured against exact search on sampled queries; below
    ``recall_floor`` this raises :class:`IndexQualityError` rather than return an index that
    would silently lose good candidates.

    Raises ValueError for input that cannot be indexed meaningfully: not 2-D, not real numbers,
    empty, NaN/inf anywhere, ids not one per row, or duplicate ids.
    """
    x = _as_matrix(vectors, "vectors", check_finite=True)
    ids = _as_item_ids(item_ids, x.shape[0])
    n, dim = x.shape
    kind: IndexKind = "flat" if n < settings.exact_below else settings.approximate
    offsets = _shard_offsets(n, settings.shard_size)

    started = time.perf_counter()
    shards = [
        _build_shard(x[lo:hi], kind, settings, name=f"shard {j}")
        for j, (lo, hi) in enumerate(pairwise(offsets))
    ]
    build_seconds = time.perf_counter() - started
    index = ItemIndex(
        kind=kind,
        item_ids=ids,
        shards=shards,
        offsets=offsets,
        dim=dim,
        recall=1.0 if kind == "flat" else None,
        build_seconds=build_seconds,
        settings=settings,
        nprobe=(settings.ivf_nprobe or 1) if kind == "ivf" else 0,
    )
    logger.info("built %s index: %d × %d, %d shard(s), %.2f s", kind, n, dim, len(shards), build_seconds)
    if kind == "flat":
        return index

    started = time.perf_counter()
    index.recall = None
    if kind == "ivf" and settings.ivf_nprobe == 0:
        index.nprobe = _tune_nprobe(index, x, settings)
        nlist = max(index.nlists)
        while True:
            index.recall = _measure_recall(index, x, settings.recall_sample, settings.recall_k, settings.seed)
            # Tuned on one sample to just reach the floor, it can fall short on the reported
            # one; a tuned index then scans more cells rather than fail the build (scanning
            # all is exact). The reported recall has then taken part in choosing nprobe: it is
            # the recall at the first nprobe where both samples reach the floor.
            if index.recall >= settings.recall_floor or index.nprobe >= nlist:
                break
            logger.info(
                "ivf nprobe=%d: recall@%d = %.4f on the reported sample, below the floor: doubling",
                index.nprobe, min(settings.recall_k, n), index.recall,
            )  # fmt: skip
            index.nprobe = min(nlist, index.nprobe * 2)
        if index.nprobe >= nlist:
            logger.warning(
                "ivf: the recall floor %.4f needs every one of the %d cells scanned; a flat index "
                "is as exact and faster here (raise exact_below, use hnsw, or lower recall_floor)",
                settings.recall_floor, nlist,
            )  # fmt: skip
    else:
        index.recall = _measure_recall(index, x, settings.recall_sample, settings.recall_k, settings.seed)
    logger.info(
        "%s recall@%d = %.4f on %d sampled queries (floor %.4f), measured in %.2f s",
        kind,
        min(settings.recall_k, n),
        index.recall,
        min(settings.recall_sample, n),
        settings.recall_floor,
        time.perf_counter() - started,
    )
    if index.recall < settings.recall_floor:
        raise IndexQualityError(
            recall=index.recall,
            floor=settings.recall_floor,
            k=min(settings.recall_k, n),
            sample=min(settings.recall_sample, n),
            kind=kind,
            n=n,
            detail=(
                f"dim={dim}, shards={len(shards)}, M={settings.hnsw_m}, "
                f"efConstruction={settings.hnsw_ef_construction}, "
                f"efSearch={settings.hnsw_ef_search} (at least k per query)"
                if kind == "hnsw"
                else f"dim={dim}, shards={len(shards)}, nlist={index.metadata()['nlist']}, "
                f"nprobe={index.nprobe}"
            ),
        )
    return index


@functools.lru_cache(maxsize=64)
def _ivf_params(nprobe: int) -> faiss.SearchParametersIVF:
    """Search parameters per ``nprobe``, made once: FAISS only reads them, so concurrent
    searches share one (building one per query cost ~10 µs of a ~0.2 ms search)."""
    return faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]  # the .pyi lacks SWIG kwargs


def _tune_nprobe(index: ItemIndex, x: np.ndarray, settings: IndexSettings) -> int:
    """The smallest power-of-two ``nprobe`` whose recall@k reaches the floor on a sample drawn
    with ``seed + 1``; the recall reported afterwards is measured on the ``seed`` sample, and
    :func:`build_index` doubles ``nprobe`` further if that one falls short.

    Scanning every cell is exact, so the search always ends with an answer.
    """
    nlist = max(index.nlists)
    k = min(settings.recall_k, x.shape[0])
    queries = recall_queries(x, settings.recall_sample, settings.seed + 1)
    exact_scores, _ = exact_search(x, queries, k)
    target = settings.recall_floor
    nprobe = 1
    while nprobe < nlist:
        _, found = index.search(queries, k, nprobe=nprobe)
        recall = recall_at_k(found, queries, x, exact_scores)
        logger.info("ivf nprobe=%d: recall@%d = %.4f (aiming at %.4f)", nprobe, k, recall, target)
        if recall >= target:
            return nprobe
        nprobe *= 2
    return nlist


def measure_recall(index: ItemIndex, vectors: np.ndarray, sample: int, k: int, seed: int) -> float:
    """Recall@k of ``index`` against exact search on ``sample`` queries made from its own rows.

    ``vectors`` must be the vectors the index was built from (same rows). Half the queries are
    rows, half the sum of two rows (see :func:`recall_queries`), all drawn with ``seed``, so a
    rebuild over the same data is measured on the same queries. See :func:`recall_at_k` for
    how near-ties are counted.
    """
    x = _as_matrix(vectors, "vectors", expected_dim=index.dim)
    if x.shape[0] != index.n:
        raise ValueError(f"vectors has {x.shape[0]} rows but the index holds {index.n} items")
    return _measure_recall(index, x, sample, k, seed)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search by brute force: the ground truth recall is measured against.

    Uses ``faiss.knn``, which works through the base in blocks (BLAS for batches), so no copy
    of ``vectors`` and no ``n_queries × n`` score matrix is ever held in memory. ``k`` is capped
    at the number of rows.
    """
    x = _as_matrix(vectors, "vectors")
    q = _as_matrix(queries, "queries", expected_dim=x.shape[1])
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    scores, rows = faiss.knn(q, x, min(k, x.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
    return scores, rows.astype(np.int64, copy=False)


def recall_at_k(
    found_rows: np.ndarray, queries: np.ndarray, vectors: np.ndarray, exact_scores: np.ndarray
) -> float:
    """Share of the exact top-k that ``found_rows`` recovered, with ties counted as hits.

    ``k`` is ``exact_scores.shape[1]``. A returned row is a hit when its true score (re-computed
    from ``vectors``, not taken from the index) reaches the exact k-th best score, within a
    float32 tolerance. This equals the usual set-overlap recall when scores are distinct, but
    does not punish the index for picking a different one of several equally good items:
    catalogues do hold duplicate texts, hence identical vectors.
    """
    k = exact_scores.shape[1]
    nq = found_rows.shape[0]
    if nq == 0 or k == 0:
        raise ValueError("recall needs at least one query and k >= 1")
    kth = exact_scores[:, -1].astype(np.float64)
    tolerance = 1e-5 * np.maximum(1.0, np.abs(kth))
    hits = 0
    for lo in range(0, nq, _RECALL_QUERY_CHUNK):
        hi = min(lo + _RECALL_QUERY_CHUNK, nq)
        rows = found_rows[lo:hi, :k]
        valid = rows >= 0
        gathered = vectors[np.where(valid, rows, 0)]  # (chunk, k, dim)
        true = np.einsum("qkd,qd->qk", gathered, queries[lo:hi], dtype=np.float64)
        hits += int(np.count_nonzero(valid & (true >= (kth[lo:hi] - tolerance[lo:hi])[:, None])))
    return hits / (nq * k)


def _measure_recall(index: ItemIndex, x: np.ndarray, sample: int, k: int, seed: int) -> float:
    """:func:`measure_recall` on already validated float32 vectors."""
    if sample < 1 or k < 1:
        raise ValueError(f"sample and k must be positive, got sample={sample}, k={k}")
    queries = recall_queries(x, sample, seed)
    k_eff = min(k, x.shape[0])
    exact_scores, _ = exact_search(x, queries, k_eff)
    _, found = index.search(queries, k_eff)
    return recall_at_k(found, queries, x, exact_scores)


def recall_queries(x: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """``sample`` queries drawn with ``seed``: half are item rows, half the sum of two random rows.

    An item's own vector is the easiest query an index can get: it sits in its own cell or
    graph neighbourhood. The service queries with user vectors, means of several items that
    often lie between two tastes, which is where IVF's cell boundaries and a graph's local
    links lose most. Pairs bring the measured recall closer to what is served, not all the way:
    real users' vectors average more items (``make bench-serve`` measures them separately:
    0.905 of the exact top 200 on its bundle, where the build measured 0.957).
    """
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    size = min(sample, n)
    rows = np.sort(rng.choice(n, size=size, replace=False))
    pairs = size // 2
    mixed = x[rows[:pairs]] + x[rng.integers(0, n, pairs)]
    return np.ascontiguousarray(np.concatenate([mixed, x[rows[pairs:]]]), dtype=np.float32)


def _build_shard(x: np.ndarray, kind: IndexKind, settings: IndexSettings, *, name: str) -> faiss.Index:
    """One FAISS index over ``x``; HNSW graphs are filled in chunks so long builds log progress."""
    dim = x.shape[1]
    if kind == "flat":
        flat = faiss.IndexFlatIP(dim)
        flat.add(x)
        return flat
    if kind == "ivf":
        return _build_ivf(x, settings, name=name)
    hnsw = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = settings.hnsw_ef_construction
    hnsw.hnsw.efSearch = settings.hnsw_ef_search
    started = time.perf_counter()
    for lo in range(0, len(x), _ADD_CHUNK):
        hnsw.add(x[lo : lo + _ADD_CHUNK])
        if len(x) > _ADD_CHUNK:
            elapsed = time.perf_counter() - started
            logger.info("hnsw %s: %d/%d rows added, %.1f s", name, hnsw.ntotal, len(x), elapsed)
    return hnsw


IVF_MIN_PER_CELL = 39
"""FAISS's k-means wants at least 39 training points per centroid; fewer cells below that."""
IVF_TRAIN_PER_CELL = 64
"""Training sample per cell: k-means on more rows costs time and moves the centroids little."""
IVF_AUTO_NLIST_MAX = 4096
"""Most cells the automatic rule picks. Training k-means costs (sample × cells), and the
sample grows with the cells, so it grows with their square: 16,384 cells for 5,000,000 items
(the ``8·√n`` rule) would train 16× longer than 4,096, minutes of both cores, while a query's
cost (the cells it ranks plus the rows it scans) stays about the same either way."""


def ivf_nlist(n: int, settings: IndexSettings) -> int:
    """Cells for ``n`` rows: ``settings.ivf_nlist``, else the power of two nearest ``8·√n``
    up to ``IVF_AUTO_NLIST_MAX``, capped so each cell has ``IVF_MIN_PER_CELL`` training rows."""
    if settings.ivf_nlist:
        return max(1, min(settings.ivf_nlist, n))
    auto = min(2 ** round(float(np.log2(max(1.0, 8.0 * np.sqrt(n))))), IVF_AUTO_NLIST_MAX)
    return int(max(1, min(auto, n // IVF_MIN_PER_CELL)))


def _build_ivf(x: np.ndarray, settings: IndexSettings, *, name: str) -> faiss.Index:
    """IVF-Flat over ``x``: k-means cells trained on a seeded sample, then every row added."""
    n, dim = x.shape
    nlist = ivf_nlist(n, settings)
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = settings.seed
    if n > IVF_TRAIN_PER_CELL * nlist:
        rng = np.random.default_rng(settings.seed)
        sample = np.ascontiguousarray(x[np.sort(rng.choice(n, IVF_TRAIN_PER_CELL * nlist, replace=False))])
    else:
        sample = x
    started = time.perf_counter()
    ivf.train(sample)
    elapsed = time.perf_counter() - started
    logger.info("ivf %s: %d cells trained on %d rows, %.1f s", name, nlist, len(sample), elapsed)
    ivf.add(x)
    return ivf


def _shard_offsets(n: int, shard_size: int) -> np.ndarray:
    """Row boundaries ``[0, s, 2s, ..., n]``; a single shard when ``shard_size`` is 0 or >= n."""
    if shard_size <= 0 or shard_size >= n:
        return np.array([0, n], dtype=np.int64)
    return np.append(np.arange(0, n, shard_size, dtype=np.int64), np.int64(n))


def _as_matrix(
    array: np.ndarray, name: str, *, expected_dim: int | None = None, check_finite: bool = False
) -> np.ndarray:
    """``array`` as a C-contiguous float32 matrix (all FAISS accepts), or a ValueError saying why not."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (rows, dim); got a {arr.ndim}-D array of shape {arr.shape}"
        )
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers (float32 expected); got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column; got shape {arr.shape}")
    if expected_dim is not None and arr.shape[1] != expected_dim:
        raise ValueError(f"{name} must have {expected_dim} columns (the index dimension); got {arr.shape[1]}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if check_finite:
        for lo in range(0, out.shape[0], _FINITE_CHUNK):
            bad = ~np.isfinite(out[lo : lo + _FINITE_CHUNK]).all(axis=1)
            if bad.any():
                row = lo + int(np.argmax(bad))
                raise ValueError(
                    f"{name} must be finite; row {row} holds NaN or inf"
                    + (" (after conversion to float32)" if arr.dtype != np.float32 else "")
                )
    return out


def _as_item_ids(item_ids: Sequence[str], n_rows: int) -> np.ndarray:
    """The ids as a unicode array, one distinct string per vector row, or a ValueError."""
    if isinstance(item_ids, np.ndarray):
        if item_ids.ndim != 1:
            raise ValueError(f"item_ids must be 1-D, one id per vector row; got shape {item_ids.shape}")
        values = item_ids.tolist()
    elif isinstance(item_ids, str):
        raise ValueError("item_ids must be a sequence of strings, one per vector row, not a single string")
    else:
        values = list(item_ids)
    if len(values) != n_rows:
        raise ValueError(
            f"item_ids has {len(values)} entries but vectors has {n_rows} rows; "
            "expected exactly one id per row (row i is the vector of item_ids[i])"
        )
    not_str = next((v for v in values if not isinstance(v, str)), None)
    if not_str is not None:
        raise ValueError(f"item_ids must all be strings; found {not_str!r} of type {type(not_str).__name__}")
    if len(set(values)) != len(values):
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise ValueError(f"item_ids must be distinct; {value!r} appears more than once")
            seen.add(value)
    return np.array(values, dtype=str)
