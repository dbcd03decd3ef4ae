"""The hybrid two-tower retriever on a real slice of MovieLens-100K."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.registry import build_model, load_model
from models.two_tower import (
    SPECIAL_ROWS,
    TwoTowerModel,
    accidental_hits,
    grow_id_tables,
    info_nce,
    make_windows,
)
from tasks.training import SplitData, evaluate, prepare_model, train_and_evaluate
from tests.slice_data import load_slice

pytestmark = pytest.mark.slow  # trains torch models

torch.set_num_threads(1)

FAST = {"dim": 32, "max_len": 20, "layers": 1, "epochs": 6, "patience": 6, "progress": False, "lr": 3e-3}
# the slice has 120 users: every window of every history per epoch, in small batches
SLICE = {"windows": "all", "batch_size": 32}


@pytest.fixture(scope="module")
def data(ml100k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    return load_slice(ml100k_slice, tmp_path_factory.mktemp("tt"))


@pytest.fixture(scope="module")
def fitted(data: SplitData) -> TwoTowerModel:
    result = train_and_evaluate(
        data, "two-tower", {**FAST, **SLICE, "encoder": "attention", "epochs": 10}, [10]
    )
    assert isinstance(result.model, TwoTowerModel)
    return result.model


def test_learns_and_beats_popularity_on_the_slice(data: SplitData, fitted: TwoTowerModel) -> None:
    curve = fitted.training_curve()
    assert [c["epoch"] for c in curve] == list(range(1, len(curve) + 1))
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.3  # InfoNCE over 1,682 items starts near log(1682)=7.4
    assert all(set(c) >= {"epoch", "loss", "val_ndcg10", "seconds"} for c in curve)
    pop = train_and_evaluate(data, "popularity", {}, [10])
    ours = evaluate(fitted, data, "valid", [10])
    assert ours["ndcg@10"] > pop.valid["ndcg@10"]
    assert max(c["val_ndcg10"] for c in curve) == pytest.approx(ours["ndcg@10"], abs=1e-4)


def test_save_load_round_trip_scores_equal(data: SplitData, fitted: TwoTowerModel, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.json", "state.pt"}
    loaded = load_model(tmp_path / "m")
    histories = data.histories(("train", "valid"))[:25]
    assert np.allclose(loaded.score(histories), fitted.score(histories), atol=1e-5)
    items = np.array([5, 0, 77, 1500])
    part = loaded.score(histories, items)
    assert part.shape == (25, 4) and np.allclose(part, fitted.score(histories)[:, items], atol=1e-5)
    users, table = loaded.encode_users(histories), loaded.encode_items()
    assert users.dtype == table.dtype == np.float32 and table.shape == (data.n_items, 33)  # + bias
    assert np.allclose(users @ table.T, loaded.score(histories), atol=1e-4)
    assert np.allclose(np.linalg.norm(table[:, :-1], axis=1), 1.0, atol=1e-4)


def test_cold_items_are_served_by_their_text(data: SplitData, fitted: TwoTowerModel) -> None:
    counts = np.bincount(np.concatenate(data.train), minlength=data.n_items)
    cold = np.flatnonzero(counts == 0)
    assert len(cold) > 50  # the slice's 120 users never rated most of the catalogue
    net = fitted.net
    assert net is not None and not bool(net.items.warm[torch.from_numpy(cold)].any())
    table = fitted.encode_items()[:, :-1]
    # a cold item's vector depends on its text only: change the text, the vector moves;
    # its ID row is not used (the frozen cold-start row stays zero)
    assert torch.count_nonzero(net.items.id_emb.weight[:SPECIAL_ROWS]) == 0
    original = net.items.text.clone()
    with torch.no_grad():
        net.items.text[cold[0]] = net.items.text[cold[1]]
    moved = fitted.encode_items()[:, :-1]
    with torch.no_grad():
        net.items.text.copy_(original)
    assert np.allclose(moved[cold[0]], table[cold[1]], atol=1e-5)
    assert not np.allclose(table[cold[0]], table[cold[1]], atol=1e-3)
    # text similarity carries over: a cold item lies closer to its text neighbours than to random items
    text = original.numpy()
    sims = text[cold] @ text.T
    sims[np.arange(len(cold)), cold] = -np.inf
    nearest = sims.argmax(axis=1)
    near = np.sum(table[cold] * table[nearest], axis=1)
    rng = np.random.default_rng(0)
    far = np.sum(table[cold] * table[rng.integers(0, data.n_items, len(cold))], axis=1)
    assert np.mean(near > far) > 0.55  # 0.5 would be text-blind


@pytest.mark.parametrize(
    ("fusion", "encoder"),
    [("gate", "gru"), ("sum", "gru"), ("concat", "gru"), ("adaptive-mimic", "gru"), ("gate", "lstm")],
)
def test_every_fusion_and_encoder_trains(data: SplitData, fusion: str, encoder: str) -> None:
    model = build_model("two-tower", **{**FAST, "fusion": fusion, "encoder": encoder, "epochs": 3})
    prepare_model(model, data)
    model.fit(data.matrix(("train",)), data.train)  # no validation set: holds out each last item
    curve = model.training_curve()
    assert len(curve) == 3 and curve[-1]["loss"] < curve[0]["loss"]
    scores = model.score(data.train[:4])
    assert scores.shape == (4, data.n_items) and np.isfinite(scores).all()


def test_sampled_negatives_with_logq_train(data: SplitData) -> None:
    model = build_model(
        "two-tower", **{**FAST, "negatives": "sampled", "sampled_negatives": 256, "epochs": 3}
    )
    prepare_model(model, data)
    model.set_validation(data.train, data.valid)
    model.fit(data.matrix(("train",)), data.train)
    curve = model.training_curve()
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert max(c["val_ndcg10"] for c in curve) > 0


def test_accidental_hits_are_masked_on_a_crafted_batch() -> None:
    targets = torch.tensor([3, 5, 3])
    candidates = torch.tensor([3, 5, 7, 3, 5])  # in-batch targets 3, 5 then sampled 7, 3, 5
    mask = accidental_hits(targets, candidates)
    expected = torch.tensor(
        [
            [False, False, False, True, False],  # row 0: target 3 at column 0; column 3 is an accidental hit
            [False, False, False, False, True],  # row 1: target 5 at column 1; column 4 is a hit
            [False, False, False, True, False],
        ]
    )
    assert torch.equal(mask, expected)
    # the masked loss equals the loss over the distinct candidates only
    table = torch.nn.functional.normalize(
        torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    users = torch.nn.functional.normalize(
        torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    masked = info_nce(users, targets, table, 0.1, candidates)
    # by hand: per row, softmax over the candidates left after dropping its accidental hits
    by_hand = []
    for r in range(3):
        cols = [c for c in range(5) if not expected[r, c]]
        logits = users[r] @ table[candidates[cols]].T / 0.1
        positive = cols.index(int((candidates == targets[r]).nonzero()[0]))
        by_hand.append(torch.logsumexp(logits, 0) - logits[positive])
    assert masked.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)
    unmasked = torch.nn.functional.cross_entropy(users @ table[candidates].T / 0.1, torch.tensor([0, 1, 0]))
    assert masked.item() < unmasked.item()  # the duplicate positive no longer competes
    distinct = info_nce(users, targets, table, 0.1, torch.tensor([3, 5, 7]))
    # log-Q lowers the logit of frequently drawn candidates: the loss changes with it
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.01]))
    assert info_nce(users, targets, table, 0.1, torch.tensor([3, 5, 7]), log_q).item() != pytest.approx(
        distinct.item()
    )


def test_windows_cover_every_next_item_once() -> None:
    windows = make_windows([np.arange(7), np.array([4])], max_len=3)
    targets = windows[:, 1:]
    assert sorted(targets[targets > 0].tolist()) == list(range(2, 8))  # item i+1 for items 1..6


def test_warm_start_keeps_learned_rows_when_the_catalogue_grows(
    data: SplitData, fitted: TwoTowerModel, tmp_path: Path
) -> None:
    fitted.save(tmp_path / "old")
    old_state = torch.load(tmp_path / "old" / "state.pt", weights_only=True)
    key = "items.id_emb.weight"
    assert fitted.id_tables() == {key: ("item", SPECIAL_ROWS), "items.id_bias.weight": ("item", SPECIAL_ROWS)}
    # a bigger catalogue: 20 new items appended, with (reused) text vectors
    extra = 20
    assert data.item_features is not None and data.item_features.text is not None
    grown_features = type(data.item_features)(
        np.concatenate([data.item_features.text, data.item_features.text[:extra]]),
        np.concatenate([data.item_features.categories, data.item_features.categories[:extra]]),
        np.concatenate([data.item_features.recency, data.item_features.recency[:extra]]),
    )
    grown = grow_id_tables(old_state, fitted.id_tables(), {"item": data.n_items + extra})
    assert grown[key].shape[0] == data.n_items + extra + SPECIAL_ROWS
    warm = build_model("two-tower", **{**fitted.params(), "epochs": 1, "lr": 1e-12, "progress": False})
    warm.set_item_features(grown_features)
    warm.set_validation(data.train, data.valid)
    warm.set_initial_state(grown)
    train = [h for h in data.train]
    from models.base import histories_to_csr

    warm.fit(histories_to_csr(train, data.n_items + extra), train)
    new_state = warm.net.state_dict()  # type: ignore[union-attr]
    learned = np.flatnonzero(np.bincount(np.concatenate(data.train), minlength=data.n_items) > 0)
    rows = torch.from_numpy(learned + SPECIAL_ROWS)
    # lr≈0: the learned ID rows and the transformer weights are the old ones
    assert torch.allclose(new_state[key][rows], old_state[key][rows], atol=1e-5)
    assert torch.allclose(new_state["users.proj.weight"], old_state["users.proj.weight"], atol=1e-5)
    # and the warm-started model ranks like the old one on the old items
    h = data.histories(("train", "valid"))[:10]
    assert np.allclose(warm.score(h)[:, : data.n_items], fitted.score(h), atol=1e-3)
    # a cold start from scratch does not
    fresh = build_model("two-tower", **{**fitted.params(), "epochs": 1, "lr": 1e-12, "progress": False})
    fresh.set_item_features(grown_features)
    fresh.set_validation(data.train, data.valid)
    fresh.fit(histories_to_csr(train, data.n_items + extra), train)
    assert not np.allclose(fresh.score(h)[:, : data.n_items], fitted.score(h), atol=1e-3)


def test_bad_parameters_name_the_field_and_the_choices() -> None:
    """Parameters go through TwoTowerConfig: a bad one fails with its name and what is allowed."""
    with pytest.raises(
        ValueError, match=r"fusion\n  Input should be 'gate', 'sum', 'concat' or 'adaptive-mimic'"
    ):
        TwoTowerModel(fusion="max")
    with pytest.raises(ValueError, match=r"encoder\n  Input should be 'gru', 'lstm' or 'attention'"):
        TwoTowerModel(encoder="cnn")
    with pytest.raises(ValueError, match=r"hidden\n  Extra inputs are not permitted"):
        TwoTowerModel(hidden=3)
    with pytest.raises(ValueError, match=r"negatives\n  Input should be 'auto', 'full' or 'sampled'"):
        TwoTowerModel(negatives="some")
    with pytest.raises(ValueError, match=r"windows\n  Input should be 'random' or 'all'"):
        TwoTowerModel(windows="some")
    with pytest.raises(ValueError, match=r"dropout\n  Input should be less than 1"):
        build_model("two-tower", {"dropout": 1.0})


@pytest.mark.parametrize("name", ["two-tower", "neumf"])
def test_the_nightly_path_fits_for_serving_and_reloads(data: SplitData, name: str, tmp_path: Path) -> None:
    """What the nightly flow does with a torch model: fit on everything, save into the
    bundle, load by name, score and encode."""
    from flows.nightly import model_params
    from storage.settings import Settings
    from tasks.training import fit_for_serving

    settings = Settings(
        model={"name": name}, two_tower={"epochs": 2, "dim": 16}, neumf={"epochs": 2, "dim": 8}
    )
    params = model_params(settings)
    assert params["epochs"] == 2 and params["seed"] == settings.model.seed
    assert params["threads"] == 1  # TwoTowerConfig / NeuMFConfig: the README's figures used one thread
    model = fit_for_serving(data, name, {**params, "progress": False})
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    h = data.histories(("train", "valid", "test"))[:5]
    assert np.allclose(loaded.score(h), model.score(h), atol=1e-4)
    assert loaded.encode_users(h).shape[0] == 5 and loaded.encode_items().shape[0] == data.n_items
    assert len(loaded.training_curve()) == 2  # type: ignore[attr-defined]


def test_nightly_flow_trains_and_publishes_the_two_tower(
    prefect_api: None, ml100k_slice: Path, tmp_path: Path
) -> None:
    """The real nightly-refresh flow with ``model.name = "two-tower"``: item features and
    text vectors from the warehouse, trained, evaluated, published; the bundle's model loads
    and answers score / encode_users / encode_items."""
    from flows.nightly import nightly_refresh
    from storage.artifacts import ArtifactStore
    from storage.settings import Settings

    overrides = {
        "home": str(tmp_path / "var"),
        "catalogue": "ml-slice",
        "source": {"kind": "movielens", "path": str(ml100k_slice)},
        "model": {"name": "two-tower"},
        "two_tower": {"epochs": 2, "dim": 16},
    }
    published = nightly_refresh(overrides=overrides)
    store = ArtifactStore(Settings(**overrides).bundles_dir)
    assert published.version is not None and published.live == published.version
    manifest = store.manifest(published.version)
    assert manifest["model"]["name"] == "two-tower" and manifest["model"]["params"]["use_text"] is True
    assert manifest["metrics"]["test"]["ndcg@10"] > 0
    bundle = store.current_path()
    assert bundle is not None
    model = load_model(bundle / "model")
    assert isinstance(model, TwoTowerModel) and model.net is not None
    assert model.net.items.text_dim == 384  # the all-MiniLM-L6-v2 vectors of the embed step
    users = model.encode_users([np.array([0, 1, 2])])
    assert np.allclose(users @ model.encode_items().T, model.score([np.array([0, 1, 2])]), atol=1e-4)
