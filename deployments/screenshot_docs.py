"""``python -m deployments.screenshot_docs``: a PNG of the service's ``/docs`` page, rendered offline.

Starts the service in-process on a free port of 127.0.0.1 (with an empty home: the docs need
no bundle) and takes the page with headless Chromium (``deployments.screenshot.take``), whose
flags keep it off the network. Swagger UI's assets come from the service itself
(``serving.routers.docs``), so the page renders without internet. Writes
``docs/openapi-docs.png`` by default.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from deployments.screenshot import take
from serving.app import create_app
from storage.settings import Settings


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in a thread; yields its base URL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 180  # a live bundle loads first
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start")
                time.sleep(0.01)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


def screenshot_docs(
    out: Path, width: int = 1280, height: int = 1400, page: str = "/docs", settings: Settings | None = None
) -> Path:
    """Serve a fresh app, screenshot ``page`` into ``out``, stop the app; returns ``out``.

    ``settings``: serve that home's live bundle (pages that show data, e.g. ``/movies``);
    default: an empty home."""
    with (
        tempfile.TemporaryDirectory(prefix="recflow-docs-") as home,
        served(create_app(settings if settings is not None else Settings(home=Path(home)))) as url,
    ):
        return take(f"{url}{page}", out, width=width, height=height, wait_ms=10000)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/openapi-docs.png"))
    parser.add_argument("--page", default="/docs", help="/docs (Swagger UI) or /redoc")
    parser.add_argument("--height", type=int, default=1400, help="window height in pixels")
    parser.add_argument(
        "--live", action="store_true", help="serve the configured catalogue's live bundle (for /movies)"
    )
    args = parser.parse_args()
    settings = Settings() if args.live else None
    print(screenshot_docs(args.out, height=args.height, page=args.page, settings=settings), file=sys.stdout)
