"""Production code does not load the demo: importing it, or scraping real feeds, leaves ``demo``
out of the interpreter (it is loaded only for the embedded default feed list or to serve it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("tasks", "flows", "serving", "storage", "expectations", "models", "deployments")

SCRIPT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    imported = []
    for name in {packages!r}:
        package = importlib.import_module(name)
        imported.append(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    after_import = sorted(m for m in sys.modules if m == "demo" or m.startswith("demo."))

    from storage.settings import FeedsSettings
    from tasks.scrape import configured_feeds, ensure_demo_server

    real = FeedsSettings(feeds=[{{"url": "https://news.example/feed.xml", "name": "News"}}])
    assert [f.name for f in configured_feeds(real)] == ["News"]
    assert ensure_demo_server(real) is None
    after_real_feeds = sorted(m for m in sys.modules if m == "demo" or m.startswith("demo."))

    default = configured_feeds(FeedsSettings())
    print(json.dumps({{"imported": imported, "after_import": after_import,
                      "after_real_feeds": after_real_feeds, "default_feeds": len(default),
                      "demo_loaded_for_default": "demo.feeds" in sys.modules}}))
    """
)


def test_production_modules_never_import_demo() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(packages=PRODUCTION)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"tasks.scrape.fetch", "flows.scrape", "deployments.cli", "serving.app"} <= set(report["imported"])
    assert report["after_import"] == []
    assert report["after_real_feeds"] == []
    # The embedded default is the demo outlets: only then is the demo loaded, lazily.
    assert report["default_feeds"] == 26 and report["demo_loaded_for_default"]
