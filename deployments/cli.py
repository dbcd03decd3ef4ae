"""The ``recflow`` command line: run flows, serve, fetch demo data, manage bundles."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deployments.prefect_home import configure_prefect_home, require_prefect_home

# Prefect reads these at import: keep telemetry off and its state under <RECFLOW_HOME>/prefect
# (absolute, created now: see deployments/prefect_home.py for why a cwd-relative one broke).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
configure_prefect_home()

app = typer.Typer(help="recflow: a self-hosted recommender run by Prefect flows.", no_args_is_help=True)
run_app = typer.Typer(help="Run a flow now.", no_args_is_help=True)
data_app = typer.Typer(help="Fetch demo data.", no_args_is_help=True)
bundle_app = typer.Typer(help="List and roll back published bundles.", no_args_is_help=True)
deploy_app = typer.Typer(help="Prefect deployments.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(data_app, name="data")
app.add_typer(bundle_app, name="bundle")
app.add_typer(deploy_app, name="deploy")
console = Console(width=max(Console().width, 120))


@run_app.callback()
@deploy_app.callback()
def _needs_prefect() -> None:
    """Flows need a writable Prefect home: say so now, not after Prefect's start-up timeout."""
    try:
        require_prefect_home()
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc


# Flows, the service and bundle commands take --catalogue; without it, the settings' own
# (RECFLOW_CATALOGUE, the config file's `catalogue`, else movielens-100k).
SomeCatalogue = Annotated[
    str | None,
    typer.Option(
        "--catalogue",
        help="Catalogue to act on (setting `catalogues`); default: RECFLOW_CATALOGUE or movielens-100k.",
    ),
]


WORKER_HEALTHCHECK_S = 600
"""Seconds uvicorn's supervisor waits for a worker to answer its health check (see ``serve``)."""


def _settings(catalogue: str | None = None):
    from storage.settings import catalogue_settings

    return catalogue_settings(catalogue)


@data_app.command("demo")
def data_demo(force: Annotated[bool, typer.Option(help="Download again even if present.")] = False) -> None:
    """Fetch MovieLens-100K from the recbole wheel into the data directory."""
    from tasks.demo_data import fetch_movielens_100k

    settings = _settings()
    target = fetch_movielens_100k(settings.data_dir / "ml-100k", force=force)
    console.print(
        f"MovieLens-100K ready in [bold]{target}[/] (F. Maxwell Harper and Joseph A. Konstan, "
        "The MovieLens Datasets, ACM TiiS 5(4), 2015)"
    )


@data_app.command("generate-movielens")
def data_generate_movielens(
    out: Annotated[Path, typer.Option(help="Directory for ratings.csv + movies.csv (ML-25M's layout).")],
    ratings: Annotated[
        int, typer.Option(min=1000, help="Ratings to generate; 25000000 is ML-25M's size.")
    ] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
) -> None:
    """Generate MovieLens-25M-shaped ratings in ML-25M's layout (a catalogue's source.path)."""
    from tasks.synthetic_movielens import main as generate_main

    generate_main(["--ratings", str(ratings), "--out", str(out), "--seed", str(seed)])


@run_app.command("nightly")
def run_nightly(catalogue: SomeCatalogue = None) -> None:
    """Run the nightly-refresh flow once, now."""
    from flows.nightly import nightly_refresh

    result = nightly_refresh(catalogue=catalogue)
    console.print(
        f"published: {result.version or '—'}; live bundle: [bold]{result.live}[/] ({result.reason})"
    )


@deploy_app.command("serve")
def deploy_serve() -> None:
    """Register every deployment (nightly cron, on-demand flows) and run their flows here.

    Needs PREFECT_API_URL pointing at a running `prefect server start` for schedules to fire.
    """
    from deployments.definitions import serve_deployments

    serve_deployments()


@app.command("ui")
def ui(
    prefect_port: Annotated[int, typer.Option(help="Prefect server and UI port.")] = 4200,
    http_port: Annotated[int, typer.Option(help="First catalogue's HTTP port; the next follow.")] = 8000,
) -> None:
    """Prefect server + UI, the deployment server and each catalogue's HTTP service; Ctrl-C stops all."""
    from deployments.ui import run_ui

    _needs_prefect()
    run_ui(prefect_port, http_port)


@app.command("demo")
def demo(
    port: Annotated[
        int, typer.Option(help="Port of the first catalogue's service; the next ones follow.")
    ] = 8000,
    feed_days: Annotated[
        int | None, typer.Option(min=1, help="Days of stories the demo feeds carry; default 8.")
    ] = None,
) -> None:
    """Prepare and serve every configured catalogue (default: MovieLens-100K on :8000, news from
    the demo feeds on :8001), one process each, until Ctrl-C stops them all."""
    from deployments.demo import run_demo

    _needs_prefect()
    raise typer.Exit(run_demo(port, feed_days, console))


@run_app.command("embed")
def run_embed(catalogue: SomeCatalogue = None) -> None:
    """Run the embed-items flow once, now."""
    from flows.embed import run_embed_items

    summary = run_embed_items(catalogue=catalogue)
    console.print(f"{summary.items} items: {summary.encoded} encoded, {summary.cached} from cache")


@run_app.command("index")
def run_index(catalogue: SomeCatalogue = None) -> None:
    """Run the build-index flow once, now (rebuilds the live bundle's index)."""
    from flows.build_index import build_index_flow
    from storage.artifacts import ArtifactStore

    result = build_index_flow(catalogue=catalogue)
    index = (
        ArtifactStore(_settings(catalogue).bundles_dir).manifest(result.live).get("index", {})
        if result.live
        else {}
    )
    console.print(
        f"published: {result.version}; live bundle: [bold]{result.live}[/]; index {index.get('kind')} "
        f"over {index.get('n')} items, measured recall@{index.get('recall_k') or 100} = {index.get('recall')}"
    )


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    catalogue: SomeCatalogue = None,
) -> None:
    """Start the HTTP service on the live bundle of one catalogue (it follows CURRENT without
    restarts). One process per catalogue: each loads only its own bundle and reloads alone."""
    import uvicorn

    from serving.dependencies import OpenAdminError, check_admin_exposure

    settings = _settings(catalogue)
    # uvicorn's factory (and each worker) builds the app from the environment: name it there.
    os.environ["RECFLOW_CATALOGUE"] = settings.catalogue
    try:  # the --host given here is not in the settings the app checks
        check_admin_exposure(settings.serving, host or settings.serving.host)
    except OpenAdminError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host or settings.serving.host,
        port=port or settings.serving.port,
        workers=workers,
        log_level="info",
        # A worker loading a big bundle (millions of items: checksums, the catalogue) holds the
        # GIL for seconds at a time and misses uvicorn's 5 s health check, which kills it and
        # starts another that misses it again; a live worker answers within milliseconds.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )


@app.command("eval")
def evaluate(
    dataset: Annotated[
        str, typer.Option(help="Catalogue name the report is written under.")
    ] = "movielens-100k",
    model: Annotated[
        list[str] | None,
        typer.Option(help="Evaluate only these models (repeatable); written to <dataset>-subset.json."),
    ] = None,
) -> None:
    """Fit and evaluate the models with full ranking on leave-last-out (parameters chosen on its
    validation) and on the global temporal split; print both tables and write the JSON and report."""
    from storage.settings import Settings
    from tasks.report import CANDIDATES, print_report, run_evaluation

    settings = Settings(catalogue=dataset)
    unknown = sorted(set(model or []) - set(CANDIDATES))
    if unknown:
        raise typer.BadParameter(f"unknown models {unknown}; expected some of {sorted(CANDIDATES)}")
    out = settings.eval_dir / (f"{dataset}-subset.json" if model else f"{dataset}.json")
    report = run_evaluation(settings, {m: CANDIDATES[m] for m in model} if model else None, out=out)
    print_report(report, console)
    console.print(f"written to {out}")


@bundle_app.command("list")
def bundle_list(catalogue: SomeCatalogue = None) -> None:
    """Published bundles, oldest first; * marks the live one."""
    from storage.artifacts import ArtifactStore

    settings = _settings(catalogue)
    table = Table("", "version", "model", "valid ndcg@10", "test ndcg@10", "users", "items")
    for info in ArtifactStore(settings.bundles_dir).infos():
        m = info.manifest
        metrics = m.get("metrics", {})
        table.add_row(
            "*" if info.is_current else "",
            info.version,
            m.get("model", {}).get("name", "?"),
            f"{metrics.get('valid', {}).get('ndcg@10', float('nan')):.4f}",
            f"{metrics.get('test', {}).get('ndcg@10', float('nan')):.4f}",
            str(m.get("counts", {}).get("users", "")),
            str(m.get("counts", {}).get("items", "")),
        )
    console.print(table)


@bundle_app.command("rollback")
def bundle_rollback(
    version: Annotated[
        str | None, typer.Argument(help="Version to make live; default: the one before.")
    ] = None,
    catalogue: SomeCatalogue = None,
) -> None:
    """Point CURRENT at an earlier bundle; the running service follows within seconds."""
    from storage.artifacts import ArtifactStore, BundleError

    settings = _settings(catalogue)
    try:
        live = ArtifactStore(settings.bundles_dir).rollback(version)
    except BundleError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"live bundle is now [bold]{live}[/]")


@bundle_app.command("show")
def bundle_show(
    version: Annotated[str | None, typer.Argument()] = None, catalogue: SomeCatalogue = None
) -> None:
    """Print a bundle's manifest (default: the live one)."""
    from storage.artifacts import ArtifactStore

    store = ArtifactStore(_settings(catalogue).bundles_dir)
    version = version or store.current_version()
    if version is None:
        console.print("[red]no bundle published yet; run `recflow run nightly`[/]")
        raise typer.Exit(1)
    console.print_json(json.dumps(store.manifest(version)))


# --- News feeds and the morning harvest ------------------------------------------------------
import contextlib  # noqa: E402 - kept with the block that uses it

feeds_app = typer.Typer(help="News feeds: health, pausing.", no_args_is_help=True)
app.add_typer(feeds_app, name="feeds")
CatalogueOption = Annotated[str, typer.Option(help="Catalogue (its warehouse lives under var/<catalogue>).")]
# The ephemeral Prefect API of a one-off run can take longer than Prefect's 20 s on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@app.command("demo-feeds")
def demo_feeds(
    host: Annotated[str | None, typer.Option(help="Interface; default feeds.demo_host.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default feeds.demo_port.")] = None,
    days: Annotated[int | None, typer.Option(min=1, help="Days of stories carried; default 8.")] = None,
) -> None:
    """Serve the demo news feeds (26 outlets, new stories as the clock moves) until Ctrl-C."""
    from demo.feeds import BROKEN_FEEDS, DemoFeedServer
    from demo.stories import DEFAULT_DAYS

    feeds = _settings().feeds
    server = DemoFeedServer(
        host or feeds.demo_host, port or feeds.demo_port, seed=feeds.demo_seed, days=days or DEFAULT_DAYS
    )
    console.print(
        f"demo feeds on [bold]http://{server.host}:{server.requested_port}/[/] "
        f"(/feeds/<outlet>.xml; /broken/<case> for {len(BROKEN_FEEDS)} broken feeds); Ctrl-C stops"
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@run_app.command("scrape")
def run_scrape(
    catalogue: CatalogueOption = "news",
    only_due: Annotated[bool, typer.Option(help="Fetch only feeds that are due.")] = False,
) -> None:
    """Run the scrape-feeds flow once, now (starts the demo feeds when needed)."""
    from flows.scrape import scrape_feeds

    summary = scrape_feeds(catalogue=catalogue, only_due=only_due)
    console.print(summary.log_line())
    if summary.problems:
        table = Table("feed", "status", "detail", "failures in a row", "paused", title="feeds with problems")
        for f in summary.problems:
            table.add_row(
                f.name, f.status, f.detail[:80], str(f.consecutive_failures), "yes" if f.paused else ""
            )
        console.print(table)


@run_app.command("harvest")
def run_harvest(
    catalogue: CatalogueOption = "news",
    show: Annotated[int, typer.Option(help="Rows of the pool to print (0: all).")] = 0,
) -> None:
    """Run the morning-harvest flow once, now, and print today's pool."""
    from flows.harvest import morning_harvest

    pool = morning_harvest(catalogue=catalogue)
    table = Table("rank", "title", "source", "topic", "reason", title=f"pool of {pool.pool_date}")
    for row in pool.rows[: show or None]:
        table.add_row(str(row.rank), row.title, row.source, row.topic, row.reason)
    console.print(table)
    console.print(pool.log_line())


@feeds_app.command("status")
def feeds_status(catalogue: CatalogueOption = "news") -> None:
    """Each feed's health: last status, last success, failures in a row, paused."""
    from storage.warehouse import open_warehouse

    with open_warehouse(_settings(catalogue).warehouse_path) as con:
        rows = con.execute(
            "SELECT name, last_status, last_success_at, consecutive_failures, paused, items_added_total, url "
            "FROM feeds ORDER BY paused DESC, consecutive_failures DESC, name"
        ).fetchall()
    table = Table("feed", "last status", "last success", "failures", "paused", "items", "url")
    for name, status, success, failures, paused, items, url in rows:
        table.add_row(
            name, status, str(success or "never"), str(failures), "yes" if paused else "", str(items), url
        )
    console.print(table)


@feeds_app.command("resume")
def feeds_resume(
    urls: Annotated[list[str] | None, typer.Argument(help="Feed URLs; none: every paused feed.")] = None,
    catalogue: CatalogueOption = "news",
) -> None:
    """Un-pause feeds so the next scrape fetches them again."""
    from storage.warehouse import open_warehouse
    from tasks.scrape import resume_feeds

    with open_warehouse(_settings(catalogue).warehouse_path) as con:
        count = resume_feeds(con, urls or None)
    console.print(f"{count} feed(s) resumed")


# --- train-models, merge-checkpoints, batch export (trainflow) -----------------------------
@run_app.command("train")
def run_train(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model to train (repeat for several); default: settings."),
    ] = None,
    warm_start: Annotated[
        bool, typer.Option("--warm-start", help="Start torch models from the live bundle's checkpoint.")
    ] = False,
    tolerance: Annotated[
        float, typer.Option(help="Publish if valid ndcg@10 is at most this much below the live bundle's.")
    ] = 0.0,
    config: Annotated[
        str | None, typer.Option(help='Model parameters as JSON, e.g. \'{"nextitem-mf": {"epochs": 3}}\'.')
    ] = None,
    catalogue: SomeCatalogue = None,
) -> None:
    """Run the train-models flow: train, evaluate, record, gate against the live bundle, publish."""
    from pydantic import ValidationError

    from flows.train import train_models
    from models.configs import ModelOverrides

    try:
        parsed = ModelOverrides.model_validate_json(config) if config else None
    except ValidationError as exc:  # bad JSON, an unknown model or parameter, a bad value: named
        raise typer.BadParameter(f"--config: {exc}") from exc
    result = train_models(
        catalogue=catalogue, models=model, config=parsed, tolerance=tolerance, warm_start=warm_start
    )
    for name, ndcg in result.valid_ndcg10.items():
        console.print(f"{name}: valid ndcg@10 {ndcg:.4f} (run {result.runs[name]})")
    console.print(
        f"champion {result.champion}; published: {result.version or '—'}; live bundle: "
        f"[bold]{result.live}[/] ({result.reason})"
    )


@run_app.command("merge")
def run_merge(
    bundle: Annotated[
        list[str] | None, typer.Option("--bundle", help="Bundle version to merge (repeat).")
    ] = None,
    checkpoint: Annotated[
        list[Path] | None, typer.Option("--checkpoint", help="Checkpoint directory to merge (repeat).")
    ] = None,
    weight: Annotated[
        list[float] | None, typer.Option("--weight", help="Weight per input, bundles first (repeat).")
    ] = None,
    anchor: Annotated[int, typer.Option(help="Input whose tensors are kept where shapes differ.")] = 0,
    tolerance: Annotated[float, typer.Option(help="Gate tolerance on valid ndcg@10.")] = 0.0,
    catalogue: SomeCatalogue = None,
) -> None:
    """Run the merge-checkpoints flow: average checkpoints, evaluate, gate, publish."""
    from flows.merge import merge_checkpoints

    result = merge_checkpoints(
        catalogue=catalogue,
        bundles=bundle,
        checkpoints=[str(c) for c in checkpoint or []],
        weights=weight,
        anchor=anchor,
        tolerance=tolerance,
    )
    console.print(
        f"merged {result.champion}: valid ndcg@10 {result.valid_ndcg10[result.champion]:.4f}; published: "
        f"{result.version}; live bundle: [bold]{result.live}[/] ({result.reason})"
    )


@run_app.command("tune")
def run_tune(
    model: Annotated[str, typer.Option(help="Model to tune (two-tower, nextitem-mf, neumf, itemknn...).")] = (
        "two-tower"
    ),
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials (pruned ones count).")] = 30,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds after which no new trial starts (and a running one stops).")
    ] = None,
    catalogue: SomeCatalogue = None,
    space: Annotated[
        str | None,
        typer.Option(
            help='Search space over the default, JSON: \'{"params": {"lr": {"kind": "float", '
            '"low": 0.001, "high": 0.01, "log": true}}}\'.'
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 42,
) -> None:
    """Run the tune-models flow: Optuna trials on validation, the best config stored as the default."""
    from pydantic import ValidationError

    from flows.tune import tune_models
    from tasks.tune import SearchSpace

    try:
        parsed = SearchSpace.model_validate_json(space) if space else None
    except ValidationError as exc:
        raise typer.BadParameter(f"--space: {exc}") from exc
    result = tune_models(
        model=model, trials=trials, time_budget_s=time_budget, space=parsed, catalogue=catalogue, seed=seed
    )
    table = Table(
        "trial",
        "state",
        "valid ndcg@10",
        "epochs",
        "seconds",
        *result.searched,
        title=f"study {result.study}: {model} on {result.catalogue}",
    )
    for o in sorted(result.trials, key=lambda o: o.number):
        best = o.number == result.best_trial
        cells = [
            f"{v:.3g}" if isinstance(v, float) else str(v)
            for v in (o.sampled.get(n, "") for n in result.searched)
        ]
        table.add_row(
            f"{o.number}{' *' if best else ''}",
            o.state,
            "—" if o.value is None else f"{o.value:.4f}",
            str(len(o.curve) or "—"),
            f"{o.seconds:.1f}",
            *cells,
            style="bold" if best else None,
        )
    console.print(table)
    console.print(f"{len(result.trials)} trials in {result.seconds:.0f}s; * best. {result.note}")
    console.print(f"optimisation plot: {result.plot}")


@app.command("recommend")
def recommend(
    all_users: Annotated[bool, typer.Option("--all-users", help="Every user of the bundle.")] = False,
    k: Annotated[int, typer.Option("--k", min=1, help="Items per user.")] = 100,
    out: Annotated[Path | None, typer.Option("--out", help="Parquet file to write.")] = None,
    version: Annotated[str | None, typer.Option(help="Bundle version; default: the live one.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Users scored per batch.")] = 1024,
    catalogue: SomeCatalogue = None,
) -> None:
    """Batch export: every user's top-K unseen items (user_id, rank, item_id, score) as Parquet."""
    from storage.artifacts import ArtifactStore
    from tasks.export import export_recommendations

    if not all_users or out is None:
        console.print("[red]pass --all-users and --out FILE.parquet (one user: GET /recommend/{user_id})[/]")
        raise typer.Exit(2)
    from flows.cluster import fanout_configured

    settings = _settings(catalogue)
    try:
        if fanout_configured(settings):  # settings.cluster: user shards over Dask, one file
            from flows.export import export_recommendations_flow

            summary = export_recommendations_flow(
                out, k=k, version=version, batch_size=batch_size, catalogue=settings.catalogue
            )
        else:
            summary = export_recommendations(
                ArtifactStore(settings.bundles_dir), out, k=k, version=version, batch_size=batch_size
            )
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(
        f"{summary.rows:,} rows for {summary.users:,} users (top {summary.k}; {summary.short_users} users "
        f"with fewer unseen items) from bundle {summary.version} ({summary.model}) in {summary.seconds:.1f}s "
        f"→ {summary.path}"
    )


@app.command("simulate")
def simulate_readers(
    catalogue: CatalogueOption = "news",
    personas: Annotated[int, typer.Option(min=1, help="Simulated readers.")] = 20,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the readers' tastes and decisions.")] = 0,
    k: Annotated[int, typer.Option("--k", min=1, help="Stories asked for per visit.")] = 10,
    base_url: Annotated[
        str | None, typer.Option(help="A running service (e.g. http://127.0.0.1:8001); default: serve here.")
    ] = None,
    scrape: Annotated[bool, typer.Option(help="Scrape the catalogue's feeds between days.")] = True,
    nightly_every: Annotated[
        int, typer.Option(min=0, help="Run the nightly after every N days (0: never).")
    ] = 0,
    run: Annotated[
        str | None, typer.Option(help="Names the sessions and event ids; default: seed + time.")
    ] = None,
) -> None:
    """Simulated readers through the HTTP service: GET /feed, then clicks, likes, skips and dwell
    via POST /interact, day after day (tastes drift; feeds are scraped between days)."""
    import contextlib as _contextlib
    from datetime import UTC, datetime

    import httpx

    from flows.ab import between_days
    from tasks.ab import ServiceThread
    from tasks.simulate import ReaderConfig, SimulationError, personas_for, simulate, warehouse_items

    settings = _settings(catalogue)
    try:
        crowd = personas_for(warehouse_items(settings), personas, seed, ReaderConfig().persona)
    except SimulationError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    run = run or f"s{seed}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    with _contextlib.ExitStack() as stack:
        url = base_url or stack.enter_context(ServiceThread(settings))
        client = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        try:
            result = simulate(
                lambda _session: ("live", client),
                crowd,
                days=days,
                seed=seed,
                run=run,
                config=ReaderConfig(k=k),
                between_days=between_days(settings.catalogue, scrape=scrape, nightly_every=nightly_every),
                on_day=lambda d: console.print(d.line()),
            )
        except (SimulationError, httpx.TransportError) as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(1) from exc
    total = result.summary()
    clicks, shown = sum(d.clicks for d in total), sum(d.shown for d in total)
    console.print(
        f"run {run} against {url}: {len(result.visits)} visits, {clicks} clicks of {shown} listed "
        f"(CTR {clicks / max(shown, 1):.3f}); sessions sim-{run}-persona-NNNN in the event log"
    )


@app.command("ab")
def ab(
    a: Annotated[
        str, typer.Option("--a", help="Arm A: [name:]key=value,… settings overrides ('' = as configured).")
    ],
    b: Annotated[str, typer.Option("--b", help="Arm B, same form, e.g. control:serving.update_mode=none.")],
    catalogue: CatalogueOption = "news",
    personas: Annotated[int, typer.Option(min=2, help="Simulated readers, split between the arms.")] = 50,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the readers' tastes and decisions.")] = 0,
    k: Annotated[int, typer.Option("--k", min=1, help="Stories asked for per visit.")] = 10,
    scrape: Annotated[bool, typer.Option(help="Scrape the catalogue's feeds between days.")] = True,
    run: Annotated[str | None, typer.Option(help="Names sessions, event ids and the report folder.")] = None,
) -> None:
    """A/B test: both arms served side by side on 127.0.0.1, simulated readers split by a stable
    hash of their session; per-arm metrics with 95 % intervals (the ab-test flow: a Prefect
    artifact and var/<catalogue>/ab/<run>/report.md, report.png, result.json)."""
    from flows.ab import ab_test
    from tasks.ab import arm_settings, parse_arm

    _needs_prefect()
    try:  # a bad spec or an unpublished bundle is refused before a flow run starts
        for arm in (parse_arm(a, "a"), parse_arm(b, "b")):
            arm_settings(catalogue, None, arm)
        outcome = ab_test(
            catalogue=catalogue,
            a=a,
            b=b,
            personas=personas,
            days=days,
            seed=seed,
            k=k,
            run=run,
            scrape=scrape,
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    table = Table("metric", *outcome.arms, title=f"A/B {' vs '.join(outcome.arms)} (95 % intervals)")
    per = outcome.comparison["arms"]
    for key in ("sessions", "visits", "clicks"):
        table.add_row(key, *(str(per[arm][key]) for arm in outcome.arms))
    from tasks.ab import METRICS, estimate_text

    for key, label in METRICS.items():
        table.add_row(
            label,
            *(estimate_text(per[arm][key]) for arm in outcome.arms),
        )
    console.print(table)
    console.print(
        f"CTR of {outcome.arms[1]} vs {outcome.arms[0]}: {outcome.comparison['ctr_lift']:+.1%} "
        f"(intervals {'overlap' if outcome.comparison['ctr_intervals_overlap'] else 'do not overlap'}); "
        f"report in {outcome.report_dir}"
    )


if __name__ == "__main__":
    app()
