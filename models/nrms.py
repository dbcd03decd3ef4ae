"""NRMS: neural news recommendation with multi-head self-attention (Wu et al., EMNLP 2019).

News encoder: the words of a story's title (and the start of its summary), embedded with
the pre-trained input embedding matrix of the text model (all-MiniLM-L6-v2's WordPiece
tokenizer and its 30,522 × 384 word embeddings) → multi-head self-attention over the words
→ additive attention pooling → one news vector. User encoder: multi-head self-attention over
the vectors of the stories the user clicked → additive attention → one user vector. A
story's score for a user is the dot product of the two.

Training is listwise, as in the paper: for every click in an impression, the clicked story
and ``negatives`` stories shown in the same impression but not clicked form one softmax
over ``1 + negatives`` candidates, whose cross-entropy is minimized. Without an impression
log (``fit(train, histories)`` alone) the next click of each history is the positive and
the negatives are drawn from the catalogue.

Why the news vectors are precomputed: the news encoder only depends on the text, so after
training every item's vector is computed once and saved beside the weights
(``news_vectors.npy``); serving then needs only the small user encoder per request.
Only the word-embedding rows of tokens that occur in the catalogue are kept (a few thousand
of 30,522), so the checkpoint stays small and loading needs no text model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from models.configs import ModelConfig, NRMSConfig, resolve_config
from models.features import ItemFeatures
from models.impression_metrics import impression_metrics

PAD, UNK = 0, 1


@dataclass(frozen=True)
class Impression:
    """One impression in item indices: what the user had clicked before, what was shown, what
    they clicked of it. ``history`` is oldest first; ``clicked`` is a bool per shown item."""

    history: np.ndarray
    shown: np.ndarray
    clicked: np.ndarray


class MultiHeadSelfAttention(nn.Module):
    """Per-head query/key/value projections of ``in_dim`` inputs, scaled dot-product
    attention with a key mask, heads concatenated to ``n_heads * head_dim``."""

    def __init__(self, in_dim: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.qkv = nn.Linear(in_dim, 3 * n_heads * head_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, in_dim), ``mask`` (B, L) True where real → (B, L, n_heads*head_dim)."""
        return self.attend(self.qkv(x), mask)

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention from already projected ``qkv`` (B, L, 3·n_heads·head_dim)."""
        b, length, _ = qkv.shape
        q, k, v = qkv.view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Plain matmuls: for sequences of a few dozen words they beat the fused CPU kernel.
        logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
        weights = torch.softmax(logits.masked_fill(~mask[:, None, None, :], -1e9), dim=-1)
        return (weights @ v).transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim)


class AdditiveAttention(nn.Module):
    """``a_i = softmax(qᵀ tanh(W h_i + b))`` over the real positions; returns ``Σ a_i h_i``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.query(torch.tanh(self.proj(h))).squeeze(-1).masked_fill(~mask, -1e9)
        return torch.einsum("bl,bld->bd", torch.softmax(logits, dim=-1), h)


class NewsEncoder(nn.Module):
    """Token ids (N, L) → news vectors (N, d).

    The query/key/value projection is linear in the (normalized) word vector, so it is
    applied once to each vocabulary row and then gathered per token: the same result as
    projecting every token, at a fraction of the cost when a batch holds thousands of
    stories over a vocabulary of a few thousand words.
    """

    def __init__(
        self, vocab: int, word_dim: int, n_heads: int, head_dim: int, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, word_dim, padding_idx=PAD)
        self.norm = nn.LayerNorm(word_dim)
        self.attention = MultiHeadSelfAttention(word_dim, n_heads, head_dim)
        self.pool = AdditiveAttention(n_heads * head_dim, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != PAD
        table = self.attention.qkv(self.norm(self.words.weight))
        h = self.dropout(self.attention.attend(table[tokens], mask))
        return self.pool(h, mask)


class UserEncoder(nn.Module):
    """Clicked news vectors (B, H, d) with a mask → user vectors (B, d). A user with no
    clicks gets a learned vector (what a newcomer tends to click)."""

    def __init__(self, dim: int, n_heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention(dim, n_heads, dim // n_heads)
        self.pool = AdditiveAttention(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.empty = nn.Parameter(torch.zeros(dim))

    def forward(self, clicked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        has_any = mask.any(dim=1)
        safe = mask | ~has_any[:, None]  # an all-masked row would make softmax NaN
        h = self.dropout(self.attention(clicked, safe))
        users = self.pool(h, safe)
        return torch.where(has_any[:, None], users, self.empty.expand_as(users))


class NRMSNet(nn.Module):
    """News and user encoders; ``item_tokens`` (n_items, L), ``item_text`` (n_items, t) and
    ``item_topic`` (n_items,) are buffers, so the checkpoint carries every item's inputs and
    needs no tokenizer or text model to score.

    A news vector is the word-attention vector plus a learned projection of the story's
    sentence vector (MiniLM over title and summary: the whole abstract, where the word
    encoder reads only the first ``max_tokens`` words) plus its topic's embedding. The
    sentence vector is what makes a story with few clicks as well placed as text similarity
    places it; the attention layers learn what the readers add to it.
    """

    item_tokens: torch.Tensor
    item_text: torch.Tensor
    item_topic: torch.Tensor

    def __init__(
        self,
        item_tokens: torch.Tensor,
        vocab: int,
        word_dim: int,
        n_heads: int,
        head_dim: int,
        hidden: int,
        dropout: float,
        item_text: torch.Tensor | None = None,
        item_topic: torch.Tensor | None = None,
        n_topics: int = 1,
    ) -> None:
        super().__init__()
        n_items = item_tokens.shape[0]
        dim = n_heads * head_dim
        self.register_buffer("item_tokens", item_tokens)
        self.register_buffer("item_text", item_text if item_text is not None else torch.zeros(n_items, 0))
        self.register_buffer(
            "item_topic", item_topic if item_topic is not None else torch.zeros(n_items, dtype=torch.long)
        )
        self.news = NewsEncoder(vocab, word_dim, n_heads, head_dim, hidden, dropout)
        self.text_proj = nn.Linear(self.item_text.shape[1], dim) if self.item_text.shape[1] else None
        self.topics = nn.Embedding(max(n_topics, 1), dim)
        nn.init.normal_(self.topics.weight, std=0.01)
        self.user = UserEncoder(dim, n_heads, hidden, dropout)

    def encode_news(self, items: torch.Tensor) -> torch.Tensor:
        tokens = self.item_tokens[items]
        return self.encode_inputs(tokens, self.item_text[items], self.item_topic[items])

    def encode_inputs(self, tokens: torch.Tensor, text: torch.Tensor, topic: torch.Tensor) -> torch.Tensor:
        """News vectors from raw inputs (how a story published after training is encoded)."""
        width = int((tokens != PAD).sum(dim=1).max().item()) if len(tokens) else 1
        out = self.news(tokens[:, : max(width, 1)]) + self.topics(
            topic.clamp(0, self.topics.num_embeddings - 1)
        )
        if self.text_proj is not None:
            out = out + self.text_proj(text)
        return out


class NRMSModel:
    """The recflow contract around :class:`NRMSNet` (see models/base.py and contract C4).

    Call :meth:`set_item_texts` (or pass ``item_texts`` to :meth:`fit`) first: NRMS reads
    stories, so it needs each item index's text.
    """

    name: ClassVar[str] = "nrms"

    Config: ClassVar[type[NRMSConfig]] = NRMSConfig

    def __init__(self, config: ModelConfig | None = None, /, **params: Any) -> None:
        """From an :class:`NRMSConfig`, or keyword parameters validated by it."""
        self.config = c = resolve_config(NRMSConfig, config, params)
        self.text_model = c.text_model
        self.max_tokens = c.max_tokens
        self.n_heads = c.n_heads
        self.head_dim = c.head_dim
        self.attention_hidden = c.attention_hidden
        self.dropout = c.dropout
        self.negatives = c.negatives
        self.max_history = c.max_history
        self.epochs = c.epochs
        self.batch_size = c.batch_size
        self.lr = c.lr
        self.weight_decay = c.weight_decay
        self.train_word_embeddings = c.train_word_embeddings
        self.seed = c.seed
        self.device = c.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.progress = c.progress
        self.texts: list[str] | None = None
        self.text_vectors: np.ndarray | None = None
        self.topic_names: list[str] = []
        self.item_topic_ids: np.ndarray | None = None
        self.use_text_vectors = c.use_text_vectors
        self.net: NRMSNet | None = None
        self.vocab_ids = np.zeros(0, dtype=np.int64)
        """Text-model token id of each kept vocabulary row (rows 0/1 are padding/unknown)."""
        self.news_vectors = np.zeros((0, c.n_heads * c.head_dim), dtype=np.float32)
        self._initial_state: dict[str, torch.Tensor] | None = None
        self._curve: list[dict[str, Any]] = []
        self._sample_histories: list[np.ndarray] = []
        self._impressions: list[Impression] | None = None

    # -- contract --------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return int(self.news_vectors.shape[0])

    @property
    def dim(self) -> int:
        return self.n_heads * self.head_dim

    def params(self) -> dict[str, Any]:
        return {
            "text_model": self.text_model,
            "max_tokens": self.max_tokens,
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "attention_hidden": self.attention_hidden,
            "dropout": self.dropout,
            "negatives": self.negatives,
            "max_history": self.max_history,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "train_word_embeddings": self.train_word_embeddings,
            "use_text_vectors": self.use_text_vectors,
            "seed": self.seed,
        }

    def set_item_texts(self, texts: Sequence[str]) -> None:
        """The text of every item index ``0..n_items-1`` (e.g. title plus summary)."""
        self.texts = ["" if t is None else str(t) for t in texts]

    def set_text_vectors(self, vectors: np.ndarray) -> None:
        """Sentence vectors of every item (the pipeline's MiniLM vectors of title + summary);
        without them ``fit`` encodes the item texts itself when ``use_text_vectors``."""
        self.text_vectors = np.asarray(vectors, dtype=np.float32)

    def set_item_topics(self, topics: Sequence[str | None]) -> None:
        """Topic (category) of every item; the news encoder learns one vector per topic."""
        names = sorted({str(t) for t in topics if t})
        self.topic_names = names
        position = {t: i + 1 for i, t in enumerate(names)}  # 0: no topic
        self.item_topic_ids = np.asarray(
            [position.get(str(t), 0) if t else 0 for t in topics], dtype=np.int64
        )

    def set_item_features(self, features: ItemFeatures) -> None:
        """The pipeline's item side information: the texts NRMS reads, their MiniLM vectors
        (when embedding is on) and the first category of each item as its topic."""
        if features.texts is None:
            raise ValueError("nrms: the item features carry no texts (titles and descriptions)")
        self.set_item_texts(features.texts)
        if features.text is not None:
            self.set_text_vectors(features.text)
        names = features.category_names
        cats = features.categories
        self.set_item_topics(
            [names[int(np.argmax(row))] if len(names) and row.any() else None for row in cats]
        )

    def set_impressions(self, impressions: Sequence[Impression]) -> None:
        """What ``fit(train, histories)`` learns from when given no impressions itself: the
        clicked against the shown-but-not-clicked stories (an empty log: next-click training)."""
        self._impressions = list(impressions)

    def id_tables(self) -> dict[str, tuple[Literal["item", "user"], int]]:
        """NRMS has no ID embedding tables: items are their text, users their clicks."""
        return {}

    def set_initial_state(self, state: dict[str, torch.Tensor]) -> None:
        """Warm start: the attention and pooling tensors whose name and shape match are
        loaded before training (word vectors and item tokens always come from today's texts)."""
        self._initial_state = state

    def training_curve(self) -> list[dict[str, Any]]:
        return list(self._curve)

    def fit(
        self,
        train: sp.csr_matrix,
        histories: list[np.ndarray],
        *,
        item_texts: Sequence[str] | None = None,
        impressions: Sequence[Impression] | None = None,
        valid_impressions: Sequence[Impression] | None = None,
    ) -> None:
        """Train on ``impressions`` when given (listwise over shown-but-not-clicked), else on
        next-click prediction over ``histories`` with catalogue negatives.

        ``valid_impressions`` adds a validation nDCG@10 to the training curve, and the
        epoch with the best validation AUC is kept.
        """
        if item_texts is not None:
            self.set_item_texts(item_texts)
        if impressions is None and self._impressions and any(np.any(i.clicked) for i in self._impressions):
            impressions = self._impressions
        if self.texts is None:
            raise ValueError(
                "nrms: item texts are missing; call set_item_texts(texts) or fit(item_texts=...)"
            )
        n_items = len(self.texts)
        if n_items == 0:
            raise ValueError("nrms: the catalogue has no items to read (is the warehouse loaded?)")
        if valid_impressions is not None and not any(
            0 < np.count_nonzero(imp.clicked) < len(imp.clicked) for imp in valid_impressions
        ):
            raise ValueError("nrms: no validation impression has both clicks and non-clicks")
        if train.shape[1] != n_items:
            raise ValueError(f"nrms: train has {train.shape[1]} item columns but {n_items} item texts")
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        tokens, vocab_ids, word_vectors = self._tokenize(self.texts)
        self.vocab_ids = vocab_ids
        text, topic = self._item_side_inputs(n_items)
        self.net = self._build(torch.from_numpy(tokens), len(vocab_ids), word_vectors.shape[1], text, topic)
        self.net.news.words.weight.data.copy_(torch.from_numpy(word_vectors))
        self.net.news.words.weight.requires_grad_(self.train_word_embeddings)
        if self._initial_state is not None:
            self._load_matching(self._initial_state)
        self.net.to(self.device)

        samples = (
            self._impression_samples(impressions, n_items, rng)
            if impressions is not None
            else self._history_samples(histories, n_items, rng)
        )
        if samples[0].shape[0] == 0:
            raise ValueError("nrms: nothing to train on (no clicks in the impressions or histories)")
        optimizer = torch.optim.AdamW(
            [p for p in self.net.parameters() if p.requires_grad], lr=self.lr, weight_decay=self.weight_decay
        )
        self._curve = []
        best_auc, best_state = -math.inf, None
        for epoch in range(1, self.epochs + 1):
            started = time.perf_counter()
            loss = self._train_epoch(samples, optimizer, rng, epoch)
            val_ndcg: float | None = None
            val_auc: float | None = None
            if valid_impressions:
                self.news_vectors = self._encode_all_items()
                val = self.evaluate(valid_impressions)
                val_ndcg, val_auc = float(val["nDCG@10"]), float(val["AUC"])
                if val_auc > best_auc:
                    best_auc = val_auc
                    best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            self._curve.append(
                {
                    "epoch": epoch,
                    "loss": loss,
                    "val_ndcg10": val_ndcg,
                    "val_auc": val_auc,
                    "seconds": time.perf_counter() - started,
                }
            )
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.news_vectors = self._encode_all_items()

    def encode_items(self) -> np.ndarray:
        """The precomputed news vectors ``(n_items, d)`` float32."""
        return self.news_vectors

    def encode_stories(
        self,
        texts: Sequence[str],
        text_vectors: np.ndarray | None = None,
        topics: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """News vectors ``(len(texts), d)`` of stories published after training (a freshness
        update): tokenized onto the kept vocabulary (a word the catalogue never had reads as
        unknown), with their MiniLM vectors (encoded here when not given) and topics (one
        the model never saw reads as none). A story it was trained with gets its own vector."""
        net = self._require_net()
        from models.text_encoder import load_text_model

        tokenizer = load_text_model(self.text_model, "cpu").tokenizer
        row_of = {int(t): i for i, t in enumerate(self.vocab_ids) if i >= 2}
        encoded = tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=self.max_tokens
        )["input_ids"]
        width = int(net.item_tokens.shape[1])
        tokens = np.full((len(texts), width), PAD, dtype=np.int64)
        for i, ids in enumerate(encoded):
            rows = [row_of.get(int(t), UNK) for t in ids][:width] or [UNK]
            tokens[i, : len(rows)] = rows
        text = torch.zeros(len(texts), int(net.item_text.shape[1]))
        if net.item_text.shape[1]:
            if text_vectors is None:
                from models.text_encoder import encode

                text_vectors = encode(list(texts), self.text_model, "cpu", 128, progress=False)
            text = torch.from_numpy(np.ascontiguousarray(text_vectors, dtype=np.float32))
        position = {t: i + 1 for i, t in enumerate(self.topic_names)}
        topic_ids = np.asarray([position.get(str(t), 0) if t else 0 for t in (topics or [None] * len(texts))])
        net.eval()
        with torch.no_grad():
            out = net.encode_inputs(
                torch.from_numpy(tokens).to(self.device),
                text.to(self.device),
                torch.from_numpy(topic_ids).to(self.device),
            )
        return out.cpu().numpy().astype(np.float32)

    def encode_users(self, histories: list[np.ndarray]) -> np.ndarray:
        """User vectors ``(len(histories), d)`` float32 from the clicked items (oldest first)."""
        net = self._require_net()
        net.eval()
        vectors = torch.from_numpy(self.news_vectors).to(self.device)
        out = []
        with torch.no_grad():
            for start in range(0, len(histories), 1024):
                hist, mask = self._pad_histories(histories[start : start + 1024])
                clicked = vectors[hist.clamp(min=0).to(self.device)]
                out.append(net.user(clicked, mask.to(self.device)).cpu())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def score(self, histories: list[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        """Dot products of user and news vectors: ``(n_users, n_items)`` or ``(n_users, len(items))``."""
        users = self.encode_users(histories)
        news = self.news_vectors if items is None else self.news_vectors[np.asarray(items, dtype=np.int64)]
        return users @ news.T

    def score_impressions(self, impressions: Sequence[Impression]) -> list[np.ndarray]:
        """One score per shown item of each impression."""
        users = self.encode_users([imp.history for imp in impressions])
        return [self.news_vectors[imp.shown] @ users[i] for i, imp in enumerate(impressions)]

    def evaluate(self, impressions: Sequence[Impression]) -> dict[str, float | int]:
        """MIND's impression metrics (AUC, MRR, nDCG@5, nDCG@10) on ``impressions``."""
        scores = self.score_impressions(impressions)
        return impression_metrics([imp.clicked for imp in impressions], scores).as_dict()

    def save(self, directory: Path) -> None:
        net = self._require_net()
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        torch.save(state, directory / "state.pt")
        np.save(directory / "news_vectors.npy", self.news_vectors)
        np.save(directory / "vocab_ids.npy", self.vocab_ids)
        meta = {
            "name": self.name,
            "params": self.params(),
            "n_items": self.n_items,
            "vocab": len(self.vocab_ids),
            "word_dim": int(net.news.words.weight.shape[1]),
            "item_tokens_shape": list(net.item_tokens.shape),
            "item_text_shape": list(net.item_text.shape),
            "topics": self.topic_names,
            "dim": self.dim,
            "training_curve": self._curve,
        }
        (directory / "model.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> NRMSModel:
        meta = json.loads((directory / "model.json").read_text())
        model = cls(**meta["params"], progress=False)
        model.vocab_ids = np.load(directory / "vocab_ids.npy")
        model.topic_names = list(meta.get("topics", []))
        n_items = meta["item_tokens_shape"][0]
        text_shape = meta.get("item_text_shape", [n_items, 0])
        model.net = model._build(
            torch.zeros(meta["item_tokens_shape"], dtype=torch.long),
            meta["vocab"],
            meta["word_dim"],
            torch.zeros(text_shape),
            torch.zeros(n_items, dtype=torch.long),
        )
        state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
        model.net.load_state_dict(state)
        model.net.to(model.device).eval()
        model.news_vectors = np.load(directory / "news_vectors.npy")
        model._curve = list(meta.get("training_curve", []))
        return model

    # -- internals -------------------------------------------------------------------------
    def _build(
        self,
        item_tokens: torch.Tensor,
        vocab: int,
        word_dim: int,
        item_text: torch.Tensor | None = None,
        item_topic: torch.Tensor | None = None,
    ) -> NRMSNet:
        return NRMSNet(
            item_tokens,
            vocab,
            word_dim,
            self.n_heads,
            self.head_dim,
            self.attention_hidden,
            self.dropout,
            item_text,
            item_topic,
            len(self.topic_names) + 1,
        )

    def _item_side_inputs(self, n_items: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The sentence-vector and topic buffers for ``n_items`` items (checked, or computed)."""
        text: torch.Tensor | None = None
        if self.use_text_vectors:
            if self.text_vectors is None:
                from models.text_encoder import encode

                self.text_vectors = encode(
                    self.texts or [], self.text_model, "cpu", 128, progress=self.progress
                )
            if self.text_vectors.shape[0] != n_items:
                raise ValueError(f"nrms: {self.text_vectors.shape[0]} text vectors for {n_items} item texts")
            text = torch.from_numpy(np.ascontiguousarray(self.text_vectors, dtype=np.float32))
        ids = self.item_topic_ids if self.item_topic_ids is not None else np.zeros(n_items, np.int64)
        if len(ids) != n_items:
            raise ValueError(f"nrms: {len(ids)} item topics for {n_items} item texts")
        return text, torch.from_numpy(ids)

    def _require_net(self) -> NRMSNet:
        if self.net is None:
            raise RuntimeError("nrms: the model is not fitted; call fit() or load()")
        return self.net

    def _tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token matrix (n_items, max_tokens) over a compact vocabulary, the text-model id of
        each vocabulary row, and those rows of the pre-trained word-embedding matrix."""
        from models.text_encoder import load_text_model

        st_model = load_text_model(self.text_model, "cpu")
        tokenizer = st_model.tokenizer
        embeddings = st_model[0].auto_model.get_input_embeddings().weight.detach().cpu().numpy()
        encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_tokens)[
            "input_ids"
        ]
        unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
        arrays = [np.asarray(ids, dtype=np.int64) for ids in encoded if ids]
        used = np.unique(np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64))
        used = used[used != unk].astype(np.int64)
        vocab_ids = np.concatenate([[-1, unk], used]).astype(np.int64)
        row_of = {int(t): i + 2 for i, t in enumerate(used)}
        tokens = np.full((len(texts), self.max_tokens), PAD, dtype=np.int64)
        for i, ids in enumerate(encoded):
            rows = [row_of.get(int(t), UNK) for t in ids] or [UNK]
            tokens[i, : len(rows)] = rows
        vectors = np.zeros((len(vocab_ids), embeddings.shape[1]), dtype=np.float32)
        vectors[1:] = embeddings[vocab_ids[1:]]
        return tokens, vocab_ids, vectors

    def _load_matching(self, state: dict[str, torch.Tensor]) -> None:
        own = self._require_net().state_dict()
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        # Today's catalogue decides the tokens and which word rows are kept, so both come from
        # the text model, never from the old checkpoint (same shape does not mean same words).
        for buffer in ("item_tokens", "item_text", "item_topic", "topics.weight"):
            matching.pop(buffer, None)  # today's items and topic list, never yesterday's
        matching.pop("news.words.weight", None)
        self._require_net().load_state_dict(matching, strict=False)

    def _history_tail(self, history: np.ndarray) -> np.ndarray:
        return np.asarray(history, dtype=np.int64)[-self.max_history :]

    def _impression_samples(
        self, impressions: Sequence[Impression], n_items: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sample → impression index, candidates (S, 1+K) with the click first)."""
        owners: list[int] = []
        candidates: list[np.ndarray] = []
        for i, imp in enumerate(impressions):
            shown = np.asarray(imp.shown, dtype=np.int64)
            clicked = np.asarray(imp.clicked, dtype=bool)
            skipped = shown[~clicked]
            for positive in shown[clicked]:
                pool = skipped if len(skipped) else np.arange(n_items)
                negs = rng.choice(pool, size=self.negatives, replace=len(pool) < self.negatives)
                candidates.append(np.concatenate([[positive], negs]))
                owners.append(i)
        self._sample_histories = [self._history_tail(imp.history) for imp in impressions]
        return np.asarray(owners, dtype=np.int64), np.asarray(candidates, dtype=np.int64).reshape(
            -1, 1 + self.negatives
        )

    def _history_samples(
        self, histories: list[np.ndarray], n_items: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Next-click samples: the prefix of each history predicts its next item."""
        self._sample_histories = []
        candidates: list[np.ndarray] = []
        owners: list[int] = []
        for history in histories:
            history = np.asarray(history, dtype=np.int64)
            for t in range(1, len(history)):
                negs = rng.integers(0, n_items, size=self.negatives)
                negs[negs == history[t]] = (history[t] + 1) % n_items
                owners.append(len(self._sample_histories))
                self._sample_histories.append(history[max(0, t - self.max_history) : t])
                candidates.append(np.concatenate([[history[t]], negs]))
        return np.asarray(owners, dtype=np.int64), np.asarray(candidates, dtype=np.int64).reshape(
            -1, 1 + self.negatives
        )

    def _pad_histories(self, histories: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        tails = [self._history_tail(h) for h in histories]
        width = max([len(t) for t in tails] + [1])
        hist = np.full((len(tails), width), -1, dtype=np.int64)
        for i, t in enumerate(tails):
            if len(t):
                hist[i, -len(t) :] = t
        tensor = torch.from_numpy(hist)
        return tensor, tensor >= 0

    def _train_epoch(
        self,
        samples: tuple[np.ndarray, np.ndarray],
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        epoch: int,
    ) -> float:
        net = self._require_net()
        net.train()
        owners, candidates = samples
        order = rng.permutation(len(owners))
        total, batches = 0.0, 0
        bar = tqdm(
            range(0, len(order), self.batch_size),
            desc=f"nrms epoch {epoch}/{self.epochs}",
            unit="batch",
            disable=not self.progress,
        )
        for start in bar:
            batch = order[start : start + self.batch_size]
            hist, mask = self._pad_histories([self._sample_histories[o] for o in owners[batch]])
            cand = torch.from_numpy(candidates[batch])
            # Encode each story of the batch once, then gather: histories overlap heavily.
            needed = torch.cat([hist[mask], cand.reshape(-1)])
            unique, inverse = torch.unique(needed, return_inverse=True)
            news = net.encode_news(unique.to(self.device))
            n_hist = int(mask.sum())
            clicked = torch.zeros((*hist.shape, news.shape[1]), device=self.device)
            clicked[mask.to(self.device)] = news[inverse[:n_hist].to(self.device)]
            cand_vecs = news[inverse[n_hist:].to(self.device)].view(*cand.shape, -1)
            users = net.user(clicked, mask.to(self.device))
            logits = torch.einsum("bd,bkd->bk", users, cand_vecs)
            loss = F.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long, device=self.device))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            total += float(loss.item())
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.4f}")
        bar.close()
        return total / max(batches, 1)

    def _encode_all_items(self) -> np.ndarray:
        net = self._require_net()
        net.eval()
        n = int(net.item_tokens.shape[0])
        out = []
        with torch.no_grad():
            for start in range(0, n, 1024):
                idx = torch.arange(start, min(start + 1024, n), device=self.device)
                out.append(net.encode_news(idx).cpu())
        return (torch.cat(out) if out else torch.zeros(0, self.dim)).numpy().astype(np.float32)
