"""CPU per ``GET /recommend/{user}`` in process: the service's own ASGI app, no HTTP server.

``make bench-serve`` measures a server under load, where one request's cost hides behind
scheduling, other processes and the client. This builds the app the server would build
(``serving.app.create_app`` for ``--catalogue`` under ``--home``), runs its start-up (the
bundle load and warm-up), then sends ``--users`` of the bundle's users through the ASGI
app one at a time, ``--rounds`` times, and prints the process CPU time per request
(``time.process_time``: every thread of the process, the thread pool included) and the wall
time. ``--profile N`` adds a cProfile of one more round, its top ``N`` functions by own time:
what to cut next. Only uvicorn's HTTP parsing (the same for every endpoint, measured by the
floor in ``make bench-serve``) is left out.

    PYTHONPATH=$PWD python -m benchmarks.profile_serve --home var/bench --catalogue synthetic-5m
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


async def call(app: Any, path: str) -> tuple[int, bytes]:
    """One GET through the ASGI app, as uvicorn would hand it over: (status, body)."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0
    body = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # a client that never disconnects mid-request
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, bytes(body)


def memory() -> str:
    """This process's resident memory now: its own (anonymous) and mapped files' pages, which
    every worker serving the same bundle shares through the page cache."""
    fields = {}
    with open("/proc/self/status") as status:  # Linux, where the service is measured
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return f"RssAnon {fields.get('RssAnon', '?')}, RssFile {fields.get('RssFile', '?')}"


async def load(app: Any, paths: list[str], concurrency: int) -> tuple[float, float, list[float], float]:
    """Every path once, ``concurrency`` in flight: (process CPU ms per request, requests per
    second of wall clock, each request's wall seconds, minor page faults per request).

    A request's wall time runs from its call into the app; a cascade on the event loop never
    yields, so there the requests queue before that point and each counts only itself, while
    in the thread pool they run interleaved and each counts the others' time too. Compare the
    two paths by CPU and requests per second, not by these latencies."""
    wall: list[float] = []
    queue = iter(paths)

    async def client() -> None:
        for path in queue:
            started = time.perf_counter()
            await call(app, path)
            wall.append(time.perf_counter() - started)

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    cpu, seconds = time.process_time() - cpu, time.perf_counter() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return cpu * 1e3 / len(paths), len(paths) / seconds, wall, faults / len(paths)


async def measure(args: argparse.Namespace) -> None:
    from serving.app import create_app

    os.environ["RECFLOW_HOME"] = str(args.home)
    os.environ["RECFLOW_CATALOGUE"] = args.catalogue
    os.environ.setdefault("RECFLOW_SERVING__RELOAD_CHECK_S", "3600")  # no poll mid-measurement
    app = create_app()
    started = time.perf_counter()
    async with app.router.lifespan_context(app):
        bundle = app.state.holder.get()
        gc.collect()
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            f"{args.catalogue}: bundle {bundle.version}, {bundle.n_items:,} items, loaded and warmed in "
            f"{time.perf_counter() - started:.1f} s; memory {memory()} (peak RSS {peak_gb:.2f} GB); "
            f"warm-up cascade p90 {bundle.cascade_ms:.2f} ms",
            flush=True,
        )
        users = np.random.default_rng(0).permutation(bundle.user_order)[: args.users].tolist()
        paths = [f"/recommend/{u}?k={args.k}{'&' + args.query if args.query else ''}" for u in users]
        # warm: first touches of index pages, lazily built tables (a category's members...)
        for path in paths[: min(20, len(paths) - 1)]:
            status, body = await call(app, path)
            if status != 200:
                raise SystemExit(f"{path}: HTTP {status}: {body[:300]!r}")
        gc.collect()
        settings = app.state.settings
        paths_to_try = ["as-loaded", "loop", "thread-pool"] if args.compare_paths else ["as-loaded"]
        for where in paths_to_try:
            # ``inline_below_ms`` is read per request: 1e9 runs every cascade on the event loop,
            # -1 sends each to the thread pool, the settings' own value lets the bundle's
            # load-time measurement decide (what the server does).
            limit = {"as-loaded": settings.serving.inline_below_ms, "loop": 1e9, "thread-pool": -1.0}[where]
            app.state.settings = settings.model_copy(
                update={"serving": settings.serving.model_copy(update={"inline_below_ms": limit})}
            )
            for round_ in range(1, args.rounds + 1):
                cpu_ms, rps, wall, faults = await load(app, paths, args.concurrency)
                w = np.asarray(wall) * 1e3
                print(
                    f"{where:<11} round {round_}: {len(w)} requests (k={args.k}, {args.concurrency} at a "
                    f"time): CPU {cpu_ms:.3f} ms/req, {rps:.0f} req/s; "
                    f"wall p50 {np.percentile(w, 50):.3f} ms, "
                    f"p99 {np.percentile(w, 99):.3f} ms; {faults:.1f} page faults/req",
                    flush=True,
                )
        app.state.settings = settings
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for path in paths:
                await call(app, path)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile)
            print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=REPO / "var" / "bench")
    parser.add_argument("--catalogue", default="synthetic-5m", help="a catalogue with a bundle under --home")
    parser.add_argument("--users", type=int, default=2000, help="as many as make bench-serve sends")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--query", default="", help="more query parameters, e.g. categories=topic-3")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument(
        "--compare-paths",
        action="store_true",
        help="also measure with every cascade on the event loop, then every one in the thread pool",
    )
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
