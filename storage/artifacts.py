"""The artifact store: immutable, versioned bundles and the ``CURRENT`` pointer.

A bundle is written into a hidden temporary directory and renamed into place only when
every file is complete and its checksum is in ``manifest.json``; ``CURRENT`` is replaced
with ``os.replace`` so a reader sees either the old or the new version, never half of one.
A crash at any point leaves ``CURRENT`` on the previous complete bundle.

Durability: every file of a bundle and every directory in it is fsynced before the rename,
and the rename before ``CURRENT`` moves, so after a power cut ``CURRENT`` never names a
bundle whose contents did not reach the disk.

Permissions: a published bundle is readable by the other users a plain ``mkdir``/``open``
would let read it (``0o777``/``0o666`` less the umask: 0755 directories and 0644 files under
the usual umask 022, private under 077), so a service running as another user can read it.

Staging: each staging directory ``.staging-<token>`` has a lock file
``.staging-<token>.lock`` beside it, created and ``flock``-ed before the directory and held
until the directory is gone. :meth:`ArtifactStore.prune` removes a leftover whose lock it can
take (its writer is dead, whatever its age) and never one whose writer still holds the lock.
``flock`` works across processes and containers sharing a local filesystem; on NFS it
depends on the server's lock support.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
STAGING_PREFIX = ".staging-"
LOCK_SUFFIX = ".lock"
# Staging directories made before lock files existed are pruned only after this age.
LOCKLESS_STAGING_MAX_AGE_S = 3600


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
        """A temporary directory to write a bundle into; removed if the block fails.

        The lock file beside it is taken first and released last, so for as long as the
        directory can exist under its name a live writer holds the lock (see :meth:`prune`).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock_fd, tmp = self._locked_staging_name()
        lock_path = tmp.with_name(tmp.name + LOCK_SUFFIX)
        try:
            # Plain mkdir: the mode is 0o777 less the umask, as for any directory the user makes.
            tmp.mkdir()
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            os.close(lock_fd)  # releases the flock

    def _locked_staging_name(self) -> tuple[int, Path]:
        """Create and flock ``.staging-<token>.lock`` (writer's pid inside, for people)."""
        while True:
            tmp = self.root / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
            lock_path = tmp.with_name(tmp.name + LOCK_SUFFIX)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                still_ours = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                still_ours = False
            if not still_ours:  # a pruner took it between open and flock, and removed it
                os.close(fd)
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd, tmp

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

    def link_into(self, version: str, name: str, staged: Path) -> dict[str, str]:
        """Place file or directory ``name`` of published bundle ``version`` in ``staged`` as
        hard links to its files: what did not change since that bundle is neither written nor
        read again. Returns those files' checksums from that bundle's manifest, for
        :meth:`commit`'s ``linked``. A file that cannot be linked (another filesystem) is
        copied instead and left out of the returned checksums, so commit hashes and syncs it.

        Published files are never written in place, so a link shares immutable content;
        pruning either bundle removes one name of it, not the data."""
        source = self.root / version
        recorded = self.manifest(version).get("checksums", {})
        top = source / name
        if not top.exists():
            raise BundleError(f"bundle {version} has no {name} to reuse")
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        linked: dict[str, str] = {}
        for path in files:
            rel = str(path.relative_to(source))
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
                continue
            if rel in recorded:
                linked[rel] = recorded[rel]
        return linked

    def commit(
        self,
        staged: Path,
        manifest: dict[str, Any],
        *,
        make_current: bool = True,
        linked: dict[str, str] | None = None,
    ) -> str:
        """Checksum ``staged``, write its manifest, rename it into place, move ``CURRENT``.

        The manifest is written last inside the staging directory; the rename is atomic on one
        filesystem, so a listed bundle is always complete. ``linked``: files placed by
        :meth:`link_into`, with their checksums; they are already durable and keep the mode
        they were published with (they share it with the bundle they come from).
        """
        version = self._new_version()
        # The staging directory was made by a plain mkdir: its mode is what the umask allows a
        # new directory; files get the same less the execute bits (as a plain open would).
        dir_mode = staged.stat().st_mode & 0o777
        file_mode = dir_mode & 0o666
        checksums: dict[str, str] = {}
        for p in sorted(staged.rglob("*")):
            rel = str(p.relative_to(staged))
            if p.is_dir():
                p.chmod(dir_mode)
            elif linked and rel in linked:
                checksums[rel] = linked[rel]
            elif p.is_file() and p.name != MANIFEST:
                p.chmod(file_mode)
                checksums[rel] = fsync_file_sha256(p)
        full = {
            **manifest,
            "version": version,
            "created": datetime.now(UTC).isoformat(),
            "checksums": checksums,
        }
        with (staged / MANIFEST).open("w") as fh:
            fh.write(json.dumps(full, indent=2, sort_keys=True, default=str))
            fh.flush()
            os.fsync(fh.fileno())
        (staged / MANIFEST).chmod(file_mode)
        # Deepest first, so each directory's entries are durable before its parent's.
        for d in sorted((p for p in staged.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            fsync_dir(d)
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
        # Created like any file (0o666 less the umask), not mkstemp's 0600: readers may be
        # another user.
        tmp = self.root / f".CURRENT-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
        """Delete the oldest bundles beyond ``keep`` (never the live one) and staging leftovers
        whose writer is dead (never a live writer's)."""
        current = self.current_version()
        versions = self.versions()
        removed: list[str] = []
        for v in versions[: max(0, len(versions) - self.keep)]:
            if v != current:
                shutil.rmtree(self.root / v, ignore_errors=True)
                removed.append(v)
        self.prune_staging()
        return removed

    def prune_staging(self) -> list[Path]:
        """Remove staging directories whose writer has died; returns what was removed.

        A writer holds the flock on ``<dir>.lock`` from before the directory exists until
        after it is gone, so a lock this process can take belongs to a dead writer (or to one
        that has just finished). A directory without a lock file predates lock files: it is
        removed once it is older than an hour, as before.
        """
        if not self.root.exists():
            return []
        removed: list[Path] = []
        for lock_path in self.root.glob(f"{STAGING_PREFIX}*{LOCK_SUFFIX}"):
            try:
                fd = os.open(lock_path, os.O_RDONLY)  # flock needs no write access
            except FileNotFoundError:  # its writer finished meanwhile
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live writer
                    continue
                leftover = lock_path.with_name(lock_path.name.removesuffix(LOCK_SUFFIX))
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
                    removed.append(leftover)
                lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        for stale in self.root.glob(f"{STAGING_PREFIX}*"):
            if (
                stale.is_dir()
                and not stale.with_name(stale.name + LOCK_SUFFIX).exists()
                and time.time() - stale.stat().st_mtime > LOCKLESS_STAGING_MAX_AGE_S
            ):
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
        return removed


def fsync_file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, after fsyncing its contents (one open for both)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(fh.fileno())
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new file's or a renamed bundle's name) durable: an fsync
    of the files alone does not survive a crash if the name they are reached by does not."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
