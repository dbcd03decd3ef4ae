"""Prefect's state lives under ``RECFLOW_HOME`` and runs work from any working directory.

``PREFECT_HOME`` used to default to ``./var/prefect``: outside the checkout Prefect could not
create it (its ``mkdir`` makes no parents), the ephemeral API server could not open its
database, and ``recflow run nightly`` failed after a ~2 min 20 s start-up timeout; where a
``./var`` existed, Prefect's database landed there instead of under ``RECFLOW_HOME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.tiny_catalogue import CATALOGUE, write_config, write_tiny_catalogue
from storage.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict[str, str]:
    """This environment with recflow's code from this checkout and nothing that names a
    Prefect home, a Prefect API or recflow settings except ``RECFLOW_HOME`` (and one cheap model)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECFLOW_", "PREFECT_"))}
    return env | {
        "PYTHONPATH": str(REPO),
        "RECFLOW_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "RECFLOW_MODEL__NAME": "itemknn-recency",  # one cheap model: the test is about where state goes
    }


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_relative_home_is_resolved_once_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECFLOW_HOME", raising=False)
    assert Settings().home == tmp_path / "var"
    assert Settings(home=Path("state")).home == tmp_path / "state"
    monkeypatch.setenv("RECFLOW_HOME", "elsewhere")
    assert Settings().home == tmp_path / "elsewhere"


def test_prefect_database_goes_under_recflow_home_even_where_a_var_directory_exists(tmp_path: Path) -> None:
    """The CLI sets PREFECT_HOME from the settings before Prefect is imported, so Prefect's
    own settings (its home, its SQLite database) point under RECFLOW_HOME, not ./var."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    (cwd / "var").mkdir(parents=True)
    probe = (
        "import deployments.cli\n"
        "from prefect.settings import get_current_settings\n"
        "s = get_current_settings()\n"
        "print(s.home)\n"
        "print(s.server.database.connection_url.get_secret_value())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=_env(home), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    prefect_home, database = out.stdout.split()
    assert Path(prefect_home) == home / "prefect" and Path(prefect_home).is_dir()
    assert database.endswith(f"{home / 'prefect' / 'prefect.db'}"), database
    assert _tree(cwd) == {"var"}


def test_unwritable_home_fails_at_once_naming_it(tmp_path: Path) -> None:
    """A Prefect home that cannot be made is reported in seconds, not after Prefect's start-up
    timeout on a server that could never open its database."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "run", "nightly"],
        cwd=tmp_path,
        env=_env(blocker / "home"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 1
    assert "cannot create Prefect's home" in " ".join(out.stdout.split()), out.stdout + out.stderr
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_nightly_runs_outside_the_checkout_with_all_state_under_recflow_home(tmp_path: Path) -> None:
    """`recflow run nightly` from a directory that is not the checkout and has no ./var:
    it completes, Prefect's database is under RECFLOW_HOME, and the directory is untouched."""
    cwd, home = tmp_path / "elsewhere", tmp_path / "home"
    cwd.mkdir()
    assert not cwd.resolve().is_relative_to(REPO)
    interactions, items = write_tiny_catalogue(cwd)
    write_config(cwd, interactions, items)
    before = _tree(cwd)
    out = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "run", "nightly"],
        cwd=cwd,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    version = (home / CATALOGUE / "bundles" / "CURRENT").read_text().strip()
    assert version and f"live bundle: {version}" in " ".join(out.stdout.split())
    assert (home / "prefect" / "prefect.db").is_file()
    assert _tree(cwd) == before
