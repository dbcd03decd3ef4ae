"""A small torch model that keeps contract C4: the reference for warm start and merging.

``nextitem-mf`` predicts a user's next item from the mean of their recent items' input
embeddings (plus the item's bias), trained with a full softmax over the catalogue on every
(prefix → next item) position of the training histories. It is deliberately simple, fast on
two CPU cores and deterministic for a seed; what it is for is to exercise everything around
torch models — ID tables that grow with the catalogue, warm start from a live checkpoint,
checkpoint merging, training curves — with a real model on real data.

State dict (``state.pt``)::

    item_in.weight   (n_items + 1, dim)  history-side item embedding; row 0 is padding
    item_out.weight  (n_items, dim)      target-side item embedding
    item_bias        (n_items,)          per-item bias (popularity)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm

from models.configs import ModelConfig, NextItemConfig, resolve_config
from models.metrics import mask_seen, rank_metrics


def torch_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _NextItemModule(nn.Module):
    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.item_in = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.item_out = nn.Embedding(n_items, dim)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.item_in.weight, std=0.1)
        nn.init.normal_(self.item_out.weight, std=0.1)
        with torch.no_grad():
            self.item_in.weight[0].zero_()

    def user_vectors(self, context: torch.Tensor) -> torch.Tensor:
        """``context`` (batch, window) of item index + 1 (0 = padding) → (batch, dim)."""
        emb = self.item_in(context)
        count = (context > 0).sum(dim=1, keepdim=True).clamp(min=1)
        return emb.sum(dim=1) / count

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(context) @ self.item_out.weight.T + self.item_bias


class NextItemMFModel:
    """Mean of recent item embeddings → softmax over the catalogue (see module docstring)."""

    name: ClassVar[str] = "nextitem-mf"

    Config: ClassVar[type[NextItemConfig]] = NextItemConfig

    def __init__(self, config: ModelConfig | None = None, /, **params: Any) -> None:
        """From a :class:`NextItemConfig`, or keyword parameters validated by it."""
        self.config = c = resolve_config(NextItemConfig, config, params)
        self.dim = c.dim
        self.window = c.window
        self.epochs = c.epochs
        self.lr = c.lr
        self.weight_decay = c.weight_decay
        self.batch_size = c.batch_size
        self.seed = c.seed
        self.valid_holdout = c.valid_holdout
        self.progress = c.progress
        self.n_items = 0
        self.module: _NextItemModule | None = None
        self._initial_state: dict[str, torch.Tensor] | None = None
        self._curve: list[dict[str, Any]] = []

    # C4 -----------------------------------------------------------------------------------
    def id_tables(self) -> dict[str, tuple[Literal["item", "user"], int]]:
        return {"item_in.weight": ("item", 1), "item_out.weight": ("item", 0), "item_bias": ("item", 0)}

    def set_initial_state(self, state: dict[str, torch.Tensor]) -> None:
        self._initial_state = {k: v.detach().cpu().clone() for k, v in state.items()}

    def initial_state(self, n_users: int, n_items: int) -> dict[str, torch.Tensor]:
        """A freshly initialized state for these sizes (warm start draws new ID rows from it)."""
        torch.manual_seed(self.seed)
        return {k: v.detach().clone() for k, v in _NextItemModule(n_items, self.dim).state_dict().items()}

    def training_curve(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._curve]

    # Recommender --------------------------------------------------------------------------
    def fit(self, train: sp.csr_matrix, histories: list[np.ndarray]) -> None:
        """Train on every prefix → next item position; with ``valid_holdout`` each user's last
        training item is held out and scored after every epoch (``val_ndcg10``)."""
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        device = torch_device()
        self.n_items = int(train.shape[1])
        module = _NextItemModule(self.n_items, self.dim)
        if self._initial_state is not None:
            own = module.state_dict()
            usable = {k: v for k, v in self._initial_state.items() if k in own and own[k].shape == v.shape}
            module.load_state_dict({**own, **usable}, strict=True)
        module.to(device)
        self.module = module
        fit_histories, valid_targets = [], []
        for h in histories:
            if self.valid_holdout and len(h) >= 3:
                fit_histories.append(h[:-1])
                valid_targets.append((h[:-1], h[-1:]))
            else:
                fit_histories.append(h)
        contexts, targets = self._examples(fit_histories)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self._curve = []
        n = len(targets)
        for epoch in range(1, self.epochs + 1):
            started = time.perf_counter()
            module.train()
            order = rng.permutation(n)
            total = 0.0
            batches = range(0, n, self.batch_size)
            bar = tqdm(batches, desc=f"{self.name} epoch {epoch}/{self.epochs}", disable=not self.progress)
            for start in bar:
                idx = order[start : start + self.batch_size]
                ctx = torch.from_numpy(contexts[idx]).to(device)
                tgt = torch.from_numpy(targets[idx]).to(device)
                loss = nn.functional.cross_entropy(module(ctx), tgt)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    module.item_in.weight[0].zero_()
                total += float(loss.detach()) * len(idx)
                bar.set_postfix(loss=f"{total / min(start + len(idx), n):.4f}")
            val = self._valid_ndcg10(valid_targets) if valid_targets else None
            self._curve.append(
                {
                    "epoch": epoch,
                    "loss": round(total / max(n, 1), 6),
                    "val_ndcg10": None if val is None else round(val, 6),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
            if self.progress:
                tqdm.write(f"{self.name} epoch {epoch}: loss {total / max(n, 1):.4f} val ndcg@10 {val}")
        module.eval()
        self._initial_state = None

    def _examples(self, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(context window of item index + 1, left-padded with 0; next item) for every position ≥ 1."""
        ctx_rows: list[np.ndarray] = []
        tgt_rows: list[np.ndarray] = []
        for h in histories:
            h = np.asarray(h, dtype=np.int64)
            if len(h) < 2:
                continue
            padded = np.concatenate([np.zeros(self.window, dtype=np.int64), h + 1])
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.window)
            ctx_rows.append(windows[1 : len(h)])  # window ending just before position t
            tgt_rows.append(h[1:])
        if not ctx_rows:
            return np.zeros((0, self.window), np.int64), np.zeros(0, np.int64)
        return np.ascontiguousarray(np.concatenate(ctx_rows)), np.concatenate(tgt_rows)

    def _contexts(self, histories: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(histories), self.window), dtype=np.int64)
        for row, h in enumerate(histories):
            recent = np.asarray(h, dtype=np.int64)[-self.window :]
            if len(recent):
                out[row, -len(recent) :] = recent + 1
        return out

    def _valid_ndcg10(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
        scores = self.score([p[0] for p in pairs])
        mask_seen(scores, [p[0] for p in pairs])
        return rank_metrics(scores, [p[1] for p in pairs], [10])["ndcg"][10]

    def _require(self) -> _NextItemModule:
        if self.module is None:
            raise RuntimeError(f"{self.name}: call fit() or load() before scoring")
        return self.module

    def score(self, histories: list[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        module = self._require()
        device = next(module.parameters()).device
        with torch.no_grad():
            ctx = torch.from_numpy(self._contexts(histories)).to(device)
            users = module.user_vectors(ctx)
            if items is None:
                out = users @ module.item_out.weight.T + module.item_bias
            else:
                idx = torch.as_tensor(np.asarray(items, dtype=np.int64), device=device)
                out = users @ module.item_out.weight[idx].T + module.item_bias[idx]
        return out.float().cpu().numpy()

    def encode_items(self) -> np.ndarray:
        return self._require().item_out.weight.detach().float().cpu().numpy()

    def encode_users(self, histories: list[np.ndarray]) -> np.ndarray:
        module = self._require()
        device = next(module.parameters()).device
        with torch.no_grad():
            ctx = torch.from_numpy(self._contexts(histories)).to(device)
            return module.user_vectors(ctx).float().cpu().numpy()

    def params(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "window": self.window,
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "valid_holdout": self.valid_holdout,
        }

    def save(self, directory: Path) -> None:
        module = self._require()
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, directory / "state.pt")
        meta = {"name": self.name, "params": self.params(), "n_items": self.n_items, "curve": self._curve}
        (directory / "model.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> NextItemMFModel:
        meta = json.loads((directory / "model.json").read_text())
        model = cls(**meta["params"], progress=False)
        model.n_items = int(meta["n_items"])
        module = _NextItemModule(model.n_items, model.dim)
        module.load_state_dict(torch.load(directory / "state.pt", map_location="cpu", weights_only=True))
        module.eval()
        model.module = module.to(torch_device())
        model._curve = meta.get("curve", [])
        return model
