"""Name → (model class, config class), so flows and serving build and load models by name.

:func:`build_model` validates parameters through the model's config class
(models/configs.py) before constructing it, so a bad or unknown parameter fails with the
field's name and the model never sees an unchecked value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from models.base import Recommender
from models.baselines import ItemKNNModel, PopularityModel, RecencyItemKNNModel
from models.configs import CONFIGS, ModelConfig
from models.fusion import TwoTowerKNNModel
from models.neumf import NeuMFModel
from models.nextitem import NextItemMFModel
from models.nrms import NRMSModel
from models.two_tower import TwoTowerModel


class ModelEntry(NamedTuple):
    """A registered model: the class and the pydantic config it is built from."""

    model: type[Any]
    config: type[ModelConfig]


REGISTRY: dict[str, ModelEntry] = {
    cls.name: ModelEntry(cls, cls.Config)
    for cls in (
        PopularityModel,
        ItemKNNModel,
        RecencyItemKNNModel,
        NRMSModel,
        NextItemMFModel,
        TwoTowerModel,
        NeuMFModel,
        TwoTowerKNNModel,
    )
}
if {n: e.config for n, e in REGISTRY.items()} != CONFIGS:  # the torch-free name map must agree
    raise RuntimeError("models.configs.CONFIGS and models.registry.REGISTRY name different models")

MODELS: dict[str, type] = {name: entry.model for name, entry in REGISTRY.items()}
"""Name → model class (for callers that only look at the class, e.g. which models read features)."""


def entry(name: str) -> ModelEntry:
    """The registered model ``name``; unknown names fail with the list of known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(REGISTRY)}") from None


def build_model(
    name: str, overrides: ModelConfig | Mapping[str, Any] | None = None, /, **params: Any
) -> Recommender:
    """A fresh, unfitted model from its config: ``overrides`` (a config object or a mapping)
    and keyword ``params`` on top of the config's defaults, validated by the config class."""
    model_cls, config_cls = entry(name)
    if isinstance(overrides, ModelConfig):
        if not isinstance(overrides, config_cls):
            raise TypeError(f"{name}: expected a {config_cls.__name__}, got {type(overrides).__name__}")
        values = {**overrides.model_dump(), **params}
    else:
        values = {**(overrides or {}), **params}
    return model_cls(config_cls.model_validate(values))


def load_model(directory: Path) -> Recommender:
    """Load whatever model ``directory/model.json`` names."""
    meta_path = directory / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: not a saved recflow model")
    name = json.loads(meta_path.read_text())["name"]
    if name not in REGISTRY:
        raise ValueError(f"{meta_path} names unknown model {name!r}")
    return REGISTRY[name].model.load(directory)
