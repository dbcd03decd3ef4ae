"""``make bench-amazon``: load millions of Amazon Reviews 2023 lines with flat memory.

Writes ``--lines`` (default 5,000,000) review lines in the published JSONL layout (``rating,
title, text, images, asin, parent_asin, user_id, timestamp`` in milliseconds,
``helpful_vote, verified_purchase``) to a temporary ``.jsonl.gz``, plus a meta file with one
line per parent ASIN, then reads them through the ``amazon`` source (``read_amazon``: streamed
in ``chunk_lines`` chunks into DuckDB on disk, filtered and 5-cored in SQL) while a thread
samples this process's resident memory every 0.1 s.

Users and products are drawn from Zipf-like distributions (a few very active users and
best-sellers, a long tail), ratings lean to 5 stars, 90 % are verified purchases and dates
run from 2010 to 2023, so the seed rules and the k-core have real work to do.

Prints lines/s through the source, the peak RSS, and the RSS at each tenth of the run, which
stays flat while the file streams (memory is bounded by one chunk, not by the file); writes
``var/bench/amazon.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import platform
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from storage.settings import AmazonRules
from tasks.sources.amazon import read_amazon

WORDS = [
    "great",
    "movie",
    "acting",
    "plot",
    "story",
    "classic",
    "funny",
    "scary",
    "bluray",
    "dvd",
    "picture",
    "sound",
    "quality",
    "family",
    "watch",
    "again",
    "recommend",
    "season",
    "series",
    "episode",
    "director",
    "favorite",
    "ending",
    "characters",
]


def zipf_ids(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """``size`` ids in ``[0, n)``, id ``i`` drawn with weight ``1 / (i + 1) ** a``."""
    weights = 1.0 / np.arange(1, n + 1) ** a
    return rng.choice(n, size=size, p=weights / weights.sum())


def write_reviews(path: Path, lines: int, users: int, products: int, seed: int = 0) -> int:
    """The reviews file, written in blocks of 100,000 lines; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    start_ms, end_ms = 1_262_304_000_000, 1_693_526_400_000  # 2010-01-01 .. 2023-09-01
    with gzip.open(path, "wb", compresslevel=1) as out:
        for block in range(0, lines, 100_000):
            size = min(100_000, lines - block)
            user = zipf_ids(rng, users, size, 0.8)
            product = zipf_ids(rng, products, size, 0.9)
            rating = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], size=size, p=[0.07, 0.05, 0.09, 0.17, 0.62])
            ts = rng.integers(start_ms, end_ms, size=size)
            verified = rng.random(size) < 0.9
            helpful = rng.poisson(0.8, size=size)
            words = rng.integers(0, len(WORDS), size=(size, 12))
            rows = []
            for i in range(size):
                text = " ".join(WORDS[w] for w in words[i])
                rows.append(
                    orjson.dumps(
                        {
                            "rating": float(rating[i]),
                            "title": text[:24],
                            "text": text,
                            "images": [],
                            "asin": f"B0{product[i]:08d}V",
                            "parent_asin": f"B0{product[i]:08d}",
                            "user_id": f"AG{user[i]:010d}",
                            "timestamp": int(ts[i]),
                            "helpful_vote": int(helpful[i]),
                            "verified_purchase": bool(verified[i]),
                        }
                    )
                )
            out.write(b"\n".join(rows) + b"\n")
    return path.stat().st_size


def write_meta(path: Path, products: int) -> None:
    with gzip.open(path, "wb", compresslevel=1) as out:
        for p in range(products):
            out.write(
                orjson.dumps(
                    {
                        "main_category": "Movies & TV",
                        "title": f"Film {p} [Blu-ray]",
                        "average_rating": 4.2,
                        "rating_number": 10,
                        "features": ["Widescreen"],
                        "description": [f"<p>The story of film {p}.</p>"],
                        "price": 9.99,
                        "images": [],
                        "videos": [],
                        "store": "Studio",
                        "categories": ["Movies & TV", "Drama"],
                        "details": {},
                        "parent_asin": f"B0{p:08d}",
                        "bought_together": None,
                    }
                )
                + b"\n"
            )


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``every`` seconds until stopped."""

    def __init__(self, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.every, self.stop_flag = every, threading.Event()
        self.process = psutil.Process()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stop_flag.is_set():
            self.samples.append((time.perf_counter() - start, self.process.memory_info().rss))
            time.sleep(self.every)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5_000_000, help="review lines to generate")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("var/bench/amazon.json"))
    args = parser.parse_args(argv)
    if args.lines < 1 or args.users < 1 or args.products < 1:
        parser.error("--lines, --users and --products must be at least 1")
    rules = AmazonRules()
    with tempfile.TemporaryDirectory(prefix="recflow-bench-amazon-") as tmp:
        reviews, meta = Path(tmp) / "Movies_and_TV.jsonl.gz", Path(tmp) / "meta_Movies_and_TV.jsonl.gz"
        started = time.perf_counter()
        # generated in a child process, so this one's RSS is the reader's alone
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            size = pool.submit(write_reviews, reviews, args.lines, args.users, args.products).result()
            pool.submit(write_meta, meta, args.products).result()
        print(
            f"generated {args.lines:,} review lines ({size / 2**20:,.0f} MiB gzipped) and "
            f"{args.products:,} meta lines in {time.perf_counter() - started:.0f} s"
        )
        baseline = psutil.Process().memory_info().rss
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        data = read_amazon(reviews, meta, rules)
        seconds = time.perf_counter() - started
        sampler.stop_flag.set()
        sampler.join()
    rss = np.array([r for _, r in sampler.samples], dtype=np.float64)
    deciles = [float(rss[min(len(rss) - 1, int(q * len(rss)))]) / 2**20 for q in np.linspace(0.1, 1.0, 10)]
    result = {
        "lines": args.lines,
        "seconds": round(seconds, 1),
        "lines_per_s": round(args.lines / seconds),
        "kept_interactions": len(data.interactions),
        "items": len(data.items),
        "users": int(data.interactions["user_id"].nunique()),
        "rejected_lines": len(data.rejects),
        "rss_before_mib": round(baseline / 2**20),
        "peak_rss_mib": round(float(rss.max()) / 2**20),
        "rss_by_tenth_mib": [round(d) for d in deciles],
        "chunk_lines": rules.chunk_lines,
        "rules": rules.model_dump(),
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs",
    }
    print(
        f"read {args.lines:,} lines in {seconds:.0f} s: {result['lines_per_s']:,} lines/s; kept "
        f"{result['kept_interactions']:,} interactions of {result['users']:,} users on {result['items']:,} "
        f"items (rating >= {rules.min_rating:g}, verified, from {rules.since_year}, {rules.kcore}-core)"
    )
    print(
        f"RSS: {result['rss_before_mib']} MiB before, peak {result['peak_rss_mib']} MiB; by tenth of the run "
        + " ".join(str(d) for d in result["rss_by_tenth_mib"])
        + " MiB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
