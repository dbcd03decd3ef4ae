"""Hybrid two-tower retriever: ID + text item tower, sequence user tower, InfoNCE.

Item tower: a learned ID embedding and a projection of the item's text vector
(all-MiniLM-L6-v2), fused by a learned gate (or ``sum``, ``concat``, ``adaptive-mimic``),
L2-normalized. Items never seen in training, and a random share of items at every training
step (ID dropout), use a frozen all-zero cold-start row instead of their ID, so the text
path alone must place them: a brand-new item is served by its text.

User tower: the same item tower embeds the last ``max_len`` history items; a GRU, an LSTM
or causal self-attention (SASRec-style) reads them, a projection gives the user vector.
Every position predicts the next item (all targets of a window train in one pass).

Loss: InfoNCE at temperature ``temperature``. Over small catalogues (``negatives="full"``,
or ``auto`` below ``full_softmax_max`` items) every item is a negative: exact and cheap
(MovieLens-100K has 1,682 items). Otherwise the candidates are the batch's targets plus
``sampled_negatives`` uniform catalogue items, with log-Q correction for how often each
candidate is drawn (popular items are in-batch negatives more often) and accidental hits
(a candidate equal to the row's own target) removed.

Side features (optional, ``use_side``): when the item features carry a ``side`` matrix
(``models/side_features.py``: numeric metadata, title statistics, top authors and
categories), the item tower adds its projection to the item vector and bias, and the user
tower adds a projection of the running mean of those features over the history plus the
history's length (user aggregates). Without them the towers are exactly the ones above.

Scores are dot products of ``encode_users`` and ``encode_items`` (C4).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.configs import ModelConfig, TwoTowerConfig, resolve_config
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

PAD, COLD = 0, 1
SPECIAL_ROWS = 2
"""Rows before item 0 in the ID table: padding and the frozen cold-start row."""

Fusion = Literal["gate", "sum", "concat", "adaptive-mimic"]
Encoder = Literal["gru", "lstm", "attention"]


class ItemTower(nn.Module):
    """ID embedding ⊕ projected text vector → fused, L2-normalized item vector."""

    text: torch.Tensor
    """Buffer ``(n_items, text_dim)``: the items' text vectors."""
    warm: torch.Tensor
    """Buffer ``(n_items,)`` bool: items seen in training (the rest use the cold-start row)."""
    counts: torch.Tensor
    """Buffer ``(n_items,)``: training interactions per item."""
    side: torch.Tensor
    """Buffer ``(n_items, side_dim)`` (only with side features): the items' side features."""

    def __init__(
        self, n_items: int, dim: int, text_dim: int, fusion: Fusion, mimic_k: float, side_dim: int = 0
    ) -> None:
        super().__init__()
        self.side_dim = side_dim
        if side_dim:
            self.register_buffer("side", torch.zeros(n_items, side_dim))
            self.side_proj = nn.Sequential(nn.Linear(side_dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.side_bias = nn.Linear(dim, 1)
        if fusion not in ("gate", "sum", "concat", "adaptive-mimic"):
            raise ValueError(f"two-tower: fusion must be gate, sum, concat or adaptive-mimic, got {fusion!r}")
        self.n_items, self.dim, self.text_dim, self.fusion, self.mimic_k = (
            n_items,
            dim,
            text_dim,
            fusion,
            mimic_k,
        )
        self.id_emb = nn.Embedding(n_items + SPECIAL_ROWS, dim)
        nn.init.normal_(self.id_emb.weight, std=0.1)
        with torch.no_grad():
            self.id_emb.weight[:SPECIAL_ROWS] = 0.0
        # The padding and cold-start rows never learn: a cold item means "no ID knowledge".
        self.id_emb.weight.register_hook(_zero_special_rows)
        # a per-item popularity bias (a learned ID part plus a text part for cold items); it
        # rides along as one extra coordinate, so scores stay a dot product (C4)
        self.id_bias = nn.Embedding(n_items + SPECIAL_ROWS, 1)
        nn.init.zeros_(self.id_bias.weight)
        self.id_bias.weight.register_hook(_zero_special_rows)
        self.register_buffer("text", torch.zeros(n_items, text_dim))
        self.register_buffer("warm", torch.zeros(n_items, dtype=torch.bool))
        self.register_buffer("counts", torch.zeros(n_items))
        if text_dim:
            self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.text_bias = nn.Linear(dim, 1)
            if fusion == "gate":
                self.gate = nn.Linear(2 * dim, dim)
            elif fusion == "concat":
                self.mix = nn.Linear(2 * dim, dim)

    def forward(self, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All item vectors ``(n_items, dim)`` (unit norm), biases ``(n_items,)`` and the
        auxiliary (mimic) loss."""
        use_id = self.warm if drop is None else self.warm & ~drop
        rows = torch.arange(self.n_items, device=self.warm.device) + SPECIAL_ROWS
        rows = torch.where(use_id, rows, torch.full_like(rows, COLD))
        id_vec = self.id_emb(rows)
        bias = self.id_bias(rows).squeeze(-1)
        aux = id_vec.new_zeros(())
        if self.side_dim:
            side_vec = self.side_proj(self.side)
            bias = bias + self.side_bias(side_vec).squeeze(-1)
            id_vec = id_vec + side_vec
        if not self.text_dim:
            return F.normalize(id_vec, dim=-1), bias, aux
        text_vec = self.text_proj(self.text)
        bias = bias + self.text_bias(text_vec).squeeze(-1)
        if self.fusion == "sum":
            out = id_vec + text_vec
        elif self.fusion == "gate":
            g = torch.sigmoid(self.gate(torch.cat([id_vec, text_vec], dim=-1)))
            out = g * id_vec + (1.0 - g) * text_vec
        elif self.fusion == "concat":
            out = self.mix(torch.cat([id_vec, text_vec], dim=-1))
        else:  # adaptive-mimic: text learns to imitate the ID vector; trust IDs with more data
            alpha = torch.where(
                use_id, self.counts / (self.counts + self.mimic_k), torch.zeros_like(self.counts)
            )
            out = alpha[:, None] * id_vec + (1.0 - alpha[:, None]) * text_vec
            if use_id.any():
                aux = (text_vec[use_id] - id_vec[use_id].detach()).pow(2).sum(-1).mean()
        return F.normalize(out, dim=-1), bias, aux


def _zero_special_rows(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    grad[:SPECIAL_ROWS] = 0.0
    return grad


class UserTower(nn.Module):
    """Sequence of item vectors → one vector per position (causal), L2-normalized."""

    def __init__(
        self, dim: int, encoder: Encoder, max_len: int, layers: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        if encoder not in ("gru", "lstm", "attention"):
            raise ValueError(f"two-tower: encoder must be gru, lstm or attention, got {encoder!r}")
        self.encoder, self.heads = encoder, heads
        self.drop = nn.Dropout(dropout)
        if encoder == "attention":
            self.pos = nn.Embedding(max_len, dim)
            nn.init.normal_(self.pos.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
        else:
            rnn = nn.GRU if encoder == "gru" else nn.LSTM
            self.rnn = rnn(
                dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
            )
        self.proj = nn.Linear(dim, dim)

    def forward(self, seq: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``seq`` (B, L, d) left-padded, ``pad`` (B, L) True at padding → (B, L, d)."""
        x = self.drop(seq)
        if self.encoder == "attention":
            length = seq.shape[1]
            x = x + self.pos.weight[-length:][None]
            causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
            allowed = causal[None] & ~pad[:, None, :]
            allowed |= torch.eye(length, dtype=torch.bool, device=seq.device)[None]
            mask = (~allowed).repeat_interleave(self.heads, dim=0)
            x = self.norm(self.blocks(x, mask=mask))
        else:
            x, _ = self.rnn(x)
        return F.normalize(self.proj(self.drop(x)), dim=-1)


class TwoTowerNet(nn.Module):
    def __init__(self, n_items: int, text_dim: int, p: dict[str, Any], side_dim: int = 0) -> None:
        super().__init__()
        self.items = ItemTower(n_items, p["dim"], text_dim, p["fusion"], p["mimic_k"], side_dim)
        self.users = UserTower(p["dim"], p["encoder"], p["max_len"], p["layers"], p["heads"], p["dropout"])
        if side_dim:  # user aggregates: mean side features of the history so far + its length
            self.user_side = nn.Linear(side_dim + 1, p["dim"])

    def user_states(self, item_table: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """``seqs`` (B, L) of item index + 1 (0 = padding) → user vector per position."""
        table = torch.cat([item_table.new_zeros(1, item_table.shape[1]), item_table])
        states = self.users(table[seqs], seqs == 0)
        if not self.items.side_dim:
            return states
        side = torch.cat([self.items.side.new_zeros(1, self.items.side_dim), self.items.side])
        seen = (seqs > 0).float()[..., None]
        count = seen.cumsum(dim=1)
        mean = (side[seqs] * seen).cumsum(dim=1) / count.clamp(min=1.0)
        length = torch.log1p(count) / float(np.log1p(seqs.shape[1]))
        return F.normalize(states + self.user_side(torch.cat([mean, length], dim=-1)), dim=-1)


def accidental_hits(targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(R, C) True where candidate ``c`` is row ``r``'s own target but not the column that
    carries it as the positive (the first occurrence): those columns are removed from the
    softmax, else the model is pushed away from the very item it should rank first."""
    same = targets[:, None] == candidates[None, :]
    first = same.float().argmax(dim=1)
    keep = torch.zeros_like(same)
    keep[torch.arange(len(targets)), first] = True
    return same & ~keep


def info_nce(
    users: torch.Tensor,
    targets: torch.Tensor,
    item_table: torch.Tensor,
    temperature: float,
    candidates: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of user vectors against their target items.

    ``candidates=None``: every catalogue item is a candidate (full softmax). Otherwise the
    given candidate item indices, which must include each row's target; ``log_q`` (per
    candidate) is subtracted from the logits (sampling-bias correction) and accidental hits
    are masked. ``bias`` (per item) is added to the logits.
    """
    if candidates is None:
        logits = users @ item_table.T / temperature
        if bias is not None:
            logits = logits + bias[None, :]
        return F.cross_entropy(logits, targets)
    logits = users @ item_table[candidates].T / temperature
    if bias is not None:
        logits = logits + bias[candidates][None, :]
    if log_q is not None:
        logits = logits - log_q[None, :]
    logits = logits.masked_fill(accidental_hits(targets, candidates), float("-inf"))
    positive = (targets[:, None] == candidates[None, :]).float().argmax(dim=1)
    return F.cross_entropy(logits, positive)


class TwoTowerModel:
    """The hybrid retriever behind the ``two-tower`` name (see the module docstring)."""

    name: ClassVar[str] = "two-tower"
    Config: ClassVar[type[TwoTowerConfig]] = TwoTowerConfig

    def __init__(self, config: ModelConfig | None = None, /, **params: Any) -> None:
        """From a :class:`TwoTowerConfig`, or keyword parameters validated by it (a bad or
        unknown one fails with its name)."""
        self.config = resolve_config(TwoTowerConfig, config, params)
        self.p: dict[str, Any] = self.config.model_dump()
        self.features: ItemFeatures | None = None
        self.net: TwoTowerNet | None = None
        self.device = pick_device(self.p["device"])
        self._validation: tuple[list[np.ndarray], list[np.ndarray]] | None = None
        self._initial_state: dict[str, torch.Tensor] | None = None
        self.report = FitReport()

    # ----- contract -------------------------------------------------------------------
    def set_item_features(self, features: ItemFeatures) -> None:
        self.features = features

    def set_validation(self, histories: list[np.ndarray], targets: list[np.ndarray]) -> None:
        """Early stopping on these (validation NDCG@10, history items masked)."""
        self._validation = (histories, targets)

    def set_initial_state(self, state: dict[str, torch.Tensor]) -> None:
        """Warm start: ``fit`` loads these weights (grown ID tables included) before training."""
        self._initial_state = state

    def id_tables(self) -> dict[str, tuple[Literal["item", "user"], int]]:
        return {"items.id_emb.weight": ("item", SPECIAL_ROWS), "items.id_bias.weight": ("item", SPECIAL_ROWS)}

    def training_curve(self) -> list[dict[str, Any]]:
        return list(self.report.curve)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.p.items() if k not in ("device", "progress")}

    def fit(self, train: sp.csr_matrix, histories: list[np.ndarray]) -> None:
        seed_everything(self.p["seed"])
        n_items = train.shape[1]
        features = self.features if self.features is not None else ItemFeatures.empty(n_items)
        if features.n_items != n_items:
            raise ValueError(
                f"two-tower: item features cover {features.n_items} items, the training matrix {n_items}"
            )
        if self._validation is not None:
            fit_hist, (val_hist, val_targets) = histories, self._validation
        else:
            fit_hist, val_targets = holdout_last(histories)
            val_hist = fit_hist
        text = features.text if self.p["use_text"] and features.text is not None else None
        side = features.side if self.p["use_side"] and features.side is not None else None
        self.net = TwoTowerNet(
            n_items, 0 if text is None else text.shape[1], self.p, 0 if side is None else side.shape[1]
        ).to(self.device)
        counts = np.bincount(
            np.concatenate([np.asarray(h) for h in fit_hist]) if fit_hist else [], minlength=n_items
        )
        items = self.net.items
        with torch.no_grad():
            if text is not None:
                items.text.copy_(torch.tensor(text))
            if side is not None:
                items.side.copy_(torch.tensor(side))
            items.counts.copy_(torch.from_numpy(counts.astype(np.float32)))
            items.warm.copy_(torch.from_numpy(counts > 0))
        if self._initial_state is not None:
            state = grow_to_fit(self._initial_state, self.id_tables(), {"item": n_items}, self.p["seed"])
            load_matching(self.net, state, skip=DATA_BUFFERS)
        windows = make_windows(fit_hist, self.p["max_len"])
        sequences = [np.asarray(h, dtype=np.int64) + 1 for h in fit_hist if len(h) >= 2]
        full = self.p["negatives"] == "full" or (
            self.p["negatives"] == "auto" and n_items <= self.p["full_softmax_max"]
        )
        prob = torch.from_numpy((counts + 1) / (counts.sum() + n_items)).float().to(self.device)
        config = FitConfig(
            epochs=self.p["epochs"],
            lr=self.p["lr"],
            weight_decay=self.p["weight_decay"],
            clip_norm=self.p["clip_norm"],
            patience=self.p["patience"],
            warmup_epochs=self.p["warmup_epochs"],
            seed=self.p["seed"],
            progress=self.p["progress"],
            max_seconds=self.p["max_seconds"],
            max_cpu_seconds=self.p["max_cpu_seconds"],
            threads=self.p["threads"],
        )
        bs = self.p["batch_size"]

        def make_batches(rng: np.random.Generator) -> list[torch.Tensor]:
            epoch = (
                windows if self.p["windows"] == "all" else random_windows(sequences, self.p["max_len"], rng)
            )
            order = rng.permutation(len(epoch))
            return [torch.from_numpy(epoch[order[s : s + bs]]) for s in range(0, len(order), bs)]

        def loss_fn(batch: torch.Tensor) -> torch.Tensor:
            net = self.net
            assert net is not None
            batch = batch.to(self.device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            drop = torch.rand(n_items, device=self.device) < self.p["id_dropout"]
            table, bias, aux = net.items(drop)
            bias = bias if self.p["item_bias"] else None
            states = net.user_states(table, inputs)
            valid = targets > 0
            users, target_items = states[valid], targets[valid] - 1
            if full:
                loss = info_nce(users, target_items, table, self.p["temperature"], bias=bias)
            else:
                in_batch = torch.unique(target_items)
                sampled = torch.randint(0, n_items, (self.p["sampled_negatives"],), device=self.device)
                candidates = torch.cat([in_batch, sampled])
                log_q = None
                if self.p["logq"]:
                    # chance of being a candidate: drawn as someone's target, or sampled uniformly
                    q = (
                        1
                        - (1 - prob[candidates]) ** len(target_items)
                        + self.p["sampled_negatives"] / n_items
                    )
                    log_q = torch.log(q.clamp(min=1e-12))
                loss = info_nce(users, target_items, table, self.p["temperature"], candidates, log_q, bias)
            return loss + self.p["mimic_weight"] * aux

        def validate() -> float:
            return ndcg_at_10(self._score_all, val_hist, val_targets)

        started = time.perf_counter()
        self.report = fit_module(
            self.net, config, make_batches, loss_fn, validate, desc=f"two-tower[{self.p['encoder']}]"
        )
        self.report.seconds = round(time.perf_counter() - started, 3)
        self._initial_state = None

    def encode_items(self) -> np.ndarray:
        """``(n_items, dim + 1)``: the unit item vector and the item's bias as last coordinate."""
        table, bias = self._item_table()
        return torch.cat([table, bias[:, None]], dim=1).cpu().numpy().astype(np.float32)

    def encode_users(self, histories: list[np.ndarray]) -> np.ndarray:
        """``(n, dim + 1)``: the user vector over the temperature and a 1 for the item bias, so
        ``encode_users(h) @ encode_items().T`` is the training logit."""
        net = self._net()
        out = []
        with torch.no_grad():
            table, _ = self._item_table()
            for start in range(0, len(histories), 1024):
                seqs = torch.from_numpy(left_pad(histories[start : start + 1024], self.p["max_len"])).to(
                    self.device
                )
                states = net.user_states(table, seqs)[:, -1]
                empty = (seqs[:, -1] == 0)[:, None]
                states = torch.where(empty, torch.zeros_like(states), states) / self.p["temperature"]
                ones = torch.full_like(states[:, :1], 1.0 if self.p["item_bias"] else 0.0)
                out.append(torch.cat([states, ones], dim=1).cpu())
        if not out:
            return np.zeros((0, self.p["dim"] + 1), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def score(self, histories: list[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        users = self.encode_users(histories)
        table = self.encode_items()
        if items is not None:
            table = table[np.asarray(items, dtype=np.int64)]
        return users @ table.T

    def save(self, directory: Path) -> None:
        net = self._net()
        meta = {
            "name": self.name,
            "params": self.params(),
            "n_items": net.items.n_items,
            "text_dim": net.items.text_dim,
            "side_dim": net.items.side_dim,
            "training_curve": self.report.curve,
        }
        write_checkpoint(directory, net, meta)

    @classmethod
    def load(cls, directory: Path) -> TwoTowerModel:
        meta = read_meta(directory)
        model = cls(**{**meta["params"], "progress": False})
        model.net = TwoTowerNet(meta["n_items"], meta["text_dim"], model.p, meta.get("side_dim", 0)).to(
            model.device
        )
        load_weights(directory, model.net, model.device)
        model.report = FitReport(curve=meta.get("training_curve", []))
        return model

    # ----- internals ------------------------------------------------------------------
    def _net(self) -> TwoTowerNet:
        if self.net is None:
            raise RuntimeError("two-tower: the model is not fitted or loaded yet")
        return self.net

    def _item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        net = self._net()
        net.eval()
        with torch.no_grad():
            table, bias, _ = net.items()
            return table, bias

    def _score_all(self, histories: list[np.ndarray]) -> np.ndarray:
        return self.score(histories)


DATA_BUFFERS = ("items.text", "items.warm", "items.counts", "items.side")
"""State entries that describe the current catalogue, never carried over by a warm start."""


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> list[str]:
    """Load every tensor of ``state`` whose name and shape match ``module``'s (C4 warm start);
    returns the names that did not match and kept their fresh initialisation."""
    own = module.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and k not in skip and own[k].shape == v.shape}
    own.update({k: v.to(own[k].device, own[k].dtype) for k, v in loaded.items()})
    module.load_state_dict(own, strict=True)
    return sorted(set(own) - set(loaded) - set(skip))


def grow_id_tables(
    state: dict[str, torch.Tensor],
    tables: dict[str, tuple[str, int]],
    sizes: dict[str, int],
    index_maps: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose ID tables have ``sizes[space]`` id rows (plus their special
    rows). Learned rows are kept: old row ``i`` moves to ``index_maps[space][i]`` (default:
    stays at ``i``; -1 drops it); new rows are drawn like the old ones (same std)."""
    out = dict(state)
    gen = torch.Generator().manual_seed(seed)
    for key, (space, special) in tables.items():
        old = state[key]
        n_new = sizes[space]
        mapping = index_maps.get(space) if index_maps else None
        if mapping is None:
            mapping = np.arange(old.shape[0] - special)
        std = float(old[special:].std()) if old.shape[0] > special + 1 else 0.1
        grown = torch.randn(n_new + special, *old.shape[1:], generator=gen, dtype=old.dtype) * std
        grown[:special] = old[:special]
        keep = mapping >= 0
        grown[torch.from_numpy(mapping[keep] + special)] = old[special:][
            torch.from_numpy(np.flatnonzero(keep))
        ]
        out[key] = grown
    return out


def grow_to_fit(
    state: dict[str, torch.Tensor], tables: Mapping[str, tuple[str, int]], sizes: dict[str, int], seed: int
) -> dict[str, torch.Tensor]:
    """Grow ID tables that are shorter than the current id space (rows keep their index), so a
    state from a smaller catalogue still keeps its learned rows; a table of the right size or
    an already remapped one (``grow_id_tables`` with index maps) passes unchanged."""
    short = {k: t for k, t in tables.items() if k in state and state[k].shape[0] - t[1] < sizes[t[0]]}
    return grow_id_tables(state, short, sizes, seed=seed) if short else state


def make_windows(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    """Every history cut from its end into windows of ``max_len + 1`` (item index + 1, left
    padded with 0): each window trains ``max_len`` next-item predictions."""
    rows = []
    for h in histories:
        h = np.asarray(h, dtype=np.int64) + 1
        end = len(h)
        while end >= 2:
            chunk = h[max(0, end - max_len - 1) : end]
            rows.append(np.concatenate([np.zeros(max_len + 1 - len(chunk), np.int64), chunk]))
            end -= max_len
    if not rows:
        raise ValueError("two-tower: no user has two or more training interactions; nothing to learn")
    return np.stack(rows)


def random_windows(sequences: list[np.ndarray], max_len: int, rng: np.random.Generator) -> np.ndarray:
    """One window per user ending at a random position: an epoch costs one window per user
    (not one per ``max_len`` items), and over epochs every position is a target."""
    out = np.zeros((len(sequences), max_len + 1), dtype=np.int64)
    for row, seq in enumerate(sequences):
        end = int(rng.integers(2, len(seq) + 1))
        chunk = seq[max(0, end - max_len - 1) : end]
        out[row, max_len + 1 - len(chunk) :] = chunk
    return out


def left_pad(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    """The last ``max_len`` items of each history as item index + 1, left padded with 0."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = tail + 1
    return out
