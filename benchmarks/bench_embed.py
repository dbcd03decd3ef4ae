"""``make bench-embed``: raw model throughput vs the embed-items flow on the same texts.

Texts: every MovieLens-100K item (from the fetched copy) in several editions, so the run is
long enough that fixed costs show honestly. The flow runs against a Prefect API that is
already up (its start-up is not embedding work); a second flow run must encode 0 items.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--editions", type=int, default=6, help="copies of each title (distinct texts)")
    args = parser.parse_args()
    from flows.embed import run_embed_items
    from models.text_encoder import encode, load_text_model
    from storage.settings import EmbeddingSettings, Settings
    from storage.warehouse import open_warehouse
    from tasks.demo_data import fetch_movielens_100k
    from tasks.embedding import render_texts
    from tasks.load import upsert_items
    from tasks.sources.movielens import read_movielens

    base = read_movielens(fetch_movielens_100k(Path("var/data/ml-100k"))).items
    frames = []
    for e in range(args.editions):
        f = base.copy()
        f["item_id"] = f["item_id"] + f"-e{e}"
        f["title"] = f["title"] + ("" if e == 0 else f" (edition {e})")
        frames.append(f)
    items = pd.concat(frames, ignore_index=True)
    emb = EmbeddingSettings()
    texts = sorted(set(render_texts(items.assign(source="ml"), emb.template)))
    model = load_text_model(emb.model, emb.device)
    model.encode(texts[:256], batch_size=emb.batch_size)  # warm-up: first call pays one-off costs

    started = time.perf_counter()
    encode(texts, emb.model, emb.device, emb.batch_size, progress=False)
    raw_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        overrides: dict[str, Any] = {"home": tmp, "catalogue": "bench"}
        settings = Settings(**overrides)
        with open_warehouse(settings.warehouse_path) as con:
            upsert_items(con, items, "bench")
        from prefect import flow

        @flow(name="warm-up")
        def warm_up() -> None:
            """Start the Prefect API before timing."""

        warm_up()
        started = time.perf_counter()
        first = run_embed_items(overrides)
        flow_s = time.perf_counter() - started
        second = run_embed_items(overrides)

    n = len(texts)
    raw_rate, flow_rate = n / raw_s, first.encoded / flow_s
    overhead = flow_s / raw_s - 1.0
    table = Table(title=f"Embedding {n:,} distinct item texts with {emb.model} (batch {emb.batch_size})")
    for col in ("path", "texts encoded", "seconds", "texts/s"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row("model.encode (raw)", f"{n:,}", f"{raw_s:.1f}", f"{raw_rate:,.0f}")
    table.add_row("embed-items flow, 1st run", f"{first.encoded:,}", f"{flow_s:.1f}", f"{flow_rate:,.0f}")
    table.add_row("embed-items flow, 2nd run", f"{second.encoded:,}", f"{second.seconds:.1f}", "—")
    Console().print(table)
    Console().print(
        f"flow overhead vs raw encode: {overhead:+.1%} (target ≤ +10%); second run encoded {second.encoded}"
    )
    out = Path("var/bench/embed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "texts": n,
                "raw_per_s": raw_rate,
                "flow_per_s": flow_rate,
                "overhead": overhead,
                "second_run_encoded": second.encoded,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
