"""One pydantic config class per model: the only place its hyper-parameters and defaults live.

Each model is built from its config (``Model(config)``, or ``Model(**kwargs)`` validated
through it), the settings' model blocks are these classes (``two_tower``, ``neumf``, ``nrms``;
the baselines' knobs under ``model``), and the ``train-models`` / ``nightly-refresh`` flows
take them as typed parameters, so the Prefect UI shows a form with each field's default and
docstring. ``extra="forbid"``: a misspelt or unknown parameter fails with its name.

The classes sit in this torch-free module, beside the models that import them, so that the
settings and the command line can read them without loading torch (seconds per process).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    field_validator,
)


class ModelConfig(BaseModel):
    """Base of every model's config: unknown fields fail, field docstrings become descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    for_model: ClassVar[str] = ""
    """The registry name of the model this config builds."""


C = TypeVar("C", bound=ModelConfig)


def resolve_config(config_cls: type[C], config: ModelConfig | None, params: dict[str, Any]) -> C:
    """``config`` (or the defaults) with ``params`` on top, validated by ``config_cls``: how a
    model accepts both ``Model(config)`` and ``Model(**kwargs)``."""
    if config is None:
        return config_cls.model_validate(params)
    if not isinstance(config, config_cls):
        raise TypeError(
            f"{config_cls.for_model}: expected a {config_cls.__name__}, got {type(config).__name__}"
        )
    if not params:
        return config
    return config_cls.model_validate({**config.model_dump(), **params})


class PopularityConfig(ModelConfig):
    """``popularity``: counts training interactions per item; nothing to tune."""

    for_model: ClassVar[str] = "popularity"


class ItemKNNConfig(ModelConfig):
    """``itemknn``: item-based cosine KNN (models/baselines.py)."""

    for_model: ClassVar[str] = "itemknn"

    neighbors: PositiveInt = 300
    """Neighbours kept per item (300 was best on MovieLens-100K validation)."""
    shrink: NonNegativeFloat = 0.0
    """Shrinkage added to the cosine denominator (damps rare co-occurrences)."""
    chunk: PositiveInt = 1024
    """Items per block of the similarity computation (memory only; results do not change)."""


class RecencyItemKNNConfig(ItemKNNConfig):
    """``itemknn-recency``: ItemKNN whose profile weights history items by recency."""

    for_model: ClassVar[str] = "itemknn-recency"

    decay: float = Field(0.6, gt=0.0, le=1.0)
    """Weight of a history item per step of age (0.6 was best on MovieLens-100K validation,
    see ``make eval``; 1 = plain ItemKNN)."""


class NextItemConfig(ModelConfig):
    """``nextitem-mf``: mean of recent item embeddings → softmax over the catalogue (models/nextitem.py)."""

    for_model: ClassVar[str] = "nextitem-mf"

    dim: PositiveInt = 32
    """Embedding width."""
    window: PositiveInt = 20
    """Most recent history items averaged into the user vector."""
    epochs: NonNegativeInt = 5
    """Passes over the training positions (0: keep the initial or warm-start weights)."""
    lr: float = Field(0.01, gt=0.0)
    """Adam learning rate."""
    weight_decay: NonNegativeFloat = 0.0
    """Adam weight decay."""
    batch_size: PositiveInt = 512
    """Training positions per step."""
    seed: int = 42
    """Seed for initialization and shuffling."""
    valid_holdout: bool = True
    """Hold out each user's last training item to report ``val_ndcg10`` per epoch."""
    progress: bool = True
    """Show a tqdm bar per epoch."""


class TwoTowerConfig(ModelConfig):
    """``two-tower``: the hybrid ID + text retriever (models/two_tower.py)."""

    for_model: ClassVar[str] = "two-tower"

    encoder: Literal["gru", "lstm", "attention"] = "gru"
    """User tower over the history: GRU (best on MovieLens-100K, see ``make eval``), LSTM or
    causal self-attention (SASRec-style)."""
    fusion: Literal["gate", "sum", "concat", "adaptive-mimic"] = "gate"
    """How the item tower fuses the ID embedding with the projected text vector."""
    dim: PositiveInt = 64
    """Width of item and user vectors."""
    max_len: PositiveInt = 20
    """History items the user tower reads (the most recent ones)."""
    layers: PositiveInt = 2
    """Recurrent or attention layers of the user tower."""
    heads: PositiveInt = 2
    """Attention heads (``encoder = "attention"``)."""
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    """Dropout in the user tower."""
    id_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of items per step served by the cold-start row, so the text path learns to stand alone."""
    mimic_k: float = Field(10.0, gt=0.0)
    """``adaptive-mimic`` fusion: interactions at which an item's ID embedding gets full weight."""
    mimic_weight: NonNegativeFloat = 0.1
    """``adaptive-mimic`` fusion: weight of the loss pulling text vectors towards ID vectors."""
    temperature: float = Field(0.1, gt=0.0)
    """InfoNCE temperature."""
    negatives: Literal["auto", "full", "sampled"] = "auto"
    """``full``: every item is a negative; ``sampled``: in-batch + sampled with log-Q; ``auto``:
    full below ``full_softmax_max`` items."""
    full_softmax_max: PositiveInt = 20_000
    """Catalogue size up to which ``auto`` uses every item as a negative."""
    sampled_negatives: PositiveInt = 1024
    """Uniformly sampled negatives per step (``sampled``)."""
    logq: bool = True
    """Correct sampled logits by how often each candidate is drawn (log-Q)."""
    use_text: bool = True
    """Feed the item text vectors (needs ``embedding.enabled``); off: ID-only."""
    use_side: bool = True
    """Feed the item side features and user aggregates when the catalogue has item attributes
    (books: numeric metadata, title statistics, top authors and categories); off: ignore them."""
    item_bias: bool = True
    """Learn a per-item bias (carried as the vectors' last coordinate)."""
    windows: Literal["random", "all"] = "random"
    """Training windows per epoch: one random window per user, or every window."""
    batch_size: PositiveInt = 128
    """Windows per step."""
    epochs: PositiveInt = 80
    """Most epochs (early stopping usually ends training sooner)."""
    lr: float = Field(4e-3, gt=0.0)
    """AdamW learning rate."""
    weight_decay: NonNegativeFloat = 1e-4
    """AdamW weight decay."""
    clip_norm: float = Field(1.0, gt=0.0)
    """Gradient norm clip."""
    patience: PositiveInt = 10
    """Epochs without a better validation NDCG@10 before training stops (best epoch kept)."""
    warmup_epochs: NonNegativeFloat = 1.0
    """Linear learning-rate warm-up before the cosine schedule."""
    seed: int = 42
    """Seed for everything random in training (the settings' ``model.seed`` unless set here)."""
    device: str = "auto"
    """torch device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    threads: NonNegativeInt = 1
    """torch CPU threads (0: torch's default); 1 is fastest on a shared 2-core machine and is
    what the README's figures were measured with."""
    progress: bool = True
    """Show a tqdm bar per epoch."""
    max_seconds: float | None = Field(None, gt=0.0)
    """Stop training after this many seconds (best epoch kept); None: no limit."""
    max_cpu_seconds: float | None = Field(None, gt=0.0)
    """Stop training after this many seconds of CPU time (best epoch kept); None: no limit.
    The nightly sets it to ``model.candidate_cpu_seconds``."""


def _fusion_two_tower() -> TwoTowerConfig:
    return TwoTowerConfig(windows="all", max_len=50, dim=128, dropout=0.2, id_dropout=0.2)


class FusionConfig(ModelConfig):
    """``two-tower-knn``: two-tower and ItemKNN-recency scores fused per user (models/fusion.py)."""

    for_model: ClassVar[str] = "two-tower-knn"

    two_tower: TwoTowerConfig = Field(default_factory=_fusion_two_tower)
    """The two-tower part; by default every training window per epoch, 50 history items,
    width 128, dropout 0.2 and ID dropout 0.2 (best on MovieLens-100K validation)."""
    knn: RecencyItemKNNConfig = Field(default_factory=RecencyItemKNNConfig)
    """The ItemKNN-recency part."""
    weight: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the two-tower's standardised score (the rest: ItemKNN-recency's); replaced by
    the best of ``weight_grid`` on validation when ``tune_weight`` and a validation set is given."""
    tune_weight: bool = True
    """Choose ``weight`` on validation NDCG@10 when the fit has a validation set."""
    weight_grid: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    """Weights tried on validation."""

    @field_validator("weight_grid")
    @classmethod
    def _weights_in_range(cls, grid: list[float]) -> list[float]:
        if not grid or any(not 0.0 <= w <= 1.0 for w in grid):
            raise ValueError(f"weight_grid must be a non-empty list of weights in [0, 1], got {grid}")
        return grid


class NeuMFConfig(ModelConfig):
    """``neumf``: GMF + MLP with item-category projections (models/neumf.py)."""

    for_model: ClassVar[str] = "neumf"

    dim: PositiveInt = 32
    """GMF factor width."""
    mlp_layers: list[PositiveInt] = Field(default_factory=lambda: [64, 32, 16])
    """MLP widths; the first is split between user and item, so it must be even."""
    negatives: PositiveInt = 4
    """Sampled negatives per positive for the BCE loss."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout between MLP layers."""
    use_categories: bool = True
    """Project the item's categories into both towers."""
    batch_size: PositiveInt = 4096
    """(user, item) pairs per step."""
    epochs: PositiveInt = 30
    """Most epochs (early stopping usually ends training sooner)."""
    lr: float = Field(3e-3, gt=0.0)
    """Adam learning rate."""
    weight_decay: NonNegativeFloat = 1e-5
    """Adam weight decay."""
    clip_norm: float = Field(1.0, gt=0.0)
    """Gradient norm clip."""
    patience: PositiveInt = 4
    """Epochs without a better validation NDCG@10 before training stops (best epoch kept)."""
    seed: int = 42
    """Seed for everything random in training (the settings' ``model.seed`` unless set here)."""
    device: str = "auto"
    """torch device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    threads: NonNegativeInt = 1
    """torch CPU threads (0: torch's default); 1 is fastest on a shared 2-core machine."""
    progress: bool = True
    """Show a tqdm bar per epoch."""
    max_seconds: float | None = Field(None, gt=0.0)
    """Stop training after this many seconds (best epoch kept); None: no limit."""
    max_cpu_seconds: float | None = Field(None, gt=0.0)
    """Stop training after this many seconds of CPU time (best epoch kept); None: no limit.
    The nightly sets it to ``model.candidate_cpu_seconds``."""

    @field_validator("mlp_layers")
    @classmethod
    def _even_first_layer(cls, layers: list[int]) -> list[int]:
        if not layers or layers[0] % 2:
            raise ValueError(f"mlp_layers must start with an even width, got {layers}")
        return layers


class NRMSConfig(ModelConfig):
    """``nrms``: the news model that reads stories' words and learns from impressions (models/nrms.py)."""

    for_model: ClassVar[str] = "nrms"

    text_model: str = "all-MiniLM-L6-v2"
    """Model whose tokenizer and input word embeddings NRMS starts from (a local path works)."""
    max_tokens: PositiveInt = 20
    """Words (WordPiece tokens) read per story: the title, then the start of its summary."""
    n_heads: PositiveInt = 8
    """Attention heads in the news and user encoders."""
    head_dim: PositiveInt = 16
    """Width per head; news and user vectors have ``n_heads * head_dim`` dimensions."""
    attention_hidden: PositiveInt = 128
    """Hidden size of the additive attention that pools words and clicked stories."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout after each attention layer."""
    negatives: PositiveInt = 8
    """Shown-but-not-clicked stories per click in the listwise loss (K)."""
    max_history: PositiveInt = 20
    """Most recent clicks the user encoder reads."""
    epochs: PositiveInt = 4
    """The best of 4 epochs on validation impressions is kept."""
    batch_size: PositiveInt = 128
    """Impressions per step."""
    lr: float = Field(1e-3, gt=0.0)
    """Adam learning rate."""
    weight_decay: NonNegativeFloat = 0.0
    """Adam weight decay."""
    train_word_embeddings: bool = False
    """Fine-tune the pre-trained word vectors too (slower, more to overfit)."""
    use_text_vectors: bool = True
    """Add a learned projection of each story's MiniLM sentence vector (title + summary) to
    its news vector: the model starts where text similarity is and learns from there."""
    seed: int = 42
    """Seed for initialization and sampling (the settings' ``model.seed`` unless set here)."""
    device: str | None = None
    """torch device; None: CUDA when present, else the CPU."""
    progress: bool = True
    """Show a tqdm bar per epoch."""


CONFIGS: dict[str, type[ModelConfig]] = {
    c.for_model: c
    for c in (
        PopularityConfig,
        ItemKNNConfig,
        RecencyItemKNNConfig,
        NRMSConfig,
        NextItemConfig,
        TwoTowerConfig,
        NeuMFConfig,
        FusionConfig,
    )
}
"""Registry name → config class (models/registry.py pairs each with its model class)."""


def config_class(name: str) -> type[ModelConfig]:
    """The config class of model ``name``; unknown names fail with the list of known ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(CONFIGS)}") from None


class ModelOverrides(BaseModel):
    """Hyper-parameters per model over the settings' defaults, keyed by model name.

    The typed ``config`` parameter of the ``train-models`` and ``nightly-refresh`` flows:
    the Prefect UI renders it as a form with every field, its default and its docstring.
    Only the fields given count (:meth:`given`), so the settings fill in the rest.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    popularity: PopularityConfig | None = None
    """Parameters of ``popularity`` (none to set)."""
    itemknn: ItemKNNConfig | None = None
    """Parameters of ``itemknn``."""
    itemknn_recency: RecencyItemKNNConfig | None = Field(None, alias="itemknn-recency")
    """Parameters of ``itemknn-recency``."""
    nextitem_mf: NextItemConfig | None = Field(None, alias="nextitem-mf")
    """Parameters of ``nextitem-mf``."""
    two_tower: TwoTowerConfig | None = Field(None, alias="two-tower")
    """Parameters of ``two-tower``."""
    neumf: NeuMFConfig | None = None
    """Parameters of ``neumf``."""
    two_tower_knn: FusionConfig | None = Field(None, alias="two-tower-knn")
    """Parameters of ``two-tower-knn``."""
    nrms: NRMSConfig | None = None
    """Parameters of ``nrms``."""

    def given(self) -> dict[str, dict[str, Any]]:
        """Model name → the parameters explicitly given for it (models without any left out)."""
        out: dict[str, dict[str, Any]] = {}
        for field in type(self).model_fields:
            config = getattr(self, field)
            if isinstance(config, ModelConfig):
                out[config.for_model] = config.model_dump(exclude_unset=True)
        return out


if {f.alias or n for n, f in ModelOverrides.model_fields.items()} != set(CONFIGS):
    raise RuntimeError("ModelOverrides must have one field per model of CONFIGS")
