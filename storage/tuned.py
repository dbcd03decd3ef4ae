"""Tuned model configs: what the ``tune-models`` flow found, stored per catalogue and model.

One JSON file per model, ``<home>/<catalogue>/tuned/<model>.json``: the best trial's
parameters and where they came from (study, trial number, validation NDCG@10, data
fingerprint, time, flow run). :meth:`storage.settings.Settings.config_of` lays the
parameters under every explicit setting, so the nightly refresh and ``train-models`` train
the tuned model by default while a value set in the TOML file, the environment or a flow
parameter still wins. A plain file (not a warehouse table) because settings are read by
processes that must not open the DuckDB file a running flow holds.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TUNED_DIR = "tuned"


class TunedConfig(BaseModel):
    """The best parameters of one study and their provenance."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """Registry name of the tuned model."""
    params: dict[str, Any]
    """The searched parameters of the best trial; the rest (epochs and early stopping among
    them) stay the settings' values."""
    study: str
    """Optuna study name (one per tune-models run)."""
    trial: int = Field(ge=0)
    """Number of the best trial within the study."""
    valid_ndcg10: float
    """The best trial's NDCG@10 on the validation part (the test part is never read)."""
    data_fingerprint: str
    """Fingerprint of the k-core data the study trained on."""
    created_at: datetime
    flow_run_id: str | None = None
    trials: int = Field(ge=0)
    """Trials the study ran (complete, pruned or failed)."""
    fixed: dict[str, Any] = Field(default_factory=dict)
    """Parameters every trial held fixed (the epoch cap, no progress bar): ``valid_ndcg10`` was
    measured under them; they are not part of the default."""
    space: dict[str, Any] = Field(default_factory=dict)
    """The search space the study sampled from."""


def tuned_path(catalogue_dir: Path, model: str) -> Path:
    return catalogue_dir / TUNED_DIR / f"{model}.json"


def read_tuned(catalogue_dir: Path, model: str) -> TunedConfig | None:
    """The stored tuned config of ``model`` (None when it was never tuned); a damaged file
    fails with its path rather than silently training the untuned default."""
    path = tuned_path(catalogue_dir, model)
    if not path.is_file():
        return None
    try:
        return TunedConfig.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as exc:
        raise ValueError(
            f"tuned config {path} is not a valid tuned config ({exc}); re-run `recflow run tune` or delete it"
        ) from None


def write_tuned(catalogue_dir: Path, tuned: TunedConfig) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a config."""
    path = tuned_path(catalogue_dir, tuned.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{tuned.model}-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(tuned.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, path)
    return path
