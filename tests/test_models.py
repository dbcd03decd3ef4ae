"""Models keep the one contract; the recency-weighted ItemKNN weighs recent items more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from models.baselines import ItemKNNModel, PopularityModel, RecencyItemKNNModel
from models.configs import (
    ItemKNNConfig,
    ModelOverrides,
    NeuMFConfig,
    NRMSConfig,
    RecencyItemKNNConfig,
    TwoTowerConfig,
)
from models.registry import REGISTRY, build_model, load_model

# Items 0-1 co-occur, items 2-3 co-occur; nothing links the two pairs.
TRAIN = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.float32))
HISTORIES = [np.array([0, 1]), np.array([1, 0]), np.array([2, 3]), np.array([3, 2])]


def test_itemknn_cosine_by_hand() -> None:
    model = ItemKNNModel(neighbors=3)
    model.fit(TRAIN, HISTORIES)
    sim = model.similarity.toarray()
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == 0.0 and sim[0, 0] == 0.0
    scores = model.score([np.array([0])])
    assert scores[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])


def test_recency_weights_the_latest_item_most() -> None:
    plain = ItemKNNModel(neighbors=3)
    recent = RecencyItemKNNModel(neighbors=3, decay=0.5)
    for m in (plain, recent):
        m.fit(TRAIN, HISTORIES)
    history = [np.array([2, 0])]  # item 0 is the newest
    assert plain.score(history)[0][1] == pytest.approx(plain.score(history)[0][3])
    scores = recent.score(history)[0]
    assert scores[1] == pytest.approx(1.0) and scores[3] == pytest.approx(0.5)
    assert RecencyItemKNNModel(neighbors=3, decay=1.0).params()["decay"] == 1.0
    with pytest.raises(ValueError, match=r"decay\n  Input should be greater than 0"):
        RecencyItemKNNModel(decay=0.0)


@pytest.mark.parametrize("name", ["popularity", "itemknn", "itemknn-recency"])
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    model = build_model(name)
    model.fit(TRAIN, HISTORIES)
    model.save(tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model)
    assert np.allclose(loaded.score(HISTORIES), model.score(HISTORIES))
    assert loaded.params() == model.params()


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        build_model("bpr")
    assert isinstance(build_model("popularity"), PopularityModel)


# --- config classes and the registry -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_is_built_from_its_config_class(name: str) -> None:
    """One config per model: unknown fields are refused, every field is documented, and the
    model built from a config equals the one built from the same keyword parameters."""
    model_cls, config_cls = REGISTRY[name]
    assert config_cls.model_config.get("extra") == "forbid" and config_cls.for_model == name
    undocumented = [f for f, info in config_cls.model_fields.items() if not info.description]
    assert not undocumented, f"{config_cls.__name__} fields without a docstring: {undocumented}"
    config = config_cls()
    from_config = model_cls(config)
    assert from_config.config == config and type(build_model(name)) is model_cls
    assert from_config.params() == build_model(name, config.model_dump()).params()
    with pytest.raises(
        ValueError, match=rf"validation error for {config_cls.__name__}\nbogus\n  Extra inputs"
    ):
        build_model(name, {"bogus": 1})


def test_build_model_validates_overrides_with_the_field_name() -> None:
    model = build_model("itemknn-recency", RecencyItemKNNConfig(neighbors=3), decay=0.5)
    assert model.params() == {"neighbors": 3, "shrink": 0.0, "decay": 0.5}
    with pytest.raises(ValueError, match=r"neighbors\n  Input should be greater than 0"):
        build_model("itemknn", {"neighbors": 0})
    with pytest.raises(TypeError, match="expected a ItemKNNConfig, got NeuMFConfig"):
        build_model("itemknn", NeuMFConfig())


def test_settings_take_their_model_defaults_from_the_config_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings define no hyper-parameter of their own: defaults, bounds and the env-var
    names (``RECFLOW_TWO_TOWER__ENCODER``, ``RECFLOW_MODEL__KNN_NEIGHBORS``) all still work."""
    from storage.settings import Settings

    defaults = Settings()
    assert defaults.two_tower == TwoTowerConfig() and defaults.two_tower.threads == 1
    assert defaults.neumf == NeuMFConfig() and defaults.nrms == NRMSConfig()
    assert defaults.config_of("itemknn-recency") == RecencyItemKNNConfig()
    assert defaults.config_of("itemknn") == ItemKNNConfig()
    monkeypatch.setenv("RECFLOW_TWO_TOWER__ENCODER", "attention")
    monkeypatch.setenv("RECFLOW_MODEL__KNN_NEIGHBORS", "50")
    monkeypatch.setenv("RECFLOW_MODEL__SEED", "7")
    env = Settings()
    tower = env.config_of("two-tower", {"epochs": 3})
    assert (tower.encoder, tower.epochs, tower.seed) == ("attention", 3, 7)
    assert env.config_of("itemknn-recency").neighbors == 50 and env.config_of("nextitem-mf").seed == 7
    assert Settings(two_tower={"seed": 1}).config_of("two-tower").seed == 1  # the block's own seed wins
    with pytest.raises(ValueError, match=r"model.knn_neighbors\n  Input should be greater than 0"):
        Settings(model={"knn_neighbors": 0})
    with pytest.raises(ValueError, match=r"two_tower.hidden\n  Extra inputs are not permitted"):
        Settings(two_tower={"hidden": 3})
    with pytest.raises(ValueError, match=r"unknown model 'bpr'"):
        env.config_of("bpr")


def test_model_overrides_keep_only_the_fields_given() -> None:
    overrides = ModelOverrides.model_validate({"nextitem-mf": {"epochs": 2}, "two_tower": {"dim": 8}})
    assert overrides.given() == {"nextitem-mf": {"epochs": 2}, "two-tower": {"dim": 8}}
    with pytest.raises(ValueError, match=r"nextitem-mf.dimension\n  Extra inputs are not permitted"):
        ModelOverrides.model_validate({"nextitem-mf": {"dimension": 8}})
