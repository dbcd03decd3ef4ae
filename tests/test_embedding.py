"""Item texts are embedded once per (model, text); vectors pass their expectations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expectations.suites import DataQualityError
from expectations.vectors import check_item_vectors
from models.text_encoder import resolve_model_path
from storage.settings import EmbeddingSettings
from storage.warehouse import connect
from tasks.embedding import embed_items, item_vectors, render_texts
from tasks.load import upsert_items

pytestmark = pytest.mark.slow  # the MiniLM model and a Dask cluster

ITEMS = pd.DataFrame(
    {
        "item_id": ["1", "2", "3"],
        "title": ["Toy Story", "GoldenEye", "Heat"],
        "categories": [["Animation", "Comedy"], ["Action"], ["Action", "Crime"]],
        "year": pd.array([1995, 1995, None], dtype="Int64"),
        "description": [None, None, "A heist in Los Angeles"],
        "url": [None, None, None],
        "row_number": [1, 2, 3],
    }
)


def test_template_drops_missing_parts() -> None:
    frame = ITEMS.assign(source="ml")
    texts = render_texts(frame, "{title}. {categories}. {year}. {description}")
    assert texts[0] == "Toy Story. Animation, Comedy. 1995"
    assert texts[2] == "Heat. Action, Crime. A heist in Los Angeles"


def test_cache_encodes_only_new_or_changed_text(tmp_path: Path) -> None:
    con = connect(tmp_path / "w.duckdb")
    upsert_items(con, ITEMS, "test")
    settings = EmbeddingSettings()
    first = embed_items(con, settings, progress=False)
    assert (first.items, first.encoded, first.cached) == (3, 3, 0)
    second = embed_items(con, settings, progress=False)
    assert (second.encoded, second.cached) == (0, 3)
    changed = ITEMS.copy()
    changed.loc[1, "title"] = "GoldenEye (director's cut)"
    upsert_items(con, changed, "test")
    third = embed_items(con, settings, progress=False)
    assert (third.encoded, third.cached) == (1, 2)
    vectors = item_vectors(con, settings, ["1", "2", "3"])
    check_item_vectors(vectors, n_items=3, dim=384)
    # Similar texts are closer than unrelated ones: the model is real.
    assert vectors[2] @ vectors[1] > vectors[2] @ vectors[0]


def test_new_model_reencodes_everything(tmp_path: Path) -> None:
    con = connect(tmp_path / "w.duckdb")
    upsert_items(con, ITEMS, "test")
    embed_items(con, EmbeddingSettings(), progress=False)
    # The same weights under another local path count as another model.
    other = tmp_path / "my-model"
    source = Path(resolve_model_path("all-MiniLM-L6-v2"))
    other.mkdir()
    for entry in source.iterdir():
        (other / entry.name).symlink_to(entry)
    summary = embed_items(con, EmbeddingSettings(model=str(other)), progress=False)
    assert (summary.encoded, summary.cached) == (3, 0)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_model_path("sentence-transformers/some-hub-model")


def test_vector_expectations() -> None:
    good = np.eye(3, 4, dtype=np.float32)
    check_item_vectors(good, n_items=3, dim=4)
    with pytest.raises(DataQualityError, match="shape"):
        check_item_vectors(good, n_items=3, dim=8)
    with pytest.raises(DataQualityError, match="one vector per live item"):
        check_item_vectors(good, n_items=4, dim=4)
    bad = good.copy()
    bad[1, 0] = np.nan
    with pytest.raises(DataQualityError, match="1 of 3 rows hold NaN"):
        check_item_vectors(bad, n_items=3, dim=4)
    with pytest.raises(DataQualityError, match="not unit length"):
        check_item_vectors(good * 2, n_items=3, dim=4)


def test_embed_flow_fans_out_over_dask(prefect_api: None, tmp_path: Path) -> None:
    """The same flow on a 2-process local Dask cluster; the second run encodes nothing."""
    from flows.embed import run_embed_items
    from storage.settings import Settings

    overrides = {
        "home": str(tmp_path),
        "catalogue": "dask",
        "embedding": {"dask_workers": 2, "fanout_batch": 2},
    }
    with connect(Settings(**overrides).warehouse_path) as con:
        upsert_items(con, ITEMS, "test")
    first = run_embed_items(overrides)
    assert (first.encoded, first.cached) == (3, 0)
    second = run_embed_items({**overrides, "embedding": {"dask_workers": 0}})
    assert (second.encoded, second.cached) == (0, 3)
