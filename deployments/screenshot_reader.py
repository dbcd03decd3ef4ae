"""``make reader-screenshot``: a PNG of the news reader at ``/``, over the news catalogue's live bundle.

Serves the catalogue (``--catalogue``, default ``news``) in-process on a free port of
127.0.0.1 with its own settings, as ``recflow serve`` would, and takes ``/`` with headless
Chromium (``deployments.screenshot.take``): what a new reader sees first. Impressions are not
logged for this visit (a screenshot is no reader). Needs the catalogue's live bundle: after
``make demo``, or ``recflow run scrape``, ``recflow run harvest`` and ``recflow run nightly``
with ``--catalogue news``. Writes ``docs/news-reader.png`` by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployments.screenshot import take
from deployments.screenshot_docs import served
from serving.app import create_app
from serving.routers.feed import NEWS_SOURCES
from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings


def screenshot_reader(out: Path, settings: Settings, width: int = 1000, height: int = 1900) -> Path:
    """Serve the live bundle of the catalogue ``settings`` name, screenshot its ``/`` into
    ``out``; returns ``out``."""
    catalogue = settings.catalogue
    if settings.source.kind not in NEWS_SOURCES:
        raise SystemExit(
            f"catalogue {catalogue!r} has source {settings.source.kind!r}: its page is the item view, "
            f"not the news reader (news sources: {', '.join(NEWS_SOURCES)})"
        )
    if ArtifactStore(settings.bundles_dir).current_version() is None:
        raise SystemExit(
            f"catalogue {catalogue!r} has no live bundle under {settings.bundles_dir}; run `make demo`, "
            "or `recflow run scrape`, `recflow run harvest` and `recflow run nightly` with "
            f"--catalogue {catalogue}"
        )
    quiet = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"impressions": False})}
    )
    with served(create_app(quiet)) as url:
        return take(f"{url}/", out, width=width, height=height, wait_ms=10000)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/news-reader.png"))
    parser.add_argument("--catalogue", default="news", help="a catalogue whose source is news")
    args = parser.parse_args()
    print(screenshot_reader(args.out, catalogue_settings(args.catalogue)), file=sys.stdout)
