"""NeuMF (He et al., 2017): GMF ⊕ MLP, with the item's categories projected into both.

The recflow contract scores *histories*, not user ids, so a user's GMF and MLP vectors are
the sum of user-side item factors over their history scaled by ``1/sqrt(n)`` (FISM-style): any user — one who
arrived after training included — can be scored without retraining. During training the
target item is left out of its own user's bag (otherwise the net learns "is it in the
history?", which the evaluator masks anyway). Trained with BCE on each positive and
``negatives`` uniformly sampled items the user has not interacted with.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.configs import ModelConfig, NeuMFConfig, resolve_config
from models.features import ItemFeatures
from models.trainer import (
    FitConfig,
    FitReport,
    fit_module,
    holdout_last,
    load_weights,
    ndcg_at_10,
    pick_device,
    read_meta,
    seed_everything,
    write_checkpoint,
)


class NeuMFNet(nn.Module):
    categories: torch.Tensor
    """Buffer ``(n_items, n_categories)``: each item's genres, rows summing to 1."""

    def __init__(self, n_items: int, n_categories: int, p: dict[str, Any]) -> None:
        super().__init__()
        d, layers = p["dim"], list(p["mlp_layers"])
        self.n_items = n_items
        # user-side factors (averaged over a history) and item-side factors, for GMF and MLP
        self.user_gmf = nn.Embedding(n_items, d)
        self.user_mlp = nn.Embedding(n_items, layers[0] // 2)
        self.item_gmf = nn.Embedding(n_items, d)
        self.item_mlp = nn.Embedding(n_items, layers[0] // 2)
        for emb in (self.user_gmf, self.user_mlp, self.item_gmf, self.item_mlp):
            nn.init.normal_(emb.weight, std=0.1)
        self.register_buffer("categories", torch.zeros(n_items, n_categories))
        self.cat_gmf = nn.Linear(n_categories, d, bias=False) if n_categories else None
        self.cat_mlp = nn.Linear(n_categories, layers[0] // 2, bias=False) if n_categories else None
        half = layers[0] // 2
        self.first_user = nn.Linear(half, layers[0], bias=True)
        self.first_item = nn.Linear(half, layers[0], bias=False)
        tail: list[nn.Module] = []
        for a, b in itertools.pairwise(layers):
            tail += [nn.ReLU(), nn.Dropout(p["dropout"]), nn.Linear(a, b)]
        tail.append(nn.ReLU())
        self.mlp_tail = nn.Sequential(*tail)
        self.predict = nn.Linear(d + layers[-1], 1)

    def item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        g, m = self.item_gmf.weight, self.item_mlp.weight
        if self.cat_gmf is not None and self.cat_mlp is not None:
            g = g + self.cat_gmf(self.categories)
            m = m + self.cat_mlp(self.categories)
        return g, m

    def pair_logits(
        self, ug: torch.Tensor, um: torch.Tensor, ig: torch.Tensor, im: torch.Tensor
    ) -> torch.Tensor:
        """Row-wise pairs: (B, d) users with (B, d) items → (B,) logits."""
        hidden = self.mlp_tail(self.first_user(um) + self.first_item(im))
        return self.predict(torch.cat([ug * ig, hidden], dim=-1)).squeeze(-1)

    def all_logits(
        self, ug: torch.Tensor, um: torch.Tensor, ig: torch.Tensor, im: torch.Tensor
    ) -> torch.Tensor:
        """Every user against every given item → (U, N); the first MLP layer is split into a
        user and an item half so the (U, N, ·) tensor starts at the first hidden width."""
        w = self.predict.weight[0]
        d = ug.shape[1]
        gmf = (ug * w[:d]) @ ig.T
        hidden = self.mlp_tail(self.first_user(um)[:, None, :] + self.first_item(im)[None, :, :])
        return gmf + hidden @ w[d:] + self.predict.bias[0]


class NeuMFModel:
    """GMF + MLP with item-category projections, trained with BCE on sampled negatives."""

    name: ClassVar[str] = "neumf"
    retrieval: ClassVar[bool] = False
    """Scores are not a dot product of ``encode_users`` and ``encode_items``."""

    Config: ClassVar[type[NeuMFConfig]] = NeuMFConfig

    def __init__(self, config: ModelConfig | None = None, /, **params: Any) -> None:
        """From a :class:`NeuMFConfig`, or keyword parameters validated by it (a bad or unknown
        one fails with its name)."""
        self.config = resolve_config(NeuMFConfig, config, params)
        self.p: dict[str, Any] = self.config.model_dump()
        self.features: ItemFeatures | None = None
        self.net: NeuMFNet | None = None
        self.device = pick_device(self.p["device"])
        self._validation: tuple[list[np.ndarray], list[np.ndarray]] | None = None
        self._initial_state: dict[str, torch.Tensor] | None = None
        self.report = FitReport()

    def set_item_features(self, features: ItemFeatures) -> None:
        self.features = features

    def set_validation(self, histories: list[np.ndarray], targets: list[np.ndarray]) -> None:
        self._validation = (histories, targets)

    def set_initial_state(self, state: dict[str, torch.Tensor]) -> None:
        self._initial_state = state

    def id_tables(self) -> dict[str, tuple[Literal["item", "user"], int]]:
        return {f"{k}.weight": ("item", 0) for k in ("user_gmf", "user_mlp", "item_gmf", "item_mlp")}

    def training_curve(self) -> list[dict[str, Any]]:
        return list(self.report.curve)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.p.items() if k not in ("device", "progress")}

    def fit(self, train: sp.csr_matrix, histories: list[np.ndarray]) -> None:
        from models.two_tower import grow_to_fit, load_matching

        seed_everything(self.p["seed"])
        n_items = train.shape[1]
        features = self.features if self.features is not None else ItemFeatures.empty(n_items)
        cats = features.categories if self.p["use_categories"] else np.zeros((n_items, 0), np.float32)
        if self._validation is not None:
            fit_hist, (val_hist, val_targets) = histories, self._validation
        else:
            fit_hist, val_targets = holdout_last(histories)
            val_hist = fit_hist
        self.net = NeuMFNet(n_items, cats.shape[1], self.p).to(self.device)
        with torch.no_grad():
            norm = cats / np.maximum(cats.sum(axis=1, keepdims=True), 1.0)
            self.net.categories.copy_(torch.from_numpy(norm.astype(np.float32)))
        if self._initial_state is not None:
            state = grow_to_fit(self._initial_state, self.id_tables(), {"item": n_items}, self.p["seed"])
            load_matching(self.net, state, skip=("categories",))
        bags = _bags(fit_hist, n_items)
        bag_t = _sparse_bag(bags).to(self.device)
        lengths = torch.from_numpy(np.diff(bags.indptr).astype(np.float32)).to(self.device)
        pos_u = np.repeat(np.arange(bags.shape[0]), np.diff(bags.indptr))
        pos_i = bags.indices.astype(np.int64)
        known = np.sort(pos_u.astype(np.int64) * n_items + pos_i)
        neg_k = self.p["negatives"]
        bs = self.p["batch_size"]

        def make_batches(rng: np.random.Generator) -> list[tuple[torch.Tensor, ...]]:
            neg_u = np.repeat(pos_u, neg_k)
            neg_i = rng.integers(0, n_items, len(neg_u))
            keys = neg_u.astype(np.int64) * n_items + neg_i
            hit = known[np.minimum(np.searchsorted(known, keys), len(known) - 1)] == keys
            neg_u, neg_i = neg_u[~hit], neg_i[~hit]
            u = np.concatenate([pos_u, neg_u])
            i = np.concatenate([pos_i, neg_i])
            y = np.concatenate([np.ones(len(pos_u), np.float32), np.zeros(len(neg_u), np.float32)])
            order = rng.permutation(len(u))
            return [
                (
                    torch.from_numpy(u[order[s : s + bs]]),
                    torch.from_numpy(i[order[s : s + bs]]),
                    torch.from_numpy(y[order[s : s + bs]]),
                )
                for s in range(0, len(order), bs)
            ]

        def loss_fn(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            net = self.net
            assert net is not None
            u, i, y = (t.to(self.device) for t in batch)
            sum_g = torch.sparse.mm(bag_t, net.user_gmf.weight)
            sum_m = torch.sparse.mm(bag_t, net.user_mlp.weight)
            n = lengths[u][:, None]
            own = y[:, None]  # positives come from the history: leave the target out of the bag
            denom = (n - own).clamp(min=1.0).sqrt()
            ug = (sum_g[u] - own * net.user_gmf.weight[i]) / denom
            um = (sum_m[u] - own * net.user_mlp.weight[i]) / denom
            ig, im = net.item_vectors()
            return F.binary_cross_entropy_with_logits(net.pair_logits(ug, um, ig[i], im[i]), y)

        def validate() -> float:
            return ndcg_at_10(self.score, val_hist, val_targets)

        config = FitConfig(
            epochs=self.p["epochs"],
            lr=self.p["lr"],
            weight_decay=self.p["weight_decay"],
            clip_norm=self.p["clip_norm"],
            patience=self.p["patience"],
            seed=self.p["seed"],
            progress=self.p["progress"],
            max_seconds=self.p["max_seconds"],
            max_cpu_seconds=self.p["max_cpu_seconds"],
            threads=self.p["threads"],
        )
        self.report = fit_module(self.net, config, make_batches, loss_fn, validate, desc="neumf")
        self._initial_state = None

    def _user_vectors(self, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        net = self._net()
        bags = _bags(histories, net.n_items)
        bag = _sparse_bag(bags).to(self.device)
        n = torch.from_numpy(np.sqrt(np.maximum(np.diff(bags.indptr), 1)).astype(np.float32)).to(self.device)[
            :, None
        ]
        return torch.sparse.mm(bag, net.user_gmf.weight) / n, torch.sparse.mm(bag, net.user_mlp.weight) / n

    def score(self, histories: list[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        net = self._net()
        net.eval()
        out = []
        with torch.no_grad():
            ig, im = net.item_vectors()
            if items is not None:
                idx = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(self.device)
                ig, im = ig[idx], im[idx]
            for start in range(0, len(histories), 64):
                ug, um = self._user_vectors(histories[start : start + 64])
                out.append(net.all_logits(ug, um, ig, im).cpu())
        if not out:
            return np.zeros((0, net.n_items if items is None else len(items)), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def encode_users(self, histories: list[np.ndarray]) -> np.ndarray:
        """[GMF ⊕ MLP] user factors (the scaled sum over the history); not a dot-product space."""
        self._net().eval()
        with torch.no_grad():
            ug, um = self._user_vectors(histories)
        return torch.cat([ug, um], dim=1).cpu().numpy().astype(np.float32)

    def encode_items(self) -> np.ndarray:
        """[GMF ⊕ MLP] item factors, categories included."""
        self._net().eval()
        with torch.no_grad():
            ig, im = self._net().item_vectors()
        return torch.cat([ig, im], dim=1).cpu().numpy().astype(np.float32)

    def save(self, directory: Path) -> None:
        net = self._net()
        meta = {
            "name": self.name,
            "params": self.params(),
            "n_items": net.n_items,
            "n_categories": int(net.categories.shape[1]),
            "training_curve": self.report.curve,
        }
        write_checkpoint(directory, net, meta)

    @classmethod
    def load(cls, directory: Path) -> NeuMFModel:
        meta = read_meta(directory)
        model = cls(**{**meta["params"], "progress": False})
        model.net = NeuMFNet(meta["n_items"], meta["n_categories"], model.p).to(model.device)
        load_weights(directory, model.net, model.device)
        model.report = FitReport(curve=meta.get("training_curve", []))
        return model

    def _net(self) -> NeuMFNet:
        if self.net is None:
            raise RuntimeError("neumf: the model is not fitted or loaded yet")
        return self.net


def _bags(histories: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Users × items, 1 per distinct history item (the user's bag of items)."""
    from models.base import histories_to_csr

    return histories_to_csr(list(histories), n_items)


def _sparse_bag(bags: sp.csr_matrix) -> torch.Tensor:
    """A torch sparse matrix whose product with a factor table sums each user's items."""
    coo = bags.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(
        idx, torch.from_numpy(coo.data.astype(np.float32)), coo.shape, check_invariants=False
    ).coalesce()
