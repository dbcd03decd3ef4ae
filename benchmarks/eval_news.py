"""``make eval-news``: the served news stack against the baselines on simulated readers.

The demo feeds' stories (contract C3, a fixed ``--now`` so every run sees the same eight
days) are read by ``--personas`` simulated readers (tasks/personas.py). Impressions before
the last ``--holdout`` share of the time span train the models; the rest are held out and
scored with MIND's impression metrics. Rows: popularity, text-similarity (MiniLM, no
training), itemknn, two-tower, nrms, and nrms+ranker (the served stack: NRMS and the
multi-head ranker of models/news_ranker.py). NRMS keeps its best epoch on the last
``--ranker-share`` of the training impressions, on which the ranker then learns; nothing
sees the held-out ones. Prints the table, writes the full report to
``var/eval/news-personas.json`` and the ``offline`` table of ``var/eval/news.json``
(``{"offline": {model: {"auc", "ndcg@10"}}}``; other keys of that file are kept).

Then (``--no-ab`` skips it, ``--ab-only`` runs only it) the A/B through the real service
(:func:`benchmarks.ab_news.stack_vs_text_similarity`): a fresh news home, simulated warm-up
days, the nightly trains NRMS and its rank stage on the logged impressions, and the
``ab-test`` flow serves that bundle as arm ``nrms+ranker`` and by text similarity alone
(``serving.rank_stage=text-similarity``) as arm ``text-similarity``. Writes ``ab`` (per arm:
``ctr``, ``like_rate``, ``skip_rate``, ``dwell_s``, ``coverage``, ``freshness_h`` (mean age of
clicked stories), each with ``<metric>_ci95``) and ``ab_protocol`` (bundle, run, lift) there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rich.console import Console
from rich.table import Table

METRICS = ["AUC", "MRR", "nDCG@5", "nDCG@10"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the stories and the personas")
    parser.add_argument("--now", default="2026-11-23T12:00:00+00:00", help="end of the demo timeline (ISO)")
    parser.add_argument("--personas", type=int, default=200)
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the time span held out")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--ranker-share", type=float, default=0.25, help="last share of training for the ranker"
    )
    parser.add_argument("--two-tower-epochs", type=int, default=20)
    parser.add_argument(
        "--ab",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the A/B text-similarity vs nrms+ranker through the service (minutes)",
    )
    parser.add_argument("--ab-only", action="store_true", help="only the A/B; keep the offline table")
    parser.add_argument("--ab-personas", type=int, default=6000, help="A/B readers")
    parser.add_argument("--ab-warmup", type=int, default=600, help="readers of the warm-up days")
    parser.add_argument("--ab-warmup-days", type=int, default=2)
    parser.add_argument("--ab-days", type=int, default=2)
    parser.add_argument("--ab-home", type=Path, default=Path("var/bench/eval-news-ab"))
    parser.add_argument("--out", type=Path, default=Path("var/eval/news-personas.json"))
    parser.add_argument("--summary", type=Path, default=Path("var/eval/news.json"))
    args = parser.parse_args()

    if args.ab_only:
        run_ab(args, Console())
        return

    import torch

    from tasks.news_eval import compare_news_stack, demo_items
    from tasks.personas import PersonaConfig, simulate_impressions, split_by_time

    torch.set_num_threads(args.threads)
    console = Console()
    started = time.perf_counter()
    now = datetime.fromisoformat(args.now).astimezone(UTC)
    items = demo_items(seed=args.seed, now=now)
    config = PersonaConfig(personas=args.personas, seed=args.seed)
    log = simulate_impressions(items, config=config)
    train, test = split_by_time(log, args.holdout)
    clicks = sum(sum(c) for c in log["clicked"])
    shown = sum(len(c) for c in log["clicked"])
    console.print(
        f"{len(items):,} stories, {items['topic'].nunique()} topics; {args.personas} personas, "
        f"{len(log):,} impressions ({len(train):,} train, {len(test):,} held out), "
        f"click rate {clicks / shown:.1%}"
    )
    results = compare_news_stack(
        items,
        train,
        test,
        nrms_params={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed},
        two_tower_params={"epochs": args.two_tower_epochs, "seed": args.seed},
        ranker_share=args.ranker_share,
        cache_dir=Path("var/cache/eval-news"),
    )
    table = Table(title="Held-out impressions (MIND metrics, averaged over impressions)")
    table.add_column("model")
    for m in [*METRICS, "fit"]:
        table.add_column(m, justify="right")
    for name, res in results.items():
        table.add_row(name, *(f"{res[m]:.4f}" for m in METRICS), f"{res['fit_seconds']:.1f} s")
    console.print(table)
    first = next(iter(results.values()))
    console.print(
        f"{first['impressions']:,} held-out impressions scored, {first['skipped']:,} without a click skipped"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "protocol": {
            "stories": "demo.stories.generate_stories, one item per story_id",
            "seed": args.seed,
            "now": now.isoformat(),
            "personas": args.personas,
            "persona_config": {k: v for k, v in vars(config).items()},
            "split": f"by time, last {args.holdout:.0%} of the span held out",
            "impressions": {"total": len(log), "train": len(train), "held_out": len(test)},
            "metrics": "MIND scorer: AUC, MRR, nDCG@5, nDCG@10 per impression, averaged",
            "torch_threads": args.threads,
        },
        "results": results,
        "seconds": time.perf_counter() - started,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str))
    summary = json.loads(args.summary.read_text()) if args.summary.exists() else {}
    summary["offline"] = {
        name: {"auc": round(float(res["AUC"]), 4), "ndcg@10": round(float(res["nDCG@10"]), 4)}
        for name, res in results.items()
    }
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2))
    gap = results["nrms+ranker"]["AUC"] - results["text-similarity"]["AUC"]
    console.print(
        f"served stack (nrms+ranker) AUC {results['nrms+ranker']['AUC']:.4f} vs text-similarity "
        f"{results['text-similarity']['AUC']:.4f}: {gap:+.4f} (target ≥ +0.03); wrote {args.summary}"
    )
    console.print(f"wrote {args.out} ({report['seconds']:.0f} s in all)")
    if args.ab:
        run_ab(args, console)


AB_KEYS = {  # the harness's metric → its name in news.json, its label
    "ctr": ("ctr", "click-through"),
    "like_rate": ("like_rate", "likes / listed"),
    "skip_rate": ("skip_rate", "skips / listed"),
    "dwell_s": ("dwell_s", "dwell per click (s)"),
    "coverage": ("coverage", "catalogue coverage"),
    "clicked_age_h": ("freshness_h", "mean age of clicked stories (h)"),
}


def run_ab(args: argparse.Namespace, console: Console) -> None:
    """The A/B arms text-similarity vs nrms+ranker through the real service; writes ``ab``
    (per arm: each metric and its 95 % interval) and ``ab_protocol`` into the summary."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from benchmarks.ab_news import STACK_ARM, TEXT_ARM, stack_vs_text_similarity

    started = time.perf_counter()
    out = stack_vs_text_similarity(
        args.ab_home,
        warmup_personas=args.ab_warmup,
        warmup_days=args.ab_warmup_days,
        personas=args.ab_personas,
        days=args.ab_days,
        seed=args.seed,
        nrms_epochs=args.epochs,
    )
    arms: dict[str, dict[str, Any]] = {}
    for arm, m in out["arms"].items():
        row: dict[str, Any] = {
            "sessions": m["sessions"],
            "visits": m["visits"],
            "listed": m.get("listed", 0),
            "clicks": m.get("clicks", 0),
        }
        for key, (name, _) in AB_KEYS.items():
            row[name] = m[key]["value"]
            row[f"{name}_ci95"] = m[key]["ci95"]
        arms[arm] = row
    table = Table(title="A/B through the service: simulated readers, 95 % bootstrap intervals over sessions")
    table.add_column("metric")
    for arm in arms:
        table.add_column(arm, justify="right")
    for key in ("sessions", "visits", "listed", "clicks"):
        table.add_row(key, *(str(arms[a][key]) for a in arms))
    for key, label in AB_KEYS.values():
        table.add_row(
            label,
            *(
                f"{arms[a][key]:.4g} [{arms[a][f'{key}_ci95'][0]:.4g}, {arms[a][f'{key}_ci95'][1]:.4g}]"
                for a in arms
            ),
        )
    for bucket, per_arm in _by_visit(out).items():
        table.add_row(f"click-through, visit {bucket}", *(f"{per_arm[a]:.4f}" for a in arms))
    console.print(table)
    summary = json.loads(args.summary.read_text()) if args.summary.exists() else {}
    summary["ab"] = arms
    summary["ab_protocol"] = {
        k: out[k]
        for k in (
            "bundle",
            "model",
            "run",
            "report_dir",
            "personas",
            "warmup_personas",
            "warmup_days",
            "days",
            "seed",
        )
    } | {
        "ctr_lift": out["ctr_lift"],
        "ctr_intervals_overlap": out["ctr_intervals_overlap"],
        "ctr_by_visit": out.get("ctr_by_visit"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2))
    met = out["ctr_lift"] >= 0.10 and not out["ctr_intervals_overlap"]
    console.print(
        f"CTR of {STACK_ARM} vs {TEXT_ARM}: {out['ctr_lift']:+.1%} (target ≥ +10 %), 95 % intervals "
        f"{'overlap' if out['ctr_intervals_overlap'] else 'do not overlap'}: target "
        f"{'met' if met else 'missed'}; bundle {out['bundle']} ({out['model']}); wrote {args.summary} "
        f"({summary['ab_protocol']['seconds']:.0f} s)"
    )


def _by_visit(out: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Visit bucket → arm → click-through, from the comparison's ``ctr_by_visit``."""
    by_arm: dict[str, dict[str, dict[str, float]]] = out.get("ctr_by_visit") or {}
    buckets = next(iter(by_arm.values()), {})
    return {b: {a: by_arm[a][b]["ctr"] for a in by_arm} for b in buckets}


if __name__ == "__main__":
    main()
