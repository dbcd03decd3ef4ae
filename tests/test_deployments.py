"""Deployments on a real Prefect server started by the test, run by a served process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings

pytestmark = pytest.mark.slow  # a real Prefect server and the deployment runner

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


REGISTERED = ("embed-items", "build-index", "train-models", "merge-checkpoints", "tune-models")
"""Flows deployed for every catalogue besides the nightly."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group: serve() ignores SIGINT, and children must go too."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, ml100k_slice: Path
) -> Iterator[tuple[httpx.Client, dict]]:
    """`prefect server start` on a free port, then `python -m deployments.serve` against it."""
    tmp = tmp_path_factory.mktemp("deploy")
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    port = api.rsplit(":", 1)[1].split("/")[0]
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=(tmp / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    overrides = {
        "home": str(tmp / "var"),
        "catalogues": {
            "deployed": {
                "source": {"kind": "movielens", "path": str(ml100k_slice)},
                "model": {"name": "itemknn-recency"},  # one model: not about choosing one
            },
            "news": {},
        },
    }
    served: subprocess.Popen[bytes] | None = None
    client = httpx.Client(base_url=api, timeout=30)
    try:
        _wait(lambda: client.get("/health").status_code == 200, 180, "prefect server", tmp / "server.log")
        served = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve"],
            env={
                **env,
                "RECFLOW_DEPLOY_OVERRIDES": json.dumps(overrides),
                "RECFLOW_SCHEDULE__TIMEZONE": "Europe/Berlin",
            },
            cwd=REPO,
            start_new_session=True,
            stdout=(tmp / "serve.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        # Deployments are registered one by one: wait for every one the tests look up.
        expected = [
            f"{flow}/{catalogue}"
            for flow in (*REGISTERED, "nightly-refresh")
            for catalogue in ("deployed", "news")
        ] + ["scrape-feeds/news", "morning-harvest/news"]
        _wait(
            lambda: all(client.get(f"/deployments/name/{name}").status_code == 200 for name in expected),
            180,
            "deployments",
            tmp / "serve.log",
        )
        yield client, overrides
    finally:
        client.close()
        if served is not None:
            _stop(served)
        _stop(server)


def _wait(condition: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if condition():  # type: ignore[operator]
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout}s; log:\n{log.read_text()[-3000:]}")


def _run(client: httpx.Client, deployment: str, parameters: dict, timeout: float = 600) -> dict:
    dep = client.get(f"/deployments/name/{deployment}").json()
    # A fresh server on SQLite can answer 503 while its background services hold the database.
    for _ in range(60):
        response = client.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})
        if response.status_code != 503:
            break
        time.sleep(1)
    assert response.status_code == 201, f"{response.status_code}: {response.text}"
    run = response.json()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/flow_runs/{run['id']}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(1)
    raise TimeoutError(f"{deployment} run {run['id']} did not finish in {timeout}s")


def test_deployments_are_registered_with_their_schedules(stack: tuple[httpx.Client, dict]) -> None:
    client, overrides = stack
    for catalogue in ("deployed", "news"):
        nightly = client.get(f"/deployments/name/nightly-refresh/{catalogue}").json()
        (schedule,) = nightly["schedules"]
        assert schedule["schedule"]["cron"] == Settings().schedule.nightly_cron
        assert schedule["schedule"]["timezone"] == "Europe/Berlin"
        assert nightly["concurrency_limit"] == 1 or nightly.get("global_concurrency_limit")
        assert "nightly" in nightly["tags"] and catalogue in nightly["tags"]
        assert nightly["parameters"] == {"catalogue": catalogue, "overrides": overrides}
        catalogue_param = nightly["parameter_openapi_schema"]["properties"]["catalogue"]
        assert catalogue_param["position"] == 0  # first in the UI's run form
    # Scraping and the harvest exist only for the catalogue fed by feeds.
    for name in ("scrape-feeds/deployed", "morning-harvest/deployed"):
        assert client.get(f"/deployments/name/{name}").status_code == 404
    for name, cron in (
        ("scrape-feeds/news", Settings().schedule.scrape_cron),
        ("morning-harvest/news", Settings().schedule.harvest_cron),
    ):
        (schedule,) = client.get(f"/deployments/name/{name}").json()["schedules"]
        assert schedule["schedule"]["cron"] == cron
        assert schedule["schedule"]["timezone"] == "Europe/Berlin"
    assert Settings().schedule.scrape_cron == "0 * * * *"
    assert Settings().schedule.harvest_cron == "0 6 * * *"
    for flow in REGISTERED:
        for catalogue in ("deployed", "news"):
            assert client.get(f"/deployments/name/{flow}/{catalogue}").status_code == 200


def test_triggered_run_completes_and_publishes(stack: tuple[httpx.Client, dict]) -> None:
    client, overrides = stack
    store = ArtifactStore(catalogue_settings("deployed", overrides).bundles_dir)
    state = _run(client, "nightly-refresh/deployed", {})  # the deployment's own parameters
    assert state["type"] == "COMPLETED", state
    live = store.current_version()
    assert live is not None
    assert store.manifest(live)["metrics"]["test"]["ndcg@10"] > 0

    missing = {"source": {"kind": "movielens", "path": str(Path(overrides["home"]) / "missing")}}
    broken = {**overrides, "catalogues": {"deployed": missing}}
    failed = _run(client, "nightly-refresh/deployed", {"overrides": broken})
    assert failed["type"] == "FAILED", failed
    assert "recflow data demo" in failed["message"] or "not found" in failed["message"]
    assert store.current_version() == live
