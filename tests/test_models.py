"""Models keep the one contract; the recency-weighted ItemKNN weighs recent items more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from models.baselines import ItemKNNModel, PopularityModel, RecencyItemKNNModel
from models.registry import build_model, load_model

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
    with pytest.raises(ValueError, match="decay must be in"):
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
