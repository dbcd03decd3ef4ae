"""The nightly at MovieLens-25M sizes: seconds and peak memory per stage, full and incremental.

Run from the repository root (``make bench-scale``)::

    .venv/bin/python -m benchmarks.bench_scale --sizes 1000000 5000000 25000000

Per size:

1. ML-25M-shaped data (:mod:`tasks.synthetic_movielens`), generated once and cached under
   ``var/bench/scale/<size>/``, copied into a fresh home (its own warehouse and bundles);
2. the real ``nightly-refresh`` flow on it, default settings (the default candidates, item
   embeddings on), through Prefect's temporary local API. Each stage's seconds are its task
   run's start and end as Prefect recorded them (stages that run side by side overlap: the
   total is the flow's wall time, not their sum); its peak resident memory is the highest RSS
   of this process and its children (Prefect's server included) sampled every 0.1 s in
   between. The API is started before the total's clock (``api_start_s``, see :func:`start_api`);
3. then 1 % new ratings are appended to ``ratings.csv`` (the next day: known and new users,
   later timestamps) and the nightly runs again on the same warehouse: the incremental night.

``--data-only`` times only the data stages (load and validate, k-core, split) by calling the
functions the nightly's tasks call, without Prefect or training: the part of the nightly this
benchmark's loader owns, measurable at 25M when the model stages are too slow to wait for.

Results go to ``--out`` (default ``var/bench/scale.json``; ``scale-data.json`` with
``--data-only``) after every size, the table is printed, and ``--plot`` (default
``docs/scale.png``, ``scale-data.png``) draws seconds against ratings, log-log.

``--embedding-precision`` and ``--embedding-threads`` set ``embedding.precision`` and
``embedding.threads`` for the nightly (e.g. ``make bench-scale SCALE_ARGS="--embedding-precision
bfloat16"``); a result records them under ``embedding`` (empty: the defaults).

``--resume`` keeps the sizes ``--out`` already holds (same seed, mode and embedding settings)
and runs only the others: a 25M run that takes most of an hour need not repeat 1M and 5M, and one that failed
can be run again alone. ``--resume-from A.json B.json`` also keeps the sizes of earlier result
files (sizes measured by separate commands) and writes them together to ``--out``. Each size
measured records when, and the load average then, under ``measured``. The table and plot
cover every size asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

# a loaded machine can take longer than Prefect's default 20 s to start its temporary server
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from tasks.synthetic_movielens import append_ratings, generate, shape_for

CATALOGUE = "ml-scale"
DATA_STAGES = ["load-and-validate", "k-core", "split"]
TARGETS = {
    "25M total": "≤ 15 min",
    "25M peak RSS": "≤ 8 GB",
    "5M total": "≤ 3 min",
    "incremental": "≤ 10 % of the full night",
}


class RssSampler(threading.Thread):
    """Samples the resident memory of this process and all its descendants every ``every`` s."""

    def __init__(self, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self._me = psutil.Process()

    def rss(self) -> int:
        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.time(), self.rss()))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak(self, start: float, end: float) -> int:
        """The highest sample between ``start`` and ``end``; for a stage shorter than the
        sampling period, the last sample before its end (what it held), never 0."""
        samples = list(self.samples)
        inside = [r for t, r in samples if start <= t <= end]
        if inside:
            return max(inside)
        before = [r for t, r in samples if t <= end]
        return before[-1] if before else self.rss()


def dataset(size: int, root: Path, seed: int) -> tuple[Path, dict[str, Any]]:
    """The cached generated directory for ``size`` ratings (generated when missing)."""
    directory = root / str(size)
    marker = directory / "shape.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("requested") == size and meta.get("seed") == seed:
            return directory, meta
    shutil.rmtree(directory, ignore_errors=True)
    t0 = time.perf_counter()
    shape = generate(size, directory, seed=seed)
    meta = {
        "requested": size,
        "seed": seed,
        "ratings": shape.ratings,
        "users": shape.users,
        "items": shape.items,
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    marker.write_text(json.dumps(meta))
    return directory, meta


def _prefect_stages(flow_run_id: Any, sampler: RssSampler) -> dict[str, dict[str, float]]:
    """Each task run of the flow run: seconds (Prefect's start → end) and peak RSS inside."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    stages: dict[str, dict[str, float]] = {}
    for run in sorted(runs, key=lambda r: r.start_time or datetime.max.replace(tzinfo=UTC)):
        if run.start_time is None or run.end_time is None:
            continue
        name = run.name.rsplit("-", 1)[0]  # "k-core-0a1b" → "k-core"
        start, end = run.start_time.timestamp(), run.end_time.timestamp()
        stages[name] = {
            "seconds": round(end - start, 3),
            "peak_rss_mb": round(sampler.peak(start, end) / 2**20),
        }
    return stages


def start_api() -> float:
    """Seconds to bring up the Prefect API the flow reports to (Prefect's temporary local
    server, started once per process, 14-20 s on this machine), before the night is timed:
    a deployed nightly reports to a server that is already running, and the incremental
    night never paid it. Recorded beside the total as ``api_start_s``."""
    from prefect.client.orchestration import get_client

    started = time.time()
    with get_client(sync_client=True) as client:
        client.api_healthcheck()
    return round(time.time() - started, 1)


def run_nightly(home: Path, data: Path, embedding: dict[str, Any] | None = None) -> dict[str, Any]:
    """One nightly on ``home``'s warehouse; per-stage seconds and peak RSS, total, result.
    ``embedding``: overrides of the embedding settings (precision, threads)."""
    from flows.nightly import nightly_refresh

    api_start_s = start_api()

    overrides: dict[str, Any] = {"home": str(home), "source": {"kind": "movielens", "path": str(data)}}
    if embedding:
        overrides["embedding"] = embedding
    sampler = RssSampler()
    sampler.start()
    t0 = time.time()
    state = nightly_refresh(catalogue=CATALOGUE, overrides=overrides, return_state=True)
    t1 = time.time()
    sampler.stop()
    result = state.result(raise_on_failure=True)
    stages = _prefect_stages(state.state_details.flow_run_id, sampler)
    version = getattr(result, "version", None)
    return {
        "stages": stages,
        "total_s": round(t1 - t0, 1),
        "api_start_s": api_start_s,
        "peak_rss_mb": round(sampler.peak(t0, t1) / 2**20),
        "published": version,
        "reason": getattr(result, "reason", None),
        # a reused fit: the bundle it came from and the users scored again per part
        "reused": _manifest(home, overrides, version).get("reused"),
    }


def _manifest(home: Path, overrides: dict[str, Any], version: str | None) -> dict[str, Any]:
    """The manifest of bundle ``version`` of the benchmark's catalogue (empty: none published)."""
    from storage.artifacts import ArtifactStore
    from storage.settings import catalogue_settings

    if version is None:
        return {}
    return ArtifactStore(catalogue_settings(CATALOGUE, overrides).bundles_dir).manifest(version)


def run_data_stages(home: Path, data: Path) -> dict[str, Any]:
    """Load and validate, k-core and split, as the nightly's tasks call them, timed here."""
    from storage.settings import catalogue_settings
    from storage.warehouse import open_warehouse
    from tasks.load import load_source
    from tasks.prepare import KCORE_TABLE, kcore_filter, make_splits

    settings = catalogue_settings(
        CATALOGUE, {"home": str(home), "source": {"kind": "movielens", "path": str(data)}}
    )
    steps: list[tuple[str, Callable[[Any], Any]]] = [
        ("load-and-validate", lambda con: load_source(con, settings)),
        (
            "k-core",
            lambda con: kcore_filter(
                con, settings.kcore.user_k, settings.kcore.item_k, events=settings.events
            ),
        ),
        ("split", lambda con: make_splits(con, KCORE_TABLE, settings.eval.temporal_cut_quantile)),
    ]
    sampler = RssSampler()
    sampler.start()
    t0 = time.time()
    stages: dict[str, dict[str, float]] = {}
    for name, step in steps:
        start = time.time()
        with open_warehouse(settings.warehouse_path) as con:  # each task opens its own, too
            step(con)
        end = time.time()
        stages[name] = {
            "seconds": round(end - start, 3),
            "peak_rss_mb": round(sampler.peak(start, end) / 2**20),
        }
    t1 = time.time()
    sampler.stop()
    return {
        "stages": stages,
        "total_s": round(t1 - t0, 1),
        "peak_rss_mb": round(sampler.peak(t0, t1) / 2**20),
    }


def bench_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    source, meta = dataset(size, args.cache, args.seed)
    home = args.work / str(size)
    shutil.rmtree(home, ignore_errors=True)
    data = home / "data"
    data.mkdir(parents=True)
    for name in ("ratings.csv", "movies.csv"):
        shutil.copyfile(source / name, data / name)
    embedding = embedding_overrides(args)

    def night(home: Path, data: Path) -> dict[str, Any]:
        return run_data_stages(home, data) if args.data_only else run_nightly(home, data, embedding)

    print(f"[{size:,}] full night …", flush=True)
    full = night(home, data)
    print(f"[{size:,}] full night: {full['total_s']} s, peak {full['peak_rss_mb']:,} MB", flush=True)
    new_rows = append_ratings(data, max(1, meta["ratings"] // 100), seed=args.seed + 1)
    print(f"[{size:,}] incremental night (+{new_rows:,} ratings) …", flush=True)
    incremental = night(home, data)
    incremental["new_rows"] = new_rows
    print(f"[{size:,}] incremental: {incremental['total_s']} s", flush=True)
    if incremental.get("reused"):
        print(f"[{size:,}] reused fit: {incremental['reused']}", flush=True)
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return {
        **meta,
        "mode": "data stages" if args.data_only else "nightly",
        "embedding": embedding,
        "full": full,
        "incremental": incremental,
        "incremental_share": round(incremental["total_s"] / full["total_s"], 3) if full["total_s"] else None,
    }


def embedding_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The embedding settings asked for on the command line (empty: the defaults)."""
    chosen = {"precision": args.embedding_precision, "threads": args.embedding_threads}
    return {k: v for k, v in chosen.items() if v is not None and not args.data_only}


def previous_results(
    path: Path, seed: int, data_only: bool, required: bool = False, embedding: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The sizes an earlier run wrote to ``path`` with the same seed, mode and embedding
    settings (none if absent, unless ``required``)."""
    if not path.exists():
        if required:
            raise SystemExit(f"--resume-from: {path} does not exist")
        return []
    try:
        sizes = json.loads(path.read_text())["sizes"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"--resume: {path} is not a bench_scale result file ({exc})") from exc
    mode = "data stages" if data_only else "nightly"
    return [
        r
        for r in sizes
        if r.get("seed") == seed and r.get("mode") == mode and r.get("embedding", {}) == (embedding or {})
    ]


def write_results(path: Path, results: list[dict[str, Any]]) -> None:
    """The result file: the machine, the targets and every size so far, smallest first."""
    results.sort(key=lambda r: r["ratings"])
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }
    when = datetime.now(UTC).isoformat(timespec="seconds")
    body = {"when": when, "machine": machine, "targets": TARGETS, "sizes": results}
    path.write_text(json.dumps(body, indent=2))


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    stages: list[str] = []
    for r in results:
        for night in ("full", "incremental"):
            stages += [s for s in r[night]["stages"] if s not in stages]
    table = Table(title="nightly at scale: seconds (peak RSS MB) per stage")
    table.add_column("ratings", justify="right")
    table.add_column("night")
    for s in stages:
        table.add_column(s, justify="right")
    table.add_column("total s", justify="right")
    table.add_column("peak RSS MB", justify="right")
    for r in results:
        for night in ("full", "incremental"):
            run = r[night]
            cells = [
                f"{run['stages'][s]['seconds']:.1f} ({run['stages'][s]['peak_rss_mb']:,})"
                if s in run["stages"]
                else "—"
                for s in stages
            ]
            label = night if night == "full" else f"+1 % ({r['incremental_share']:.0%} of full)"
            table.add_row(
                f"{r['ratings']:,}", label, *cells, f"{run['total_s']:.1f}", f"{run['peak_rss_mb']:,}"
            )
    Console(width=200).print(table)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["ratings"] for r in results]
    what = "data stages" if results[0]["mode"] == "data stages" else "nightly"
    ax.plot(xs, [r["full"]["total_s"] for r in results], "o-", lw=2, label=f"{what}, total")
    ax.plot(xs, [r["incremental"]["total_s"] for r in results], "s--", lw=2, label="+1 % night, total")
    stages = {s for r in results for s in r["full"]["stages"]}
    for s in sorted(stages):
        ys = [r["full"]["stages"].get(s, {}).get("seconds") for r in results]
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
        if pts:
            ax.plot(*zip(*pts, strict=True), ".:", alpha=0.7, label=s)
    ax.axhline(900, color="grey", lw=0.8)
    ax.annotate("15 min", (xs[-1], 900), textcoords="offset points", xytext=(-30, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ratings")
    ax.set_ylabel("seconds")
    mode = results[0]["mode"]
    ax.set_title(f"recflow {mode} on ML-25M-shaped data ({os.cpu_count()} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 25_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("var/bench/scale"), help="generated data")
    parser.add_argument("--work", type=Path, default=Path("var/bench/scale/homes"), help="warehouses")
    parser.add_argument("--out", type=Path, help="default var/bench/scale.json (scale-data.json)")
    parser.add_argument("--plot", type=Path, help="default docs/scale.png (scale-data.png)")
    parser.add_argument("--data-only", action="store_true", help="time load, k-core and split only")
    parser.add_argument("--keep", action="store_true", help="keep each size's warehouse and bundles")
    parser.add_argument(
        "--embedding-precision",
        choices=["float32", "bfloat16", "int8"],
        help="embedding.precision for the nightly (default: the settings')",
    )
    parser.add_argument(
        "--embedding-threads", type=int, help="embedding.threads for the nightly (0: torch's default)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the sizes --out already holds; run the others"
    )
    parser.add_argument(
        "--resume-from",
        type=Path,
        nargs="+",
        default=[],
        metavar="JSON",
        help="also keep the sizes these earlier result files hold (sizes run as separate commands)",
    )
    args = parser.parse_args(argv)
    if args.embedding_threads is not None and args.embedding_threads < 0:
        parser.error(f"--embedding-threads must be >= 0 (0: torch's default), got {args.embedding_threads}")
    suffix = "-data" if args.data_only else ""  # the two modes never overwrite each other
    args.out = args.out or Path(f"var/bench/scale{suffix}.json")
    args.plot = args.plot or Path(f"docs/scale{suffix}.png")
    for size in args.sizes:
        shape_for(size)  # a bad size fails before anything runs
    args.cache, args.work = args.cache.resolve(), args.work.resolve()
    os.environ.setdefault("PREFECT_HOME", str(args.work / "prefect"))
    results: list[dict[str, Any]] = []
    sources = ([(args.out, False)] if args.resume else []) + [(p, True) for p in args.resume_from]
    for source, required in sources:
        for kept in previous_results(source, args.seed, args.data_only, required, embedding_overrides(args)):
            if kept["requested"] in args.sizes and kept["requested"] not in {r["requested"] for r in results}:
                print(f"[{kept['requested']:,}] kept from {source}", flush=True)
                results.append(kept)
    done = {r["requested"] for r in results}
    for size in args.sizes:
        if size in done:
            continue
        measured = bench_size(size, args)
        measured["measured"] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        results.append(measured)
        write_results(args.out, results)
    write_results(args.out, results)
    print_table(results)
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return results


if __name__ == "__main__":
    main()
