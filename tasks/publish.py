"""Build a serving bundle from the warehouse and a fitted model, and publish it atomically.

Bundle layout (everything serving needs, nothing it must compute):

* ``manifest.json`` — version, created, source run, model, metrics, protocol,
  data fingerprint, counts, checksums of every other file;
* ``catalog.duckdb`` — ``items(item_idx, item_id, title, categories, year, popularity,
  summary, link, outlet, published)`` with ``item_idx`` the model's column (a story's columns
  are null where the warehouse has nothing: loaded catalogues have no outlet or time),
  ``user_histories(user_id, items INTEGER[])`` with
  item indices in time order, and the latest ``daily_pool`` (contract C2) when the
  warehouse has one;
* ``model/`` — the fitted model as written by its ``save``;
* ``item_vectors.npy`` — text vectors, row ``i`` for ``item_idx`` ``i`` (when embedded);
* ``index/`` — the FAISS item index over those vectors, item ids stored beside it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from models.ann import ItemIndex
from models.base import Recommender, select_items
from models.registry import REGISTRY, build_model, load_model
from storage.artifacts import ArtifactStore
from tasks.training import SplitData, evaluate, prepare_model

BUNDLE_FORMAT = 2
"""Bumped whenever the bundle layout changes, so unchanged data still gets a new-format bundle."""


@dataclass(frozen=True)
class PublishResult:
    version: str | None
    """The version written, or None when nothing was published."""
    live: str | None
    """The version ``CURRENT`` names afterwards."""
    reason: str


def gate_refusal(
    valid: dict[str, Any],
    live: str | None,
    live_valid: dict[str, Any],
    tolerance: float = 0.0,
    metric: str = "ndcg@10",
) -> str | None:
    """Why a candidate must not go live, or None: the one gate rule of every publish path
    (nightly-refresh, train-models, merge-checkpoints).

    A candidate whose validation ``metric`` is below the live bundle's by more than
    ``tolerance`` is refused; with no live bundle, or a metric missing on either side, it passes.
    """
    old, new = live_valid.get(metric), valid.get(metric)
    if live is None or old is None or new is None or new >= old - tolerance:
        return None
    return f"valid {metric} {new:.4f} < live {old:.4f} - tolerance {tolerance}; kept {live} live"


LiveSource = Literal["rescored", "stored", "none"]


@dataclass(frozen=True)
class LiveScore:
    """The live bundle's validation metrics the gate compares a candidate with."""

    version: str | None
    """The live bundle (None: nothing is live yet)."""
    valid: dict[str, Any]
    """Its validation metrics: on tonight's split when ``source`` is ``rescored``, else as stored."""
    source: LiveSource
    how: str
    """Which model was scored, or why the stored number had to do."""

    def record(self, metric: str, challenger: dict[str, Any], tolerance: float) -> dict[str, Any]:
        """The manifest's ``gate`` entry: both numbers and where the live one came from."""
        return {
            "metric": metric,
            "challenger": challenger.get(metric),
            "live": self.valid.get(metric),
            "live_version": self.version,
            "live_source": self.source,
            "live_how": self.how,
            "tolerance": tolerance,
        }


class _OnCatalogue:
    """A model fitted on another catalogue, scoring tonight's items by item id: histories are
    mapped onto its indices (items it never had are dropped) and items it cannot score get
    −∞, so they are never ranked above a target and an unknown target counts as a miss."""

    def __init__(self, model: Recommender, model_ids: list[str], ids: list[str]) -> None:
        position = {item: p for p, item in enumerate(model_ids)}
        self.model = model
        self.to_model = np.array([position.get(i, -1) for i in ids], dtype=np.int64)
        self.known = self.to_model >= 0

    def score(self, histories: list[np.ndarray], items: np.ndarray | None = None) -> np.ndarray:
        mapped = [self.to_model[np.asarray(h, dtype=np.int64)] for h in histories]
        theirs = self.model.score([m[m >= 0] for m in mapped])
        out = np.full((len(histories), len(self.to_model)), -np.inf, dtype=np.float32)
        out[:, self.known] = theirs[:, self.to_model[self.known]]
        return select_items(out, items)


def _bundle_item_ids(bundle: Path) -> list[str]:
    with duckdb.connect(str(bundle / "catalog.duckdb"), read_only=True) as cat:
        return [str(r[0]) for r in cat.execute("SELECT item_id FROM items ORDER BY item_idx").fetchall()]


def _live_model(bundle: Path, manifest: dict[str, Any], data: SplitData) -> tuple[Recommender, str]:
    """A model of the live bundle that never saw tonight's validation targets, and how it was had.

    The served ``model/`` is not one: it was fitted on all of yesterday's interactions, which
    hold most of tonight's validation targets. ``train_model/`` (fitted on yesterday's
    training part) is, mapped onto tonight's items by id; otherwise the live model's config
    is refitted on tonight's training part, exactly as the challenger was. Raises ValueError
    when neither can be done."""
    train_dir = bundle / "train_model"
    if manifest.get("serving_fit") == "train" and not (train_dir / "model.json").is_file():
        train_dir = bundle / "model"  # the served model itself was fitted on the training part
    if (train_dir / "model.json").is_file():
        model = load_model(train_dir)
        live_ids = _bundle_item_ids(bundle)
        ids = [str(i) for i in data.item_ids]
        n_items = getattr(model, "n_items", len(live_ids))
        if n_items != len(live_ids):
            raise ValueError(f"train_model/ has {n_items} items, the bundle's catalogue {len(live_ids)}")
        if live_ids == ids:
            return model, f"{bundle.name}/{train_dir.name} (fitted on its training part)"
        mapped = _OnCatalogue(model, live_ids, ids)
        if not mapped.known.any():
            raise ValueError("train_model/ knows none of tonight's items")
        return cast(Recommender, mapped), (
            f"{bundle.name}/{train_dir.name} (fitted on its training part), {int(mapped.known.sum())} of "
            f"tonight's {len(ids)} items mapped by id"
        )
    spec = manifest.get("model") or {}
    name, params = spec.get("name"), spec.get("params") or {}
    if name not in REGISTRY:
        raise ValueError(f"the live bundle's model {name!r} is not a registered model")
    model = build_model(name, **params)
    if hasattr(model, "set_item_features") and data.item_features is None:
        raise ValueError(f"{name} reads item features, which tonight's run did not load")
    prepare_model(model, data)
    if hasattr(model, "set_validation"):  # the same early stopping as the challenger's fit
        model.set_validation(data.train, data.valid)
    model.fit(data.matrix(("train",)), data.train)
    return model, f"{bundle.name}'s {name} config refitted on tonight's training part"


def stored_score(store: ArtifactStore, why: str = "as stored in its manifest") -> LiveScore:
    """The live bundle's validation metrics as its manifest records them (no re-scoring)."""
    live = store.current_version()
    if live is None:
        return LiveScore(None, {}, "none", "no live bundle")
    return LiveScore(live, store.manifest(live).get("metrics", {}).get("valid", {}) or {}, "stored", why)


def live_score(store: ArtifactStore, data: SplitData, ks: list[int], metric: str = "ndcg@10") -> LiveScore:
    """The live bundle's validation metrics on ``data``'s split, so the gate compares two
    numbers about the same users and targets (the stored number was measured on an older
    split, whose targets differ once events arrive).

    Falls back to the stored number, and says why in ``how``, when the live model cannot be
    re-scored (a legacy bundle without its config, a model that needs side information
    tonight's run did not load, a checkpoint that does not fit its catalogue). A live bundle
    with no stored ``metric`` (a cold-start bundle) is not re-scored: the gate lets any
    candidate replace it, as before.
    """
    live = store.current_version()
    if live is None:
        return stored_score(store)
    manifest = store.manifest(live)
    stored = manifest.get("metrics", {}).get("valid", {}) or {}
    if stored.get(metric) is None:
        return LiveScore(live, stored, "stored", f"live bundle {live} has no validation {metric}")
    k = int(metric.split("@", 1)[1]) if "@" in metric else max(ks, default=10)
    try:
        model, how = _live_model(store.root / live, manifest, data)
        valid = evaluate(model, data, "valid", sorted({*ks, k}))
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, duckdb.Error) as exc:
        return LiveScore(live, stored, "stored", f"stored number: could not re-score {live} ({exc})")
    return LiveScore(live, valid, "rescored", how)


def build_manifest(
    *,
    catalogue: str,
    source_run: str | None,
    result: Any,
    proto: dict[str, Any],
    fingerprint: str,
    embedding: Any = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a bundle serving ``result`` (a :class:`tasks.training.TrainResult`):
    the one builder every publish path uses. ``embedding`` (an ``EmbeddingSettings``, when
    embedding is enabled) records how the item vectors were made; ``extra`` adds a path's own
    keys (train-models: config, candidates, warm start, report). ``publish_bundle`` adds the
    index, counts and format; the store adds version, creation time and checksums."""
    manifest: dict[str, Any] = {
        "catalogue": catalogue,
        "source_run": source_run,
        "model_run": result.run_id,
        "model": {"name": result.model_name, "params": result.params},
        "metrics": {"valid": result.valid, "test": result.test},
        "protocol": proto,
        "data_fingerprint": fingerprint,
        **(extra or {}),
    }
    if embedding is not None:
        manifest["embedding"] = {"model": embedding.model, "template": embedding.template}
    return manifest


def _outlets(con: duckdb.DuckDBPyConnection) -> str:
    """A query of (item_id, outlet): each scraped story's representative outlet, the one whose
    entry is the item's own canonical URL (else the earliest to publish it). Items that were
    loaded rather than scraped (MovieLens, MIND) have no outlet rows, hence a null outlet."""
    has_outlets = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'item_outlets'"
    ).fetchall()[0][0]
    if not has_outlets:
        return "SELECT NULL::VARCHAR AS item_id, NULL::VARCHAR AS outlet WHERE false"
    return (
        "SELECT o.item_id, arg_min(o.source, (o.entry_url IS DISTINCT FROM i.url, o.published_ts, o.source))"
        " AS outlet FROM item_outlets o JOIN items i USING (item_id) GROUP BY o.item_id"
    )


def write_catalog(path: Path, con: duckdb.DuckDBPyConnection, data: SplitData) -> None:
    """``catalog.duckdb`` for serving: items with popularity and, for stories, what a reader
    sees of them (summary, link, outlet, published UTC time; nulls where the warehouse has
    none), and every user's history."""
    # one flat array and its offsets (no Python list per user): 25M events stay ~100 MB
    offsets, everything = data.flat(("train", "valid", "test"))
    popularity = np.bincount(everything, minlength=data.n_items)
    index = pd.DataFrame(
        {
            "item_idx": np.arange(data.n_items, dtype=np.int32),
            "item_id": data.item_ids.astype(str),
            "popularity": popularity.astype(np.int64),
        }
    )
    flat = everything.astype(np.int32)
    histories = pa.table(
        {
            "user_id": pa.array(data.user_ids.astype(str), pa.string()),
            "items": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        }
    )
    out = duckdb.connect(str(path))
    try:
        con.register("bundle_index", index)
        items = con.execute(
            f"""
            SELECT b.item_idx, b.item_id, i.title, i.categories, i.year, b.popularity,
                   i.description AS summary, i.url AS link, o.outlet,
                   CASE WHEN i.published_ts IS NULL THEN NULL
                        ELSE make_timestamp(i.published_ts * 1000000) END AS published
            FROM bundle_index b LEFT JOIN items i USING (item_id)
            LEFT JOIN ({_outlets(con)}) o USING (item_id) ORDER BY b.item_idx
            """
        ).df()
        con.unregister("bundle_index")
        out.register("items_df", items)
        out.execute(
            "CREATE TABLE items AS SELECT item_idx, item_id, title, categories, year, popularity,"
            " CAST(summary AS VARCHAR) AS summary, CAST(link AS VARCHAR) AS link,"
            " CAST(outlet AS VARCHAR) AS outlet, CAST(published AS TIMESTAMP) AS published FROM items_df"
        )
        out.register("hist_df", histories)
        out.execute(
            "CREATE TABLE user_histories AS SELECT user_id, CAST(items AS INTEGER[]) AS items FROM hist_df"
        )
        _copy_daily_pool(con, out)
        out.execute("CHECKPOINT")
    finally:
        out.close()


def _copy_daily_pool(con: duckdb.DuckDBPyConnection, out: duckdb.DuckDBPyConnection) -> None:
    """Contract C2: the latest ``daily_pool`` of the warehouse, same columns, when there is one."""
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'daily_pool'"
    ).fetchall()[0][0]
    if not has_table:
        return
    pool = con.execute(
        "SELECT * FROM daily_pool WHERE pool_date = (SELECT max(pool_date) FROM daily_pool) ORDER BY rank"
    ).df()
    if pool.empty:
        return
    out.register("pool_df", pool)
    out.execute(
        "CREATE TABLE daily_pool AS SELECT CAST(pool_date AS DATE) AS pool_date, "
        "CAST(rank AS INTEGER) AS rank, CAST(item_id AS VARCHAR) AS item_id, "
        "CAST(topic AS VARCHAR) AS topic, "
        "CAST(cluster AS INTEGER) AS cluster, CAST(source AS VARCHAR) AS source, "
        "CAST(reason AS VARCHAR) AS reason, CAST(score AS DOUBLE) AS score FROM pool_df ORDER BY rank"
    )
    out.unregister("pool_df")


def publish_bundle(
    store: ArtifactStore,
    con: duckdb.DuckDBPyConnection,
    data: SplitData,
    model: Recommender,
    manifest: dict[str, Any],
    *,
    gate_metric: str = "ndcg@10",
    tolerance: float = 0.0,
    vectors: np.ndarray | None = None,
    index: ItemIndex | None = None,
    attachments: dict[str, Path] | None = None,
    live_scored: LiveScore | None = None,
    reuse: dict[str, str] | None = None,
) -> PublishResult:
    """Write and commit a bundle; move ``CURRENT`` only if it is not worse than the live one.

    ``attachments`` maps a name inside the bundle (``report``, ``train_model``) to a file or
    directory copied in as it is, so it is checksummed and published with everything else.
    ``reuse`` maps ``model``, ``item_vectors.npy`` or ``index`` to a published bundle whose
    file is the same as tonight's (a reused fit; vectors of unchanged items): it is hard-linked
    from there (:meth:`ArtifactStore.link_into`) instead of written, hashed and synced again.

    The gate (:func:`gate_refusal`) compares ``manifest["metrics"]["valid"][gate_metric]``
    with the live bundle's: ``live_scored``, the live model scored on ``data``'s split by
    :func:`live_score` (every publish path passes it; it is scored again should another
    bundle have gone live meanwhile), or, without it, the live manifest's stored number. A
    bundle that loses by more than ``tolerance`` is kept for inspection but not made live.
    The manifest's ``gate`` records both numbers and how the live one was obtained.
    """
    live = store.current_version()
    if live_scored is None:
        live_scored = stored_score(store, "as stored: the publisher gave no re-scored number")
    elif live_scored.version != live:
        live_scored = live_score(store, data, [], gate_metric)
    challenger = manifest.get("metrics", {}).get("valid", {})
    refusal = gate_refusal(challenger, live, live_scored.valid, tolerance, gate_metric)
    manifest = {**manifest, "gate": live_scored.record(gate_metric, challenger, tolerance)}
    make_current = refusal is None
    reason = refusal or ("first bundle" if live is None else "not worse than the live bundle")
    reuse = reuse or {}
    unknown = sorted(set(reuse) - {"model", "item_vectors.npy", "index"})
    if unknown:
        raise ValueError(f"publish_bundle: reuse names {unknown}; only model, item_vectors.npy, index")
    linked: dict[str, str] = {}
    with store.staging() as staged:

        def place(name: str, write: Callable[[Path], object]) -> None:
            """``name`` linked from the bundle ``reuse`` names for it, else written."""
            if name in reuse:
                linked.update(store.link_into(reuse[name], name, staged))
            else:
                write(staged / name)

        write_catalog(staged / "catalog.duckdb", con, data)
        place("model", model.save)
        if vectors is not None:
            place(
                "item_vectors.npy",
                lambda path: np.save(path, np.ascontiguousarray(vectors, dtype=np.float32)),
            )
        if index is not None:
            if list(index.item_ids) != [str(i) for i in data.item_ids]:
                raise ValueError("index rows must follow the bundle's item order (item_idx)")
            place("index", index.save)
            manifest = {**manifest, "index": index.metadata()}
        for name, source in (attachments or {}).items():
            if source.is_dir():
                shutil.copytree(source, staged / name)
            else:
                shutil.copy2(source, staged / name)
        counts = {
            "users": data.n_users,
            "items": data.n_items,
            "interactions": data.n_interactions,
        }
        version = store.commit(
            staged,
            {**manifest, "counts": counts, "bundle_format": BUNDLE_FORMAT},
            make_current=make_current,
            linked=linked,
        )
    return PublishResult(version, store.current_version(), reason)


def publish_reindexed(
    store: ArtifactStore, index_builder: Callable[[np.ndarray, list[str]], ItemIndex], source_run: str | None
) -> PublishResult:
    """A new bundle that is the live one with a freshly built index (the ``build-index`` flow).

    The builder raises when the index misses its recall floor; nothing is written then and
    ``CURRENT`` stays where it was.
    """
    live = store.current_version()
    if live is None:
        raise FileNotFoundError(f"no live bundle under {store.root}; run the nightly refresh first")
    base = store.root / live
    vectors_path = base / "item_vectors.npy"
    if not vectors_path.exists():
        raise FileNotFoundError(
            f"bundle {live} has no item_vectors.npy; run the nightly refresh with embedding"
        )
    vectors = np.load(vectors_path)
    with duckdb.connect(str(base / "catalog.duckdb"), read_only=True) as cat:
        item_ids = [r[0] for r in cat.execute("SELECT item_id FROM items ORDER BY item_idx").fetchall()]
    index = index_builder(vectors, item_ids)
    manifest = {k: v for k, v in store.manifest(live).items() if k not in ("version", "created", "checksums")}
    manifest.update({"index": index.metadata(), "source_run": source_run, "reindexed_from": live})
    with store.staging() as staged:
        for path in base.rglob("*"):
            rel = path.relative_to(base)
            if path.is_file() and rel.parts[0] != "index" and path.name != "manifest.json":
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staged / rel)
        index.save(staged / "index")
        version = store.commit(staged, manifest)
    return PublishResult(version, store.current_version(), f"re-indexed {live}")
