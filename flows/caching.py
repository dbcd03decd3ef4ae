"""Task caching keyed on content, never on wall time.

A task whose inputs hash to a key it has already finished under returns the stored result
instead of running again, so a retried or re-triggered flow run does not redo work that is
done. The key is made of content hashes (the training data's fingerprint, the parameters, the
warm-start source, the model code); results live beside the catalogue's warehouse
(``var/<catalogue>/task-cache``), so deleting the catalogue also forgets its cache.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from storage.settings import Settings

# The code whose change must invalidate a cached model: the models and the training logic.
_CODE_ROOT = Path(__file__).resolve().parents[1]
_CODE_GLOBS = ("models/*.py", "tasks/training.py", "tasks/train_models.py")


@cache
def code_fingerprint() -> str:
    """sha256 over the source files that shape a trained model (read once per process)."""
    digest = hashlib.sha256()
    for pattern in _CODE_GLOBS:
        for path in sorted(_CODE_ROOT.glob(pattern)):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def content_key(kind: str, *parts: Any) -> str:
    """A cache key from ``kind`` and JSON-serialisable content ``parts`` (plus the code's hash)."""
    payload = json.dumps([kind, code_fingerprint(), *parts], sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:40]}"


def cache_storage(settings: Settings) -> Path:
    """Where cached task results of ``settings``' catalogue are kept (Prefect reads a Path as
    local file-system result storage that needs no block saved on the server)."""
    path = (settings.catalogue_dir / "task-cache").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
