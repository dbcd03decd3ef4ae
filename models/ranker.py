"""Second-stage ranker over a retriever's candidates (contract C5).

An MLP over ``[user, item, user ⊙ item]`` (the retriever's vectors) plus item features
(recency, popularity, categories), with LayerNorm and dropout, trained with BCE on the
retriever's top-K candidates. When events carry more than clicks (like, share, skip, dwell)
there is one output head per event type and the final score is a configurable weighted sum
of the heads' probabilities (a skip can weigh negatively). The retriever is saved inside the
ranker's directory, so ``Ranker.load(dir).score(history, candidates)`` needs nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.features import ItemFeatures
from models.metrics import mask_seen
from models.ranking import NO_ITEM, top_k
from models.trainer import FitConfig, FitReport, fit_module, pick_device, seed_everything

DEFAULT_WEIGHTS = {"click": 1.0, "like": 0.5, "share": 0.5, "dwell": 0.3, "skip": -0.5}


class RankerNet(nn.Module):
    def __init__(self, dim: int, n_side: int, hidden: Sequence[int], heads: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3 * dim + n_side
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.heads = nn.Linear(width, heads)

    def forward(self, user: torch.Tensor, item: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """(B, d), (B, d), (B, s) → (B, heads) logits."""
        return self.heads(self.body(torch.cat([user, item, user * item, side], dim=-1)))


class Ranker:
    """MLP ranker with one head per event type; see the module docstring."""

    name = "ranker"

    def __init__(
        self,
        events: Sequence[str] = ("click",),
        weights: Mapping[str, float] | None = None,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.1,
        candidates_k: int = 50,
        epochs: int = 10,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 1024,
        seed: int = 42,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        if not events:
            raise ValueError("ranker: events must name at least one event type, e.g. ('click',)")
        self.events = list(events)
        chosen = (
            dict(weights) if weights is not None else {e: DEFAULT_WEIGHTS.get(e, 1.0) for e in self.events}
        )
        unknown = set(chosen) - set(self.events)
        if unknown:
            raise ValueError(f"ranker: weights for {sorted(unknown)} but events are {self.events}")
        self.weights = {e: float(chosen.get(e, 0.0)) for e in self.events}
        self.hidden = list(hidden)
        self.dropout = dropout
        self.candidates_k = candidates_k
        self.config = FitConfig(
            epochs=epochs, lr=lr, weight_decay=weight_decay, patience=epochs, seed=seed, progress=progress
        )
        self.batch_size = batch_size
        self.device = pick_device(device)
        self.retriever: Any = None
        self.item_vectors = np.zeros((0, 0), np.float32)
        self.side = np.zeros((0, 0), np.float32)
        self.net: RankerNet | None = None
        self.report = FitReport()

    # ----- training ---------------------------------------------------------------------
    def fit(
        self,
        retriever: Any,
        histories: Sequence[np.ndarray],
        labels: Mapping[str, Sequence[np.ndarray]],
        features: ItemFeatures,
        popularity: np.ndarray,
    ) -> None:
        """Learn from what users did next.

        ``retriever``: a fitted model with ``encode_users``/``encode_items`` and ``score``.
        ``histories[u]``: the context of example ``u``; ``labels[event][u]``: the item indices
        example ``u`` did ``event`` on next (``labels["click"]`` are the clicks). Candidates
        are the retriever's top ``candidates_k`` (history masked) plus every labelled item,
        so each example has positives; every candidate gets one 0/1 target per event.
        """
        missing = [e for e in self.events if e not in labels]
        if missing:
            raise ValueError(f"ranker: labels lack events {missing}; got {sorted(labels)}")
        for e in self.events:
            if len(labels[e]) != len(histories):
                raise ValueError(
                    f"ranker: labels[{e!r}] has {len(labels[e])} rows, histories {len(histories)}"
                )
        seed_everything(self.config.seed)
        self.retriever = retriever
        self.item_vectors = np.asarray(retriever.encode_items(), dtype=np.float32)
        self.side = item_side_features(features, popularity)
        users = np.asarray(retriever.encode_users(list(histories)), dtype=np.float32)
        rows, items, targets = self._examples(histories, labels)
        self.net = RankerNet(
            self.item_vectors.shape[1], self.side.shape[1], self.hidden, len(self.events), self.dropout
        )
        self.net.to(self.device)
        u_t = torch.from_numpy(users).to(self.device)
        i_t = torch.from_numpy(self.item_vectors).to(self.device)
        s_t = torch.from_numpy(self.side).to(self.device)
        data = (torch.from_numpy(rows), torch.from_numpy(items), torch.from_numpy(targets))
        bs = self.batch_size

        def make_batches(rng: np.random.Generator) -> list[tuple[torch.Tensor, ...]]:
            order = torch.from_numpy(rng.permutation(len(rows)))
            return [tuple(t[order[s : s + bs]] for t in data) for s in range(0, len(rows), bs)]

        def loss_fn(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            assert self.net is not None
            r, i, y = (t.to(self.device) for t in batch)
            return F.binary_cross_entropy_with_logits(self.net(u_t[r], i_t[i], s_t[i]), y)

        self.report = fit_module(self.net, self.config, make_batches, loss_fn, None, desc="ranker")

    def _examples(
        self, histories: Sequence[np.ndarray], labels: Mapping[str, Sequence[np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scores = np.asarray(self.retriever.score(list(histories)), dtype=np.float32).copy()
        mask_seen(scores, [np.asarray(h, dtype=np.int64) for h in histories])
        top = top_k(scores, self.candidates_k)
        rows, items, targets = [], [], []
        for u in range(len(histories)):
            labelled = [np.asarray(labels[e][u], dtype=np.int64) for e in self.events]
            cand = np.unique(np.concatenate([top[u][top[u] != NO_ITEM], *labelled]))
            y = np.stack([np.isin(cand, lab) for lab in labelled], axis=1).astype(np.float32)
            rows.append(np.full(len(cand), u))
            items.append(cand)
            targets.append(y)
        return np.concatenate(rows), np.concatenate(items), np.concatenate(targets)

    # ----- inference ----------------------------------------------------------------------
    def head_probabilities(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(len(candidates), n_events) probabilities, one column per event type."""
        net = self._net()
        net.eval()
        cand = np.asarray(candidates, dtype=np.int64)
        user = np.asarray(self.retriever.encode_users([np.asarray(history, dtype=np.int64)]), np.float32)
        with torch.no_grad():
            u = torch.from_numpy(np.repeat(user, len(cand), axis=0)).to(self.device)
            i = torch.from_numpy(self.item_vectors[cand]).to(self.device)
            s = torch.from_numpy(self.side[cand]).to(self.device)
            return torch.sigmoid(net(u, i, s)).cpu().numpy()

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """One score per candidate: ``Σ_event weight · P(event)``."""
        probs = self.head_probabilities(history, candidates)
        w = np.array([self.weights[e] for e in self.events], dtype=np.float32)
        return (probs @ w).astype(np.float32)

    def training_curve(self) -> list[dict[str, Any]]:
        return list(self.report.curve)

    def params(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "weights": self.weights,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "candidates_k": self.candidates_k,
            "epochs": self.config.epochs,
            "lr": self.config.lr,
            "weight_decay": self.config.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.config.seed,
        }

    def save(self, directory: Path) -> None:
        net = self._net()
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, directory / "state.pt")
        np.save(directory / "item_vectors.npy", self.item_vectors)
        np.save(directory / "side.npy", self.side)
        self.retriever.save(directory / "retriever")
        meta = {"name": self.name, "params": self.params(), "training_curve": self.report.curve}
        (directory / "model.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Ranker:
        from models.registry import load_model

        meta = json.loads((directory / "model.json").read_text())
        if meta.get("name") != cls.name:
            raise ValueError(f"{directory / 'model.json'} is not a ranker (name {meta.get('name')!r})")
        ranker = cls(**{**meta["params"], "progress": False})
        ranker.item_vectors = np.load(directory / "item_vectors.npy")
        ranker.side = np.load(directory / "side.npy")
        ranker.retriever = load_model(directory / "retriever")
        ranker.net = RankerNet(
            ranker.item_vectors.shape[1],
            ranker.side.shape[1],
            ranker.hidden,
            len(ranker.events),
            ranker.dropout,
        ).to(ranker.device)
        state = torch.load(directory / "state.pt", map_location=ranker.device, weights_only=True)
        ranker.net.load_state_dict(state, strict=True)
        ranker.report = FitReport(curve=meta.get("training_curve", []))
        return ranker

    def _net(self) -> RankerNet:
        if self.net is None:
            raise RuntimeError("ranker: not fitted or loaded yet")
        return self.net


def item_side_features(features: ItemFeatures, popularity: np.ndarray) -> np.ndarray:
    """[recency, log-popularity scaled to [0, 1], categories] per item, float32."""
    pop = np.log1p(np.asarray(popularity, dtype=np.float64))
    pop = pop / pop.max() if pop.max() > 0 else pop
    return np.concatenate(
        [features.recency[:, None], pop[:, None].astype(np.float32), features.categories], axis=1
    ).astype(np.float32)
