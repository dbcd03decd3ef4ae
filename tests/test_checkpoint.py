"""Warm start across a grown catalogue and checkpoint merging, on real nextitem-mf checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import histories_to_csr
from models.checkpoint import (
    CheckpointError,
    grow_state,
    load_meta,
    load_state,
    merge_metadata,
    merge_state_dicts,
)
from models.nextitem import NextItemMFModel
from models.registry import load_model

torch.set_num_threads(1)


def histories(n_users: int, item_ids: list[str], seed: int) -> list[np.ndarray]:
    """Users drifting through the catalogue in order, so the next item is learnable."""
    rng = np.random.default_rng(seed)
    n = len(item_ids)
    out = []
    for _ in range(n_users):
        start = int(rng.integers(0, n))
        out.append((start + np.arange(8) + rng.integers(0, 2, 8).cumsum()) % n)
    return [h.astype(np.int64) for h in out]


def fit(item_ids: list[str], seed: int, dim: int = 8, epochs: int = 2, data_seed: int = 0) -> NextItemMFModel:
    hist = histories(40, item_ids, data_seed)
    model = NextItemMFModel(dim=dim, window=4, epochs=epochs, seed=seed, progress=False)
    model.fit(histories_to_csr(hist, len(item_ids)), hist)
    return model


OLD_ITEMS = [str(100 + i) for i in range(20)]
# Two items left, five arrived, the rest persist in a different order.
NEW_ITEMS = [*reversed(OLD_ITEMS[2:]), "900", "901", "902", "903", "904"]


def test_grow_keeps_learned_rows_and_adds_new_ones(tmp_path: Path) -> None:
    old = fit(OLD_ITEMS, seed=1)
    old.save(tmp_path / "old")
    state = load_state(tmp_path / "old")
    fresh_model = NextItemMFModel(dim=8, window=4, epochs=0, seed=5, progress=False)
    fresh = fresh_model.initial_state(0, len(NEW_ITEMS))
    grown, report = grow_state(
        state, old.id_tables(), {"item": OLD_ITEMS}, {"item": NEW_ITEMS}, fresh_state=fresh
    )
    assert grown["item_in.weight"].shape == (len(NEW_ITEMS) + 1, 8)
    assert grown["item_out.weight"].shape == (len(NEW_ITEMS), 8)
    assert grown["item_bias"].shape == (len(NEW_ITEMS),)
    assert report.tables["item_in.weight"] == {"kept": 18, "new": 5, "dropped": 2}
    for new_idx, item in enumerate(NEW_ITEMS):
        if item in OLD_ITEMS:
            old_idx = OLD_ITEMS.index(item)
            assert torch.equal(grown["item_in.weight"][1 + new_idx], state["item_in.weight"][1 + old_idx])
            assert torch.equal(grown["item_out.weight"][new_idx], state["item_out.weight"][old_idx])
            assert grown["item_bias"][new_idx] == state["item_bias"][old_idx]
        else:
            assert torch.equal(grown["item_in.weight"][1 + new_idx], fresh["item_in.weight"][1 + new_idx])
            assert torch.equal(grown["item_out.weight"][new_idx], fresh["item_out.weight"][new_idx])
    assert torch.equal(grown["item_in.weight"][0], state["item_in.weight"][0])  # padding row

    # The model really starts from the grown state: zero epochs leave it untouched.
    warm = NextItemMFModel(dim=8, window=4, epochs=0, seed=5, progress=False)
    warm.set_initial_state(grown)
    hist = histories(10, NEW_ITEMS, 3)
    warm.fit(histories_to_csr(hist, len(NEW_ITEMS)), hist)
    assert warm.module is not None
    for key, value in warm.module.state_dict().items():
        assert torch.equal(value.cpu(), grown[key]), key


def test_grow_without_fresh_state_draws_new_rows_and_checks_sizes() -> None:
    old = fit(OLD_ITEMS, seed=1)
    assert old.module is not None
    state = {k: v.cpu() for k, v in old.module.state_dict().items()}
    grown, _ = grow_state(state, old.id_tables(), {"item": OLD_ITEMS}, {"item": NEW_ITEMS}, seed=3)
    new_rows = grown["item_out.weight"][-5:]
    assert torch.isfinite(new_rows).all() and new_rows.std() > 0
    again, _ = grow_state(state, old.id_tables(), {"item": OLD_ITEMS}, {"item": NEW_ITEMS}, seed=3)
    assert torch.equal(again["item_out.weight"], grown["item_out.weight"])  # seeded
    with pytest.raises(
        CheckpointError,
        match=r"(item_in\.weight: 21|item_out\.weight: 20|item_bias: 20) rows, expected [01] special rows \+ 19 ids",
    ):
        grow_state(state, old.id_tables(), {"item": OLD_ITEMS[:19]}, {"item": NEW_ITEMS})
    with pytest.raises(CheckpointError, match="no user ids"):
        grow_state({"u.weight": torch.zeros(3, 2)}, {"u.weight": ("user", 0)}, {"item": []}, {"item": []})


def test_user_tables_grow_by_user_id() -> None:
    state = {"user_emb.weight": torch.arange(8, dtype=torch.float32).reshape(4, 2), "mlp.bias": torch.ones(3)}
    grown, report = grow_state(
        state, {"user_emb.weight": ("user", 1)}, {"user": ["a", "b", "c"]}, {"user": ["c", "z", "a"]}, seed=0
    )
    assert grown["user_emb.weight"].shape == (4, 2)
    assert grown["user_emb.weight"][0].tolist() == [0.0, 1.0]  # special row
    assert grown["user_emb.weight"][1].tolist() == [6.0, 7.0]  # c
    assert grown["user_emb.weight"][3].tolist() == [2.0, 3.0]  # a
    assert torch.equal(grown["mlp.bias"], state["mlp.bias"]) and report.copied == ["mlp.bias"]


def test_merge_averages_matching_tensors_and_keeps_the_anchor_where_shapes_differ(tmp_path: Path) -> None:
    a, b = fit(OLD_ITEMS, seed=1), fit(OLD_ITEMS, seed=2)
    wide = fit(OLD_ITEMS, seed=3, dim=12)  # every embedding has another shape
    for name, model in (("a", a), ("b", b), ("wide", wide)):
        model.save(tmp_path / name)
    sa, sb, sw = (load_state(tmp_path / n) for n in ("a", "b", "wide"))
    assert not torch.equal(sa["item_out.weight"], sb["item_out.weight"])  # two different fits

    result = merge_state_dicts([sa, sb, sw], weights=[3.0, 1.0, 5.0], anchor=0)
    for key in ("item_in.weight", "item_out.weight"):
        assert torch.allclose(result.state[key], 0.75 * sa[key] + 0.25 * sb[key], atol=1e-6)
        assert result.contributors[key] == 2
    # item_bias has the same shape in all three: averaged over all three.
    expected_bias = (3 * sa["item_bias"] + sb["item_bias"] + 5 * sw["item_bias"]) / 9
    assert torch.allclose(result.state["item_bias"], expected_bias, atol=1e-6)
    # The wide model as anchor: nothing else matches its embeddings, they stay its own.
    wide_anchor = merge_state_dicts([sa, sb, sw], weights=[1, 1, 1], anchor=2)
    assert torch.equal(wide_anchor.state["item_out.weight"], sw["item_out.weight"])
    assert "item_out.weight" in wide_anchor.kept_anchor

    # A merged checkpoint loads and scores like any saved model.
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    torch.save(result.state, merged_dir / "state.pt")
    meta = merge_metadata([load_meta(tmp_path / "a"), load_meta(tmp_path / "b")], ["a", "b"], [3.0, 1.0])
    import json

    (merged_dir / "model.json").write_text(json.dumps(meta))
    merged = load_model(merged_dir)
    scores = merged.score([np.array([0, 1, 2])])
    assert scores.shape == (1, len(OLD_ITEMS)) and np.isfinite(scores).all()
    assert load_meta(merged_dir)["merge"]["inputs"][1] == {
        "source": "b",
        "weight": 1.0,
        "name": "nextitem-mf",
        "params": b.params(),
    }


def test_merge_rejects_bad_weights() -> None:
    s = {"w": torch.ones(2)}
    with pytest.raises(CheckpointError, match="2 weights given for 1 checkpoints"):
        merge_state_dicts([s], [1, 2])
    with pytest.raises(CheckpointError, match="positive sum"):
        merge_state_dicts([s, s], [0, 0])
    with pytest.raises(CheckpointError, match="at least one"):
        merge_state_dicts([])


def test_same_seed_same_checkpoint_and_curve(tmp_path: Path) -> None:
    first, second = fit(OLD_ITEMS, seed=7), fit(OLD_ITEMS, seed=7)
    assert first.module is not None and second.module is not None
    for key, value in first.module.state_dict().items():
        assert torch.equal(value, second.module.state_dict()[key])
    curve = first.training_curve()
    assert [row["epoch"] for row in curve] == [1, 2]
    assert all(row["loss"] > 0 and row["val_ndcg10"] is not None for row in curve)
    assert [r["loss"] for r in curve] == [r["loss"] for r in second.training_curve()]


def test_merge_aligns_rows_by_item_id_across_catalogues(tmp_path: Path) -> None:
    from tasks.merge import MergeInput, merge_into

    other_items = [*reversed(OLD_ITEMS[5:]), "900", "901"]  # 15 shared items moved, 5 missing, 2 new
    a, b = fit(OLD_ITEMS, seed=1), fit(other_items, seed=2)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    inputs = [
        MergeInput("a", tmp_path / "a", tmp_path / "a", {"item": OLD_ITEMS, "user": []}),
        MergeInput("b", tmp_path / "b", tmp_path / "b", {"item": other_items, "user": []}),
    ]
    merged = merge_into(inputs, [1.0, 1.0], 0, "serve", tmp_path / "merged")
    sa, sb, sm = load_state(tmp_path / "a"), load_state(tmp_path / "b"), load_state(tmp_path / "merged")
    assert sm["item_out.weight"].shape == sa["item_out.weight"].shape  # the anchor's catalogue
    for idx, item in enumerate(OLD_ITEMS):
        if item in other_items:
            expected = (sa["item_out.weight"][idx] + sb["item_out.weight"][other_items.index(item)]) / 2
        else:  # b has no row for it: the anchor's own row is averaged with itself
            expected = sa["item_out.weight"][idx]
        assert torch.allclose(sm["item_out.weight"][idx], expected, atol=1e-6), item
    assert set(merged.averaged) == {"item_in.weight", "item_out.weight", "item_bias"}
    assert load_model(tmp_path / "merged").score([np.array([1, 2])]).shape == (1, len(OLD_ITEMS))
