"""`recflow run nightly` as a user runs it (environment variables, no flags), in-process."""

from __future__ import annotations

from pathlib import Path

import pytest


def run_nightly_cli(env: dict[str, str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``recflow run nightly`` in this process (the temporary Prefect API of ``prefect_api``)
    with ``env`` as the user's environment, from ``cwd`` (no recflow.toml there); returns what
    the command printed, whitespace collapsed.

    The output is read from the CLI's rich console, not by swapping stdout (typer's
    CliRunner, capsys): Prefect's log handler keeps the stream it first saw, and a swapped one
    is closed after the test that swapped it."""
    import typer

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PREFECT_HOME", str(cwd / "prefect"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from deployments.cli import app, console

    console.begin_capture()
    try:
        typer.main.get_command(app).main(["run", "nightly"], prog_name="recflow", standalone_mode=False)
    finally:
        printed = console.end_capture()
    return " ".join(printed.split())
