"""Exact (IndexFlatIP) vs HNSW item indexes: build time, single-query latency, recall@k.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_index --sizes 100000 1000000 --dim 384 --queries 1000

Why it is built this way:

* Both indexes are made through ``tasks.indexing.build_index`` with settings that force each
  kind, so what is timed is what the pipeline ships (including the chunked HNSW adds).
* The data are random unit vectors, generated in seeded chunks so a 1M × 384 base costs its
  1.5 GB and no float64 temporaries. Random high-dimensional vectors are the hardest case for
  HNSW (no cluster structure for the graph to exploit): the recall here is a floor for real
  sentence embeddings, not a typical figure.
* Queries are fresh random unit vectors, not catalogue rows, and recall@k is measured against
  brute-force exact search for every efSearch in ``--ef-search``, so the recall/latency trade
  is shown rather than tuned away. The build-time recall ``build_index`` records (catalogue
  rows as queries, at the default efSearch) is reported beside it as ``self-recall``.
* Latency is one query per call, the way serving asks, through ``ItemIndex.search``. FAISS
  parallelises over the queries of a batch, so one query runs on one thread whatever the
  OpenMP setting; ``--query-threads 1`` (default) spares OpenMP start-up costs and matches one
  serving worker per core. Builds and the exact ground truth use ``--build-threads``.

Results are printed as a table and written to ``--out`` (default ``var/bench/index.json``)
after every size, so a long run that is stopped still leaves the sizes it finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from tasks.indexing import IndexSettings, ItemIndex, build_index, exact_search, recall_at_k

logger = logging.getLogger("bench_index")

_GEN_CHUNK = 65_536
_WARMUP_QUERIES = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the figures the design card asks for."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_index", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000],
        help="catalogue sizes (1M × 384 HNSW takes many minutes on 2 cores)",
    )
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--queries", type=int, default=1_000, help="queries for latency and recall")
    parser.add_argument("--k", type=int, default=100, help="results per query; recall@k")
    parser.add_argument(
        "--ef-search", type=int, nargs="+", default=[64, 128, 256], help="HNSW efSearch values"
    )
    parser.add_argument("--hnsw-m", type=int, default=IndexSettings().hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexSettings().hnsw_ef_construction)
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--query-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("var/bench/index.json"))
    return parser.parse_args(argv)


def random_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` seeded random unit vectors, float32, generated chunk by chunk to bound memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, _GEN_CHUNK):
        block = rng.standard_normal((min(_GEN_CHUNK, n - lo), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo : lo + len(block)] = block
    return out


def single_query_latency_ms(
    index: ItemIndex, queries: np.ndarray, k: int, threads: int, ef_search: int | None = None
) -> np.ndarray:
    """Milliseconds per call of ``index.search`` with one query at a time, after a short warm-up."""
    faiss.omp_set_num_threads(threads)
    for i in range(min(_WARMUP_QUERIES, len(queries))):
        index.search(queries[i : i + 1], k, ef_search=ef_search)
    times = np.empty(len(queries))
    for i in range(len(queries)):
        started = time.perf_counter()
        index.search(queries[i : i + 1], k, ef_search=ef_search)
        times[i] = time.perf_counter() - started
    return times * 1e3


def bench_size(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every figure for one catalogue size: exact first (cheap), then HNSW at each efSearch."""
    k = args.k
    logger.info("n=%d: generating %d × %d base and %d queries", n, n, args.dim, args.queries)
    base = random_unit_vectors(n, args.dim, args.seed)
    queries = random_unit_vectors(args.queries, args.dim, args.seed + 1_000_003)
    ids = [str(i) for i in range(n)]

    faiss.omp_set_num_threads(args.build_threads)
    started = time.perf_counter()
    exact_scores, _ = exact_search(base, queries, k)
    logger.info(
        "n=%d: exact ground truth for %d queries in %.1f s", n, args.queries, time.perf_counter() - started
    )

    rows: list[dict[str, Any]] = []
    common = {"n": n, "dim": args.dim, "k": k, "queries": args.queries}

    flat = build_index(base, ids, IndexSettings(exact_below=n + 1))
    _, found = flat.search(queries, k)
    lat = single_query_latency_ms(flat, queries, k, args.query_threads)
    rows.append(
        {
            "kind": "flat",
            **common,
            "ef_search": None,
            "build_seconds": flat.build_seconds,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "recall": recall_at_k(found, queries, base, exact_scores),
            "self_recall": flat.recall,
        }
    )
    logger.info("n=%d: flat done (p50 %.2f ms)", n, rows[-1]["p50_ms"])
    del flat
    gc.collect()

    settings = IndexSettings(
        exact_below=1,
        approximate="hnsw",  # this benchmark sweeps efSearch; make bench-serve measures IVF
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.ef_construction,
        recall_floor=0.0,  # report the recall, never refuse: this is a measurement
        recall_k=k,
        seed=args.seed,
    )
    faiss.omp_set_num_threads(args.build_threads)
    started = time.perf_counter()
    hnsw = build_index(base, ids, settings)
    logger.info(
        "n=%d: hnsw built in %.1f s (+ self-recall check, %.1f s in all)",
        n,
        hnsw.build_seconds,
        time.perf_counter() - started,
    )
    for ef in args.ef_search:
        faiss.omp_set_num_threads(args.build_threads)
        _, found = hnsw.search(queries, k, ef_search=ef)
        lat = single_query_latency_ms(hnsw, queries, k, args.query_threads, ef_search=ef)
        rows.append(
            {
                "kind": "hnsw",
                **common,
                "ef_search": ef,
                "ef_effective": max(ef, k),
                "hnsw_m": args.hnsw_m,
                "ef_construction": args.ef_construction,
                "build_seconds": hnsw.build_seconds,
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "recall": recall_at_k(found, queries, base, exact_scores),
                "self_recall": hnsw.recall if ef == settings.hnsw_ef_search else None,
            }
        )
        logger.info("n=%d: hnsw efSearch=%d recall %.4f", n, ef, rows[-1]["recall"])
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    """The results as a rich table, one row per (size, kind, efSearch)."""
    table = Table(
        title=f"Item index, random unit vectors, dim {args.dim}, k={args.k}, {args.queries} queries",
        caption=(
            f"build threads {args.build_threads}, query threads {args.query_threads}; "
            f"HNSW M={args.hnsw_m}, efConstruction={args.ef_construction}; "
            "efSearch below k runs at k; self-recall: catalogue rows as queries, at build time"
        ),
    )
    for name in ("kind", "n", "efSearch", "build s", "p50 ms", "p99 ms", f"recall@{args.k}", "self-recall"):
        table.add_column(name, justify="left" if name == "kind" else "right")
    for row in rows:
        ef = row["ef_search"]
        ef_text = "—" if ef is None else (str(ef) if ef >= row["k"] else f"{ef} (→{row['k']})")
        table.add_row(
            row["kind"],
            f"{row['n']:,}",
            ef_text,
            f"{row['build_seconds']:.2f}",
            f"{row['p50_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['recall']:.4f}",
            "" if row["self_recall"] is None else f"{row['self_recall']:.4f}",
        )
    return table


def write_json(path: Path, rows: list[dict[str, Any]], args: argparse.Namespace, complete: bool) -> None:
    """Write the figures with what is needed to compare them: machine, versions, threads, command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.bench_index", *sys.argv[1:]]),
        "complete": complete,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
        },
        "threads": {"build": args.build_threads, "query": args.query_threads},
        "data": {"kind": "random unit vectors (Gaussian, L2-normalized)", "seed": args.seed},
        "results": rows,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Run every size in turn, printing and saving after each one."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    console = Console(width=None if sys.stdout.isatty() else 140)
    rows: list[dict[str, Any]] = []
    for i, n in enumerate(args.sizes):
        rows.extend(bench_size(n, args))
        write_json(args.out, rows, args, complete=i == len(args.sizes) - 1)
        console.print(render(rows, args))
        gc.collect()
    console.print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
