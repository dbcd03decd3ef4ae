"""Where Prefect keeps its state (its SQLite database, profiles): ``<RECFLOW_HOME>/prefect``.

Prefect reads ``PREFECT_HOME`` once, when it is first imported, and then creates the
directory with a plain ``mkdir`` (no parents) and only a warning if that fails. A default
relative to the working directory (``./var/prefect``) therefore broke every run started
outside the checkout: ``./var`` was missing, the directory was not made, the ephemeral API
server's start-up failed on opening its SQLite database but its process stayed alive, never
healthy, and Prefect polled it until its start-up timeout (120 s here) ran out. Where a
``./var`` did exist, the database landed there instead of under ``RECFLOW_HOME``.

:func:`configure_prefect_home` is called by every entry point that starts Prefect (the CLI,
``recflow ui``, the deployment server) before anything imports Prefect: it derives the path
from the settings' absolute ``home`` and creates it with its parents.
"""

from __future__ import annotations

import os
from pathlib import Path


def prefect_home() -> Path:
    """``PREFECT_HOME`` made absolute when set, else ``<settings.home>/prefect``; raises the
    settings' own error when they do not load."""
    if "PREFECT_HOME" in os.environ:
        return Path(os.environ["PREFECT_HOME"]).expanduser().resolve()
    from storage.settings import Settings

    return Settings().home / "prefect"


def configure_prefect_home() -> Path | None:
    """Point ``PREFECT_HOME`` at :func:`prefect_home` (absolute) and create it; returns it, or
    ``None`` when it cannot be known or made here.

    Neither is an error here: the command reports bad settings itself, and a home this user
    may not write (a read-only volume for the HTTP service, which never starts Prefect) only
    matters to a command that runs flows, which :func:`require_prefect_home` stops at once.
    """
    try:
        home = prefect_home()
    except (ValueError, OSError):  # bad settings: the command reports them itself
        return None
    os.environ["PREFECT_HOME"] = str(home)
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)  # Prefect's own mode: it holds the DB
    except OSError:
        return None
    return home


def require_prefect_home() -> Path:
    """The Prefect home, created and writable; raises ``RuntimeError`` naming it otherwise,
    instead of Prefect's two-minute wait on a server that cannot start."""
    home = prefect_home()
    os.environ["PREFECT_HOME"] = str(home)
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"cannot create Prefect's home {home} ({exc}): {_HINT}") from exc
    if not os.access(home, os.W_OK):
        raise RuntimeError(f"cannot write Prefect's home {home}: {_HINT}")
    return home


_HINT = "set RECFLOW_HOME (or PREFECT_HOME) to a directory this user can write"
