"""Bundles are published atomically, kept N deep, verified, and can be rolled back."""

from __future__ import annotations

import os
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
