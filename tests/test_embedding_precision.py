"""The encoder's precision and thread settings reach encode() and keep vectors close to float32's.

Real all-MiniLM-L6-v2, a real DuckDB warehouse; no mocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest
import torch

from models.text_encoder import encode, model_id
from storage.settings import EmbeddingSettings, Settings
from storage.warehouse import connect
from tasks.embedding import embed_items, item_vectors
from tasks.load import upsert_items

pytestmark = pytest.mark.slow  # loads the MiniLM model (float and quantized)

TEXTS = [
    "Cold Mirror 4247. Film-Noir, Crime. 1999",
    "Bright Road 42986. Comedy, Fantasy. 1936",
    "Golden Road 25907. Romance. 2004",
    "Toy Story. Animation, Comedy. 1995",
    "Heat. Action, Crime. A heist in Los Angeles",
]
ITEMS = pd.DataFrame(
    {
        "item_id": [str(i) for i in range(len(TEXTS))],
        "title": TEXTS,
        "categories": [[] for _ in TEXTS],
        "year": pd.array([None] * len(TEXTS), dtype="Int64"),
        "description": [None] * len(TEXTS),
        "url": [None] * len(TEXTS),
        "row_number": list(range(1, len(TEXTS) + 1)),
    }
)


def test_bfloat16_setting_reaches_encode_and_is_cached_apart(tmp_path: Path) -> None:
    con = connect(tmp_path / "w.duckdb")
    upsert_items(con, ITEMS, "test")
    exact = EmbeddingSettings()
    fast = EmbeddingSettings(precision="bfloat16", threads=1)
    first = embed_items(con, exact, progress=False)
    second = embed_items(con, fast, progress=False)
    # A new model id: the float32 vectors are not reused for bfloat16, nor overwritten.
    assert second.model_id == first.model_id + "+bf16"
    assert (second.encoded, second.cached) == (len(TEXTS), 0)
    assert embed_items(con, fast, progress=False).encoded == 0
    ids = ITEMS["item_id"].tolist()
    a, b = item_vectors(con, exact, ids), item_vectors(con, fast, ids)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.999
    assert not np.array_equal(a, b)  # bfloat16 really ran: not the float32 vectors again


def test_precision_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECFLOW_EMBEDDING__PRECISION", "bfloat16")
    monkeypatch.setenv("RECFLOW_EMBEDDING__THREADS", "1")
    embedding = Settings().embedding
    assert (embedding.precision, embedding.threads) == ("bfloat16", 1)


def test_int8_is_quantized_and_close() -> None:
    exact = encode(TEXTS, "all-MiniLM-L6-v2", "cpu", 8, False)
    int8 = encode(TEXTS, "all-MiniLM-L6-v2", "cpu", 8, False, precision="int8")
    cos = (exact * int8).sum(axis=1)
    assert np.abs(exact - int8).max() > 1e-3  # the Linear layers really are int8
    assert cos.min() > 0.8 and cos.mean() > 0.9  # measured mean 0.94 on 5,000 texts
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert model_id("all-MiniLM-L6-v2", "int8").endswith("+int8")
    assert "+" not in model_id("all-MiniLM-L6-v2")
    # The float model stays float: quantizing made a copy.
    np.testing.assert_array_equal(exact, encode(TEXTS, "all-MiniLM-L6-v2", "cpu", 8, False))


def test_threads_apply_per_call_and_are_restored() -> None:
    before = torch.get_num_threads()
    one = encode(TEXTS, "all-MiniLM-L6-v2", "cpu", 8, False, threads=1)
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(one, encode(TEXTS, "all-MiniLM-L6-v2", "cpu", 8, False), atol=1e-5)


def test_bad_precision_or_threads_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="precision 'fp16' is not one of float32, bfloat16, int8"):
        encode(TEXTS, "all-MiniLM-L6-v2", "cpu", 8, False, precision="fp16")
    with pytest.raises(ValueError, match=r"'int8'.*CPU only.*'cuda'"):
        encode(TEXTS, "all-MiniLM-L6-v2", "cuda", 8, False, precision="int8")
    with pytest.raises(ValueError, match="threads must be >= 0"):
        encode(TEXTS, "all-MiniLM-L6-v2", "cpu", 8, False, threads=-1)
    with pytest.raises(pydantic.ValidationError, match="precision"):
        EmbeddingSettings(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="threads"):
        EmbeddingSettings(threads=-2)


def test_flow_fans_out_with_the_precision(prefect_api: None, tmp_path: Path) -> None:
    """Through the embed-items flow on a local Dask cluster: the workers encode in bfloat16
    (the vectors are cached under the +bf16 id), and the in-process flow finds them there."""
    from flows.embed import run_embed_items

    fast = {"precision": "bfloat16", "threads": 1}
    overrides = {"home": str(tmp_path), "catalogue": "bf16", "embedding": {**fast, "dask_workers": 1}}
    settings = Settings(**overrides)
    with connect(settings.warehouse_path) as con:
        upsert_items(con, ITEMS, "test")
    first = run_embed_items(overrides)
    assert first.model_id.endswith("+bf16") and (first.encoded, first.cached) == (len(TEXTS), 0)
    again = run_embed_items({**overrides, "embedding": fast})
    assert (again.encoded, again.cached) == (0, len(TEXTS))
    exact = run_embed_items({**overrides, "embedding": {}})
    assert (exact.encoded, exact.cached) == (len(TEXTS), 0)
    ids = ITEMS["item_id"].tolist()
    with connect(settings.warehouse_path) as con:
        a = item_vectors(con, EmbeddingSettings(), ids)
        b = item_vectors(con, settings.embedding, ids)
    assert (a * b).sum(axis=1).min() > 0.999 and not np.array_equal(a, b)
