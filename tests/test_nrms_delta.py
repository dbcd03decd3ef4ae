"""NRMS vectors in freshness deltas: the service scores a story scraped after the training with
the bundle's NRMS (its vector came with the delta, a request encodes no story), and a delta
whose NRMS vectors do not fit is refused without touching the live bundle.

A small NRMS and news ranker are fitted here (a few seconds) and put in a bundle as
:func:`serving.bundle.load_bundle` would; the full path (publish, hot load, ``/feed`` over
HTTP) is in tests/test_nrms_pipeline.py."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from models.news_ranker import FEATURES, ItemFacts, NewsRanker, NewsRankStage
from models.news_ranker import unit_rows as news_unit_rows
from models.nrms import NRMSModel
from serving.bundle import LoadedBundle, apply_delta
from serving.cascade import CascadeParams
from storage.artifacts import ArtifactStore
from storage.deltas import NRMS_VECTORS, DeltaError, delta_dir, read_delta, write_delta
from tests.test_news_ranker import synthetic

STORIES = [
    ("Striker scores twice as the league leaders win the derby", "sports"),
    ("Coach praises the defence after a clean sheet in the cup", "sports"),
    ("Tennis champion reaches the final after a five set match", "sports"),
    ("Goalkeeper saves a penalty in the last minute of the game", "sports"),
    ("Parliament votes on the budget after a long debate", "politics"),
    ("The minister resigns over the election funding scandal", "politics"),
    ("Senators argue about the new tax law before the vote", "politics"),
    ("The prime minister meets union leaders about pensions", "politics"),
]
FRESH = [
    ("fresh-sport", "Midfielder signs for the champions before the derby", "sports"),
    ("fresh-politics", "The opposition calls for a vote on the budget", "politics"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> LoadedBundle:
    """A two-topic bundle served by NRMS and the news ranker, in a real artifact store."""
    torch.manual_seed(0)
    n = len(STORIES)
    model = NRMSModel(epochs=1, batch_size=16, use_text_vectors=False, progress=False, device="cpu")
    model.set_item_topics([t for _, t in STORIES])
    histories = [np.array([0, 1, 2]), np.array([4, 5, 6]), np.array([1, 3]), np.array([5, 7])] * 4
    rows = np.concatenate(histories)
    users = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    train = sp.csr_matrix((np.ones(len(rows)), (users, rows)), shape=(len(histories), n))
    model.fit(train, histories, item_texts=[s for s, _ in STORIES])
    x, y, _ = synthetic(n_impressions=60, seed=1)
    ranker = NewsRanker(epochs=5).fit(x, y)
    vectors = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    published = np.full(n, 1_000_000.0)
    topics = np.array([{"politics": 1, "sports": 2}[t] for _, t in STORIES])  # sorted names, as at load
    facts = ItemFacts(news_unit_rows(vectors), published, topics)
    stage = NewsRankStage(ranker, facts, model, np.zeros(n), np.zeros(n))

    store = ArtifactStore(tmp_path_factory.mktemp("bundles"))
    with store.staging() as staged:
        (staged / "marker.txt").write_text("a bundle to extend\n")
        version = store.commit(staged, {"model": {"name": "nrms"}})
    ids = [f"s{i}" for i in range(n)]
    popularity = np.arange(n, 0, -1)
    return LoadedBundle(
        version=version,
        path=store.root / version,
        manifest={"model": {"name": "nrms"}},
        items=pd.DataFrame({"item_id": ids}),
        item_index={i: n for n, i in enumerate(ids)},
        histories={},
        popularity=popularity,
        popular_order=np.arange(n),
        popular_rank=np.arange(n),
        model=model,
        item_ids=ids,
        titles=[s for s, _ in STORIES],
        categories=[[t] for _, t in STORIES],
        years=[None] * n,
        vectors=vectors,
        unit_vectors=news_unit_rows(vectors),
        ranker=stage,
        ranker_name="news-ranker",
        published_s=published,
    )


def write(bundle: LoadedBundle, nrms_vectors: np.ndarray | None) -> int:
    items = [
        {"item_id": i, "title": t, "categories": [c], "published_s": 1_000_000.0 + 60} for i, t, c in FRESH
    ]
    text = np.random.default_rng(1).normal(size=(len(FRESH), 8)).astype(np.float32)
    store = ArtifactStore(bundle.path.parent)
    return write_delta(store, bundle.version, items, text, None, nrms_vectors=nrms_vectors)


def test_a_fresh_story_is_scored_by_nrms_from_the_vector_in_its_delta(bundle: LoadedBundle) -> None:
    nrms = bundle.model
    assert isinstance(nrms, NRMSModel)
    encoded = nrms.encode_stories([t for _, t, _ in FRESH], topics=[c for _, _, c in FRESH])
    store = ArtifactStore(bundle.path.parent)
    seq = write(bundle, encoded)
    delta = read_delta(store, bundle.version, seq)
    assert delta.nrms_vectors is not None and np.array_equal(delta.nrms_vectors, encoded)
    assert NRMS_VECTORS in delta.manifest["checksums"]

    live = apply_delta(bundle, delta)
    stage = live.fresh_stage
    assert stage is not None and stage.nrms is not None
    assert nrms.encode_items().shape[0] == len(STORIES), "the loaded bundle's NRMS is untouched"
    assert stage.nrms.encode_items().shape[0] == len(STORIES) + len(FRESH)

    # The rank stage's NRMS feature of a fresh story is the reader's user vector · its vector.
    reader = np.array([0, 1, 3])
    fresh_rows = np.arange(len(STORIES), len(STORIES) + len(FRESH))
    features = stage.features(reader, fresh_rows, now_s=1_000_000.0 + 120)
    expected = nrms.encode_users([reader])[0] @ encoded.T
    assert np.allclose(features[:, FEATURES.index("nrms")], expected, atol=1e-5)

    # The feed's freshness slot is ranked by that stage: its best fresh story is slot two.
    params = CascadeParams(
        k=4,
        candidates=8,
        mmr_lambda=1.0,
        retrieval_weight=0.0,
        duplicate_threshold=1.0,
        explore=False,
        seed=0,
    )
    result = live.recommend_for("s", reader, params, min_interactions=1, use_pool=True)
    best = int(fresh_rows[np.argmax(stage.score(reader, fresh_rows))])
    assert result.stages[1] == "fresh" and result.indices[1] == best, (result.indices, result.stages)


def test_a_delta_whose_nrms_vectors_do_not_fit_is_refused(bundle: LoadedBundle) -> None:
    store = ArtifactStore(bundle.path.parent)
    dim = bundle.model.encode_items().shape[1]  # type: ignore[attr-defined]
    wrong = read_delta(store, bundle.version, write(bundle, np.ones((len(FRESH), dim + 1), np.float32)))
    with pytest.raises(DeltaError, match="NRMS vectors of dim"):
        apply_delta(bundle, wrong)
    broken = np.ones((len(FRESH), dim), np.float32)
    broken[1, 0] = np.nan
    with pytest.raises(DeltaError, match="NRMS vectors hold NaN"):
        apply_delta(bundle, read_delta(store, bundle.version, write(bundle, broken)))
    with pytest.raises(DeltaError, match="2 items but 1 NRMS vectors"):
        write(bundle, np.ones((1, dim), np.float32))

    # A damaged file fails its checksum; a delta without NRMS vectors ranks fresh stories by text.
    seq = write(bundle, np.ones((len(FRESH), dim), np.float32))
    path = delta_dir(store, bundle.version) / f"{seq:06d}" / NRMS_VECTORS
    path.write_bytes(path.read_bytes()[:-4] + np.array([2], np.float32).tobytes())
    with pytest.raises(DeltaError, match=f"checksum mismatch for {NRMS_VECTORS}"):
        read_delta(store, bundle.version, seq)
    plain = apply_delta(bundle, read_delta(store, bundle.version, write(bundle, None)))
    assert plain.fresh_stage is None and plain.n_items == len(STORIES) + len(FRESH)


def test_a_bundle_without_nrms_needs_no_nrms_vectors(tmp_path: Path) -> None:
    """Freshness for other models is unchanged: the publisher ships no NRMS file for them."""
    from tasks.freshness import nrms_story_vectors

    store = ArtifactStore(tmp_path)
    with store.staging() as staged:
        (staged / "marker.txt").write_text("x\n")
        version = store.commit(staged, {"model": {"name": "itemknn"}})
    with duckdb.connect() as con:
        assert nrms_story_vectors(con, store, version, [], np.zeros((0, 0), np.float32)) is None
