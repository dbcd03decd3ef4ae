"""``make ui-screenshot``: a PNG of the Prefect UI's deployments page, taken in headless Chromium.

Needs ``make ui`` running and Debian's chromium (``make ui-screenshot`` installs it). The
flags keep Chromium off the network it cannot reach here (background fetches, updates).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def take(url: str, out: Path, width: int = 1440, height: int = 900, wait_ms: int = 15000) -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise FileNotFoundError("chromium not found; install Debian's package: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recflow-chromium-") as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out.resolve()}",
            url,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-1000:]}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:4200/deployments")
    parser.add_argument("--out", type=Path, default=Path("docs/prefect-deployments.png"))
    args = parser.parse_args()
    print(take(args.url, args.out), file=sys.stdout)
