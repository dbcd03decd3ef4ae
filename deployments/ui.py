"""``recflow ui`` / ``make ui``: the Prefect server and UI, the deployment server and the HTTP
service of each configured catalogue (catalogue i on ``http_port`` + i), started together on
127.0.0.1 and stopped together on Ctrl-C.

Each child runs in its own process group and is stopped with SIGTERM to the group:
``serve()`` ignores SIGINT for a long while and would otherwise leave orphans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from deployments.prefect_home import require_prefect_home

BIN = Path(sys.executable).parent


def _wait_healthy(url: str, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url} within {timeout:.0f}s")


def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]], console: Console) -> None:
    for name, proc in reversed(procs):
        if proc.poll() is None:
            console.print(f"stopping {name}")
            os.killpg(proc.pid, signal.SIGTERM)
    for _name, proc in reversed(procs):
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_ui(prefect_port: int = 4200, http_port: int = 8000, logs: Path | None = None) -> None:
    """Start everything, print where it is, and block until Ctrl-C or SIGTERM.

    Logs go to ``<RECFLOW_HOME>/logs`` and Prefect's database to ``<RECFLOW_HOME>/prefect``
    (both absolute), whatever directory this is started from.
    """
    from storage.settings import Settings

    console = Console()
    logs = logs or Settings().home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_HOME": str(require_prefect_home()),
    }
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, proc))
        return proc

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: stop the children below
            server = start(
                "prefect-server",
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            )
            _wait_healthy(f"{api}/health", 120, server, "prefect server")
            console.print(f"Prefect UI    http://127.0.0.1:{prefect_port}")
            start("deployments", [sys.executable, "-m", "deployments.serve"])
            for i, catalogue in enumerate(Settings().catalogues):  # one service per catalogue
                port = str(http_port + i)
                cmd = [
                    str(BIN / "recflow"),
                    "serve",
                    "--catalogue",
                    catalogue,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    port,
                ]
                start(f"http-{catalogue}", cmd)
                console.print(f"{catalogue:<16}http://127.0.0.1:{port}  (docs: /docs)")
            console.print(f"logs in {logs}/; Ctrl-C stops everything")
            while all(p.poll() is None for _, p in procs):
                time.sleep(1)
            dead = [n for n, p in procs if p.poll() is not None]
            console.print(f"[red]{', '.join(dead)} exited; see {logs}/ — stopping the rest[/]")
    finally:
        _stop(procs, console)
