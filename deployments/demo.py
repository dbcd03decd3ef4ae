"""``recflow demo`` / ``make demo``: every configured catalogue prepared and served, one HTTP
process per catalogue, until Ctrl-C stops them all.

For the default ``catalogues`` that is MovieLens-100K (fetched, nightly refresh, served on
``--port``) and the news catalogue (demo feeds served in the background by
``recflow demo-feeds``; scrape, morning harvest and nightly refresh; served on ``--port`` + 1).
A catalogue whose source is ``feeds`` is scraped and harvested before its nightly; any other
is refreshed by its nightly alone (MovieLens-100K fetched first when that is its source).

Why a process per catalogue rather than one service with path prefixes: each process loads
only its own bundle (a news bundle's vectors never share memory or reload pauses with
MovieLens'), a catalogue can be restarted, scaled (``--workers``) or given other settings
alone, and every endpoint keeps the paths clients already use.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

from rich.console import Console

from deployments.ui import _stop, _wait_healthy
from storage.settings import Settings, catalogue_settings

CLI = [sys.executable, "-m", "deployments.cli"]


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    from tasks.scrape import port_in_use

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo feeds exited with code {proc.returncode} before listening")
        if port_in_use(host, port):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the demo feeds did not listen on {host}:{port} within {timeout:.0f}s")


def prepare(catalogue: str, console: Console) -> None:
    """Bring ``catalogue``'s warehouse and live bundle up to date with its flows."""
    from flows.harvest import morning_harvest
    from flows.nightly import nightly_refresh
    from flows.scrape import scrape_feeds

    settings = catalogue_settings(catalogue)
    if settings.source.kind == "feeds":
        console.print(f"[bold]{catalogue}[/]: scrape-feeds")
        console.print(scrape_feeds(catalogue=catalogue).log_line())
        console.print(f"[bold]{catalogue}[/]: morning-harvest")
        console.print(morning_harvest(catalogue=catalogue).log_line())
    elif settings.source.kind == "movielens" and settings.source.path.name == "ml-100k":
        from tasks.demo_data import fetch_movielens_100k

        fetch_movielens_100k(settings.source.path)
        console.print(f"[bold]{catalogue}[/]: MovieLens-100K in {settings.source.path}")
    console.print(f"[bold]{catalogue}[/]: nightly-refresh")
    result = nightly_refresh(catalogue=catalogue)
    console.print(
        f"{catalogue}: published {result.version or '—'}; live bundle {result.live} ({result.reason})"
    )


def run_demo(port: int = 8000, feed_days: int | None = None, console: Console | None = None) -> int:
    """Prepare every configured catalogue, then serve catalogue number i on ``port`` + i and
    block until Ctrl-C or SIGTERM (returns 0) or until one of them exits (returns 1); the
    services and the demo feeds stop with it.

    ``feed_days`` is how many days of stories the demo feeds carry (default: the server's).
    Logs of the background processes go to ``<RECFLOW_HOME>/logs``."""
    from tasks.scrape import configured_feeds, points_at_demo, port_in_use

    console = console or Console()
    shared = Settings()
    catalogues = list(shared.catalogues)
    logs = shared.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, proc))
        return proc

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starting `recflow demo &` leaves it ignored, and Ctrl-C is how it stops.
    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: stop the children below
            demo_addresses = {
                (f.demo_host, f.demo_port)
                for f in (catalogue_settings(c).feeds for c in catalogues)
                if points_at_demo(configured_feeds(f), f)
            }
            for host, feed_port in sorted(demo_addresses):
                if not port_in_use(host, feed_port):
                    days = ["--days", str(feed_days)] if feed_days else []
                    cmd = [*CLI, "demo-feeds", "--host", host, "--port", str(feed_port), *days]
                    _wait_listening(host, feed_port, start(f"demo-feeds-{feed_port}", cmd))
                    console.print(
                        f"demo feeds    http://{host}:{feed_port}/  (new stories as the clock moves)"
                    )
            for catalogue in catalogues:
                prepare(catalogue, console)
            services = []
            for i, catalogue in enumerate(catalogues):
                cmd = [
                    *CLI,
                    "serve",
                    "--catalogue",
                    catalogue,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port + i),
                ]
                services.append((catalogue, port + i, start(f"serve-{catalogue}", cmd)))
            for catalogue, p, proc in services:
                _wait_healthy(f"http://127.0.0.1:{p}/health", 180, proc, f"the {catalogue} service")
                console.print(f"{catalogue:<16}http://127.0.0.1:{p}/  (docs: /docs)")
            console.print(f"logs in {logs}/; Ctrl-C stops everything")
            while all(p.poll() is None for _, p in procs):
                time.sleep(1)
            dead = [n for n, p in procs if p.poll() is not None]
            console.print(f"[red]{', '.join(dead)} exited; see {logs}/ — stopping the rest[/]")
            return 1
    finally:
        _stop(procs, console)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
