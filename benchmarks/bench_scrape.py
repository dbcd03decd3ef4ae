"""``make bench-scrape``: scrape throughput on 200 feeds × 50 entries served on 127.0.0.1.

The feeds come from the demo server's benchmark route (distinct stories per feed, RSS 2.0),
run in a separate process so that serving them does not compete with the scraper for the
interpreter. The scrape is the real one (tasks.scrape.scrape) into a fresh warehouse: fetch
(concurrent, bounded), parse (feedparser + normalization), write (dedup, expectations,
insert, feed health). Great Expectations is imported before timing (a one-off cost per
process, reported separately). A second run shows the conditional-GET path (all 304s).
Figures are printed and written to ``var/bench/scrape.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from rich.console import Console
from rich.table import Table


def _serve(port_queue: multiprocessing.Queue[int]) -> None:
    from demo.feeds import DemoFeedServer

    server = DemoFeedServer(port=0).start()
    port_queue.put(server.port)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--connections", type=int, default=32, help="max connections (overall and per host)")
    parser.add_argument("--out", type=Path, default=Path("var/bench/scrape.json"))
    args = parser.parse_args()

    import pandas as pd

    from expectations.feeds import EntryRules, validate_feed_entries
    from storage.settings import FeedsSettings
    from storage.warehouse import connect
    from tasks.scrape import scrape

    started = time.perf_counter()
    validate_feed_entries(
        pd.DataFrame(
            {"title": ["warm"], "url": ["http://x.example/"], "published_ts": [0], "row_number": [0]}
        ),
        EntryRules(max_published_ts=2**40),
    )
    gx_warmup_s = time.perf_counter() - started

    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    port = ports.get(timeout=60)
    try:
        base = f"http://127.0.0.1:{port}"
        feeds = [
            {"url": f"{base}/bench/{i}.xml?entries={args.entries}", "name": f"Bench {i}", "category": None}
            for i in range(args.feeds)
        ]
        settings = FeedsSettings(
            feeds=feeds,
            allow_hosts=["127.0.0.1"],  # the benchmark server is on loopback
            max_connections=args.connections,
            max_per_host=args.connections,
            read_timeout_s=30.0,
        )
        with tempfile.TemporaryDirectory() as tmp:
            con = connect(Path(tmp) / "warehouse.duckdb")
            first = scrape(con, settings)
            second = scrape(con, settings)
            con.close()
    finally:
        server.terminate()
        server.join(10)

    total = sum(first.seconds.values())
    result = {
        "feeds": args.feeds,
        "entries_per_feed": args.entries,
        "connections": args.connections,
        "entries_parsed": first.entries_parsed,
        "items_added": first.items_added,
        "seconds": round(total, 3),
        "entries_per_second": round(first.entries_parsed / total, 1),
        "share": {k: round(v / total, 3) for k, v in first.seconds.items()},
        "phase_seconds": {k: round(v, 3) for k, v in first.seconds.items()},
        "problems": len(first.problems),
        "second_run": {
            "seconds": round(sum(second.seconds.values()), 3),
            "conditional_requests": second.conditional_requests,
            "not_modified": second.not_modified,
            "items_added": second.items_added,
        },
        "gx_import_seconds": round(gx_warmup_s, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    console = Console()
    table = Table(title=f"scrape: {args.feeds} feeds × {args.entries} entries on 127.0.0.1")
    for column in ("entries", "seconds", "entries/s", "fetch", "parse", "write"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{first.entries_parsed:,}",
        f"{total:.2f}",
        f"{result['entries_per_second']:,.0f}",
        *(f"{result['share'][k]:.0%} ({first.seconds[k]:.2f}s)" for k in ("fetch", "parse", "write")),
    )
    console.print(table)
    console.print(
        f"second run: {second.conditional_requests} conditional requests, {second.not_modified} × 304, "
        f"{second.items_added} items added, {result['second_run']['seconds']:.2f}s; "
        f"GX import before timing: {gx_warmup_s:.1f}s; problems: {len(first.problems)}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
