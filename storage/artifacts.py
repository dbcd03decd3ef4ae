"""The artifact store: immutable, versioned bundles and the ``CURRENT`` pointer.

A bundle is written into a hidden temporary directory and renamed into place only when
every file is complete and its checksum is in ``manifest.json``; ``CURRENT`` is replaced
with ``os.replace`` so a reader sees either the old or the new version, never half of one.
A crash at any point leaves ``CURRENT`` on the previous complete bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
CURRENT = "CURRENT"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or fails its checksums."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleInfo:
    """A published bundle as listed by :meth:`ArtifactStore.list`."""

    version: str
    path: Path
    manifest: dict[str, Any]
    is_current: bool


class ArtifactStore:
    """Bundles under ``root/<version>/`` and the ``root/CURRENT`` pointer."""

    def __init__(self, root: Path | str, keep: int = 5) -> None:
        self.root = Path(root)
        self.keep = keep

    # Reading ----------------------------------------------------------------------------
    def current_version(self) -> str | None:
        pointer = self.root / CURRENT
        if not pointer.exists():
            return None
        version = pointer.read_text().strip()
        return version or None

    def current_path(self) -> Path | None:
        version = self.current_version()
        return None if version is None else self.root / version

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.root / version / MANIFEST
        if not path.exists():
            raise BundleError(f"bundle {version!r} has no {MANIFEST} under {self.root}")
        return json.loads(path.read_text())

    def versions(self) -> list[str]:
        """Complete bundles, oldest first (versions sort by creation time)."""
        if not self.root.exists():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
        )

    def infos(self) -> list[BundleInfo]:
        current = self.current_version()
        return [BundleInfo(v, self.root / v, self.manifest(v), v == current) for v in self.versions()]

    def verify(self, version: str) -> None:
        """Raise :class:`BundleError` unless every file matches its manifest checksum."""
        manifest = self.manifest(version)
        base = self.root / version
        for rel, expected in manifest.get("checksums", {}).items():
            path = base / rel
            if not path.exists():
                raise BundleError(f"bundle {version}: file {rel} listed in manifest is missing")
            if file_sha256(path) != expected:
                raise BundleError(f"bundle {version}: checksum mismatch for {rel}")

    # Writing ----------------------------------------------------------------------------
    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A temporary directory to write a bundle into; removed if the block fails."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _new_version(self) -> str:
        """A name that sorts after every bundle ever issued here, so order == publish order.

        Names are ``<UTC second>-<counter>``; the last issued name is remembered in
        ``.last_version`` so a pruned bundle's name is never handed out again.
        """
        marker = self.root / ".last_version"
        floor = max([*self.versions(), marker.read_text().strip() if marker.exists() else ""])
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        version = f"{stamp}-000"
        if version <= floor:
            floor_stamp, _, floor_n = floor.partition("-")
            version = f"{max(stamp, floor_stamp)}-{int(floor_n or 0) + 1:03d}"
        marker.write_text(version + "\n")
        return version

    def commit(self, staged: Path, manifest: dict[str, Any], *, make_current: bool = True) -> str:
        """Checksum ``staged``, write its manifest, rename it into place, move ``CURRENT``.

        The manifest is written last inside the staging directory; the rename is atomic on one
        filesystem, so a listed bundle is always complete.
        """
        version = self._new_version()
        checksums = {
            str(p.relative_to(staged)): file_sha256(p)
            for p in sorted(staged.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        full = {
            **manifest,
            "version": version,
            "created": datetime.now(UTC).isoformat(),
            "checksums": checksums,
        }
        (staged / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
        fsync_dir(staged)
        final = self.root / version
        os.rename(staged, final)
        fsync_dir(self.root)
        if make_current:
            self.set_current(version)
        self.prune()
        return version

    def set_current(self, version: str) -> None:
        """Atomically point ``CURRENT`` at an existing, verified bundle."""
        if version not in self.versions():
            raise BundleError(f"no complete bundle {version!r} under {self.root}")
        self.verify(version)
        fd, tmp = tempfile.mkstemp(prefix=".CURRENT-", dir=self.root)
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / CURRENT)
        fsync_dir(self.root)

    def rollback(self, version: str | None = None) -> str:
        """Point ``CURRENT`` at ``version``, or at the bundle published before the live one."""
        versions = self.versions()
        if version is None:
            current = self.current_version()
            older = [v for v in versions if current is None or v < current]
            if not older:
                raise BundleError("no earlier bundle to roll back to")
            version = older[-1]
        self.set_current(version)
        return version

    def prune(self) -> list[str]:
        """Delete the oldest bundles beyond ``keep``; never the live one, nor stale staging < 1h."""
        current = self.current_version()
        versions = self.versions()
        removed: list[str] = []
        for v in versions[: max(0, len(versions) - self.keep)]:
            if v != current:
                shutil.rmtree(self.root / v, ignore_errors=True)
                removed.append(v)
        for stale in self.root.glob(".staging-*"):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        return removed


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new file's or a renamed bundle's name) durable: an fsync
    of the files alone does not survive a crash if the name they are reached by does not."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
