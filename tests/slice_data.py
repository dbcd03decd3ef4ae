"""A real, small training set for the torch model tests: the ml100k_slice fixture loaded
through the real pipeline (warehouse, leave-last-out split, item features).

Text vectors here are TF-IDF of the item's rendered text reduced to 48 dimensions (LSA),
L2-normalized: real item text, but computed in a second instead of running MiniLM over
1,682 titles in every test session; the models accept any text vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.features import ItemFeatures
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.embedding import render_texts
from tasks.features import load_item_features
from tasks.load import load_source
from tasks.prepare import KCORE_TABLE, LEAVE_LAST_OUT, kcore_filter, make_splits
from tasks.training import SplitData, load_split_data


def load_slice(source: Path, home: Path) -> SplitData:
    settings = Settings(home=home, catalogue="slice", source={"kind": "movielens", "path": str(source)})
    with open_warehouse(settings.warehouse_path) as con:
        load_source(con, settings)
        kcore_filter(con, 0, 0)
        make_splits(con, KCORE_TABLE, settings.eval.temporal_cut_quantile)
        data = load_split_data(con, LEAVE_LAST_OUT, KCORE_TABLE)
        features = load_item_features(con, data, None)
        items = con.execute(
            "SELECT item_id, title, categories, year, description, url, source FROM items"
        ).df()
    texts = dict(
        zip(items["item_id"].astype(str), render_texts(items, settings.embedding.template), strict=True)
    )
    features.text = lsa_vectors([texts[str(i)] for i in data.item_ids], dim=48)
    data.item_features = features
    return data


def lsa_vectors(texts: list[str], dim: int) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(min_df=1, ngram_range=(1, 1)).fit_transform(texts)
    vecs = TruncatedSVD(dim, random_state=0).fit_transform(tfidf).astype(np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)


def with_text(features: ItemFeatures, text: np.ndarray) -> ItemFeatures:
    return ItemFeatures(text, features.categories, features.recency, features.category_names)
