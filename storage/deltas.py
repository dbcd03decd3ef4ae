"""Incremental updates (deltas) of a published bundle: stories scraped since it was built.

Why deltas: a bundle is rebuilt at night, but news is worth reading only while it is fresh.
A delta carries what the live bundle lacks (new stories' metadata and text vectors, and the
latest daily pool) so the service can serve them within a minute of the scrape, without
retraining. The model is untouched: new stories are ranked by text in the feed's freshness
slot until the next nightly bundle takes them in.

Layout, beside the bundles it extends::

    <bundles>/deltas/<base version>/<seq>/{items.json, vectors.npy, pool.json, manifest.json}
    <bundles>/deltas/<base version>/LATEST      (the sequence number the service should serve)

Each delta is **cumulative** (every story the base lacks, not only the last scrape's), so
the service needs just the latest one and a refused delta never breaks a chain. A delta is
written like a bundle (:mod:`storage.artifacts`): into a staging directory, every file
fsynced and checksummed into ``manifest.json``, renamed into place, then ``LATEST`` replaced
atomically; a crash leaves ``LATEST`` on the previous complete delta. Writers of one base
take an ``flock`` so two flows (a scrape and the harvest) never issue the same number.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from storage.artifacts import MANIFEST, ArtifactStore, BundleError, file_sha256, fsync_dir, fsync_file_sha256

DELTAS = "deltas"
LATEST = "LATEST"
ITEMS = "items.json"
VECTORS = "vectors.npy"
POOL = "pool.json"
KEEP_DELTAS = 3
"""Complete deltas kept per base (the latest is what serves; older ones are for inspection)."""
ITEM_FIELDS = ("item_id", "title", "categories", "summary", "link", "outlet", "published_s")


class DeltaError(BundleError):
    """A delta is missing, incomplete, fails its checksums or does not fit its base bundle."""


@dataclass(frozen=True)
class Delta:
    """One complete delta, read into memory."""

    base_version: str
    seq: int
    manifest: dict[str, Any]
    items: list[dict[str, Any]]
    """New stories, each with :data:`ITEM_FIELDS` (``published_s``: epoch seconds or None)."""
    vectors: np.ndarray
    """(len(items), d) float32 text vectors, row ``i`` for ``items[i]``."""
    pool: dict[str, Any] | None
    """``{"pool_date", "harvested_s", "rows": [{"item_id", "topic", "reason"}...]}`` or None."""


def delta_dir(store: ArtifactStore, base_version: str) -> Path:
    return store.root / DELTAS / base_version


def latest_seq(store: ArtifactStore, base_version: str) -> int | None:
    """The sequence number ``LATEST`` names for ``base_version``, or None when there is none."""
    pointer = delta_dir(store, base_version) / LATEST
    try:
        text = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _name(seq: int) -> str:
    return f"{seq:06d}"


def write_delta(
    store: ArtifactStore,
    base_version: str,
    items: list[dict[str, Any]],
    vectors: np.ndarray,
    pool: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Write, checksum and publish the next delta of ``base_version``; returns its sequence."""
    if base_version not in store.versions():
        raise DeltaError(f"no complete bundle {base_version!r} under {store.root} to extend")
    if len(items) != len(vectors):
        raise DeltaError(f"{len(items)} items but {len(vectors)} vectors")
    root = delta_dir(store, base_version)
    root.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        done = [int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / MANIFEST).exists()]
        seq = max(done, default=0) + 1
        staged = root / f".staging-{secrets.token_hex(6)}"
        staged.mkdir()
        try:
            (staged / ITEMS).write_text(json.dumps([{f: it.get(f) for f in ITEM_FIELDS} for it in items]))
            np.save(staged / VECTORS, np.ascontiguousarray(vectors, dtype=np.float32))
            if pool is not None:
                (staged / POOL).write_text(json.dumps(pool))
            checksums = {p.name: fsync_file_sha256(p) for p in sorted(staged.iterdir())}
            manifest = {
                **(extra or {}),
                "base_version": base_version,
                "seq": seq,
                "created": datetime.now(UTC).isoformat(),
                "items": len(items),
                "pool_date": pool["pool_date"] if pool else None,
                "checksums": checksums,
            }
            with (staged / MANIFEST).open("w") as fh:
                fh.write(json.dumps(manifest, indent=2, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(staged)
            os.rename(staged, root / _name(seq))
            fsync_dir(root)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        tmp = root / f".LATEST-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{seq}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / LATEST)
        fsync_dir(root)
        for old in sorted(done)[: max(0, len(done) + 1 - KEEP_DELTAS)]:
            shutil.rmtree(root / _name(old), ignore_errors=True)
    finally:
        os.close(lock_fd)
    prune_deltas(store)
    return seq


def prune_deltas(store: ArtifactStore) -> list[str]:
    """Remove the deltas of bundles no longer in the store (a nightly superseded them)."""
    parent = store.root / DELTAS
    if not parent.is_dir():
        return []
    live = set(store.versions())
    removed = [p.name for p in parent.iterdir() if p.is_dir() and p.name not in live]
    for name in removed:
        shutil.rmtree(parent / name, ignore_errors=True)
    return removed


def read_delta(store: ArtifactStore, base_version: str, seq: int) -> Delta:
    """Verify a delta's checksums and read it; :class:`DeltaError` for anything wrong."""
    path = delta_dir(store, base_version) / _name(seq)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise DeltaError(f"delta {base_version}+{seq}: unreadable {MANIFEST} ({exc})") from exc
    if manifest.get("base_version") != base_version or manifest.get("seq") != seq:
        raise DeltaError(
            f"delta {base_version}+{seq}: its manifest names "
            f"{manifest.get('base_version')}+{manifest.get('seq')}"
        )
    checksums = manifest.get("checksums") or {}
    for required in (ITEMS, VECTORS):
        if required not in checksums:
            raise DeltaError(f"delta {base_version}+{seq}: {required} is not in its manifest")
    for rel, expected in checksums.items():
        file = path / rel
        if not file.is_file():
            raise DeltaError(f"delta {base_version}+{seq}: file {rel} listed in manifest is missing")
        if file_sha256(file) != expected:
            raise DeltaError(f"delta {base_version}+{seq}: checksum mismatch for {rel}")
    items = json.loads((path / ITEMS).read_text())
    vectors = np.load(path / VECTORS)
    if vectors.ndim != 2 or vectors.shape[0] != len(items):
        raise DeltaError(f"delta {base_version}+{seq}: {vectors.shape} vectors for {len(items)} items")
    pool = json.loads((path / POOL).read_text()) if POOL in checksums else None
    return Delta(base_version, seq, manifest, items, np.asarray(vectors, dtype=np.float32), pool)
