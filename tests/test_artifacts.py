"""Bundles are published atomically, kept N deep, verified, and can be rolled back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from storage.artifacts import ArtifactStore, BundleError


def _publish(store: ArtifactStore, payload: str, **kwargs: bool) -> str:
    with store.staging() as staged:
        (staged / "model.bin").write_text(payload)
        return store.commit(staged, {"model": {"name": "test"}}, **kwargs)


def test_publish_moves_current_and_records_checksums(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    v1 = _publish(store, "one")
    assert store.current_version() == v1
    assert "model.bin" in store.manifest(v1)["checksums"]
    store.verify(v1)


def test_crash_while_writing_leaves_current_on_previous_bundle(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    v1 = _publish(store, "one")
    with pytest.raises(RuntimeError), store.staging() as staged:
        (staged / "model.bin").write_text("half written")
        raise RuntimeError("killed mid-way")
    assert store.current_version() == v1
    assert store.versions() == [v1]
    assert not list(tmp_path.glob(".staging-*"))


def test_crash_before_pointer_swap_leaves_current_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path)
    v1 = _publish(store, "one")

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut before CURRENT was replaced")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _publish(store, "two")
    monkeypatch.undo()
    assert store.current_version() == v1
    assert (tmp_path / "CURRENT").read_text().strip() == v1


def test_retention_keeps_last_n_and_never_the_live_one(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, keep=2)
    first = _publish(store, "0")
    for i in range(1, 4):
        _publish(store, str(i), make_current=False)
    store.set_current(store.versions()[-1])
    store.prune()
    assert len(store.versions()) == 2
    assert first not in store.versions()


def test_rollback_and_verify(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    v1 = _publish(store, "one")
    v2 = _publish(store, "two")
    assert store.rollback() == v1
    assert store.current_version() == v1
    store.set_current(v2)
    (tmp_path / v1 / "model.bin").write_text("tampered")
    with pytest.raises(BundleError, match="checksum mismatch"):
        store.set_current(v1)
    assert store.current_version() == v2
    with pytest.raises(BundleError, match="no complete bundle"):
        store.set_current("does-not-exist")


def test_versions_are_never_reused_after_pruning(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, keep=1)
    issued = [_publish(store, str(i)) for i in range(4)]
    assert issued == sorted(issued) and len(set(issued)) == 4
    assert store.versions() == [issued[-1]]


def _publish_tree(store: ArtifactStore) -> str:
    """A bundle with a file at the top and one in a sub-directory, like a model checkpoint."""
    with store.staging() as staged:
        (staged / "model.bin").write_bytes(b"weights")
        (staged / "index").mkdir()
        (staged / "index" / "ann.bin").write_bytes(b"graph")
        return store.commit(staged, {"model": {"name": "test"}})


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_published_bundle_is_as_readable_as_the_umask_allows(
    tmp_path: Path, umask: int, dir_mode: int, file_mode: int
) -> None:
    """Another service user (the HTTP service) reads what the pipeline publishes: bundles are
    not mkdtemp's private 0700 nor CURRENT mkstemp's 0600; a strict umask still wins."""
    old = os.umask(umask)
    try:
        store = ArtifactStore(tmp_path / "bundles")
        version = _publish_tree(store)
    finally:
        os.umask(old)
    bundle = store.root / version
    assert {d.name: d.stat().st_mode & 0o777 for d in (bundle, bundle / "index")} == {
        version: dir_mode,
        "index": dir_mode,
    }
    files = [
        bundle / "model.bin",
        bundle / "index" / "ann.bin",
        bundle / "manifest.json",
        store.root / "CURRENT",
    ]
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: file_mode for f in files}


def test_every_file_and_directory_is_fsynced_before_the_rename_and_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut after the rename must not leave a listed bundle with empty files: every
    file's contents and every directory's entries reach the disk before the rename, and the
    rename before CURRENT moves."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(src)))
        real_rename(src, dst)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    store = ArtifactStore(tmp_path)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    version = _publish_tree(store)
    monkeypatch.undo()

    (rename_at,) = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    staged = Path(events[rename_at][1])
    synced_before = {Path(path) for kind, path in events[:rename_at] if kind == "fsync"}
    expected = {staged / rel for rel in ("model.bin", "index/ann.bin", "manifest.json", "index")} | {staged}
    assert expected <= synced_before, sorted(map(str, expected - synced_before))
    current_at = events.index(("replace", str(tmp_path / "CURRENT")))
    assert ("fsync", str(tmp_path)) in events[rename_at:current_at]  # the new name is durable
    assert store.current_version() == version


_WRITER = """
import sys, time
from pathlib import Path
from storage.artifacts import ArtifactStore
with ArtifactStore(sys.argv[1]).staging() as staged:
    (staged / "model.bin").write_text("half written")
    print(staged, flush=True)
    time.sleep(600)
"""


def test_staging_leftover_of_a_dead_writer_is_pruned_at_once_and_a_live_ones_never(tmp_path: Path) -> None:
    """Staging is judged by its writer's lock, not its age: a bundle being written for hours is
    kept, and the leftover of a writer killed a second ago goes at the next prune."""
    import subprocess
    import sys

    store = ArtifactStore(tmp_path)
    v1 = _publish(store, "one")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert writer.stdout is not None
        staged = Path(writer.stdout.readline().strip())
        assert staged.is_dir() and staged.name.startswith(".staging-")
        old = time.time() - 7200  # older than the former one-hour rule: age must not matter
        os.utime(staged, (old, old))
        _publish(store, "two")  # commit prunes
        store.prune()
        assert (staged / "model.bin").read_text() == "half written"
    finally:
        writer.kill()  # SIGKILL: no finally block runs in the writer
        writer.wait()
    assert staged.is_dir()  # the writer left it behind
    store.prune()
    assert not staged.exists()
    assert not list(tmp_path.glob(".staging-*"))
    assert store.versions()[0] == v1 and store.current_version() == store.versions()[-1]


def test_staging_directory_without_a_lock_file_waits_an_hour(tmp_path: Path) -> None:
    """A leftover from before lock files has no writer to ask: it is removed after an hour."""
    store = ArtifactStore(tmp_path)
    fresh, old = tmp_path / ".staging-fresh", tmp_path / ".staging-old"
    fresh.mkdir()
    old.mkdir()
    then = time.time() - 2 * 3600
    os.utime(old, (then, then))
    assert store.prune_staging() == [old]
    assert fresh.is_dir() and not old.exists()


def test_a_linked_file_is_shared_with_its_bundle_and_survives_its_pruning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path, keep=1)
    with store.staging() as staged:
        (staged / "model").mkdir()
        (staged / "model" / "weights.bin").write_bytes(b"w" * 1000)
        (staged / "catalog.bin").write_text("night 1")
        v1 = store.commit(staged, {"model": {"name": "test"}})
    recorded = store.manifest(v1)["checksums"]["model/weights.bin"]
    with store.staging() as staged:
        linked = store.link_into(v1, "model", staged)
        assert (staged / "model" / "weights.bin").stat().st_ino == (
            tmp_path / v1 / "model" / "weights.bin"
        ).stat().st_ino
        (staged / "catalog.bin").write_text("night 2")
        v2 = store.commit(staged, {"model": {"name": "test"}}, linked=linked)
    assert linked == {"model/weights.bin": recorded}
    assert store.manifest(v2)["checksums"]["model/weights.bin"] == recorded
    assert v1 not in store.versions()  # pruned (keep=1): the data stays with the second name
    store.verify(v2)
    assert (tmp_path / v2 / "model" / "weights.bin").read_bytes() == b"w" * 1000

    # another filesystem: copied, then hashed and synced like a written file
    def no_links(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    with store.staging() as staged:
        assert store.link_into(v2, "model", staged) == {}
        v3 = store.commit(staged, {"model": {"name": "test"}})
    assert (tmp_path / v3 / "model" / "weights.bin").stat().st_nlink == 1
    store.verify(v3)
    with pytest.raises(BundleError, match="no index to reuse"), store.staging() as staged:
        store.link_into(v3, "index", staged)
