"""Name → model class, so flows and serving build and load models from settings and bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.base import Recommender
from models.baselines import ItemKNNModel, PopularityModel, RecencyItemKNNModel
from models.neumf import NeuMFModel
from models.nextitem import NextItemMFModel
from models.nrms import NRMSModel
from models.two_tower import TwoTowerModel

MODELS: dict[str, type] = {
    PopularityModel.name: PopularityModel,
    ItemKNNModel.name: ItemKNNModel,
    RecencyItemKNNModel.name: RecencyItemKNNModel,
    NRMSModel.name: NRMSModel,
    NextItemMFModel.name: NextItemMFModel,
    TwoTowerModel.name: TwoTowerModel,
    NeuMFModel.name: NeuMFModel,
}


def build_model(name: str, **params: Any) -> Recommender:
    """A fresh, unfitted model; unknown names fail with the list of known ones."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}") from None
    return cls(**params)


def load_model(directory: Path) -> Recommender:
    """Load whatever model ``directory/model.json`` names."""
    meta_path = directory / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: not a saved recflow model")
    name = json.loads(meta_path.read_text())["name"]
    if name not in MODELS:
        raise ValueError(f"{meta_path} names unknown model {name!r}")
    return MODELS[name].load(directory)
