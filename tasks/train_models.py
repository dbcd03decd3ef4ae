"""Training runs that can be warm-started, recorded with their full config, and re-run.

What a run records (``model_run_configs.config``, keyed by ``model_runs.run_id``): the model
name, every constructor parameter (the seed among them), the split, the data fingerprint,
the warm-start source (bundle version, checkpoint and its SHA-256), the torch version and
device. :func:`reproduce_run`
rebuilds the model from that record alone and fits it again on the same split.

Warm start: the live bundle holds the serving model in ``model/`` and, for torch models, the
model fitted on the training part only in ``train_model/``. The next evaluated fit starts
from ``train_model/`` (it never saw this run's valid or test events, since leave-last-out
training parts only grow), the next serving fit from ``model/``; both are mapped from the
live catalogue's ids onto today's with :func:`models.checkpoint.grow_state`.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch

from models.ann import ItemIndex
from models.base import Recommender, histories_to_csr
from models.checkpoint import (
    STATE_FILE,
    CheckpointError,
    GrowReport,
    grow_state,
    has_state,
    load_meta,
    load_state,
)
from models.features import ItemFeatures
from models.registry import build_model
from storage.artifacts import ArtifactStore, file_sha256
from storage.settings import Settings
from tasks.publish import LiveScore, PublishResult, build_manifest, gate_refusal, live_score, publish_bundle
from tasks.training import SplitData, TrainResult, evaluate, prepare_impressions, record_run

TRAIN_MODEL_DIR = "train_model"
"""Bundle directory of the model fitted on the training part (torch models only)."""
SERVING_MODEL_DIR = "model"


def model_config(settings: Settings, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model ``name``'s constructor parameters: the settings' config for it with ``overrides``
    on top, validated by its config class (a bad or unknown parameter fails with its name)."""
    return settings.config_of(name, overrides).model_dump()


def is_torch_model(model: object) -> bool:
    return callable(getattr(model, "id_tables", None)) and callable(getattr(model, "set_initial_state", None))


def catalog_ids(bundle_dir: Path) -> dict[str, list[str]]:
    """A bundle's item ids in item-index order and user ids in user-index order."""
    with duckdb.connect(str(bundle_dir / "catalog.duckdb"), read_only=True) as cat:
        items = [r[0] for r in cat.execute("SELECT item_id FROM items ORDER BY item_idx").fetchall()]
        users = [r[0] for r in cat.execute("SELECT user_id FROM user_histories ORDER BY rowid").fetchall()]
    return {"item": [str(i) for i in items], "user": [str(u) for u in users]}


def data_ids(data: SplitData) -> dict[str, list[str]]:
    return {"item": [str(i) for i in data.item_ids], "user": [str(u) for u in data.user_ids]}


@dataclass(frozen=True)
class WarmSource:
    """A checkpoint to start from and the ids its rows belong to."""

    bundle: str | None
    checkpoint: Path
    ids: dict[str, list[str]]

    def record(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "checkpoint": str(self.checkpoint.name if self.bundle else self.checkpoint),
            "sha256": file_sha256(self.checkpoint / STATE_FILE),
        }


def live_warm_sources(
    store: ArtifactStore, model_name: str
) -> tuple[WarmSource | None, WarmSource | None, str]:
    """(for the evaluated fit, for the serving fit, why) from the live bundle, when it holds
    a torch checkpoint of the same model; ``None``s and the reason otherwise."""
    live = store.current_version()
    if live is None:
        return None, None, "no live bundle"
    base = store.root / live
    serving = base / SERVING_MODEL_DIR
    if not has_state(serving):
        return None, None, f"live bundle {live} holds no torch checkpoint"
    name = load_meta(serving).get("name")
    if name != model_name:
        return None, None, f"live bundle {live} holds {name!r}, not {model_name!r}"
    ids = catalog_ids(base)
    train = base / TRAIN_MODEL_DIR
    return (
        WarmSource(live, train, ids) if has_state(train) else None,
        WarmSource(live, serving, ids),
        f"live bundle {live}",
    )


def apply_warm_start(model: Recommender, source: WarmSource, data: SplitData, seed: int) -> GrowReport:
    """Grow ``source``'s checkpoint onto ``data``'s ids and hand it to the model before fit."""
    if not is_torch_model(model):
        raise CheckpointError(f"{model.name} has no id_tables()/set_initial_state(): it cannot warm-start")
    state = load_state(source.checkpoint)
    fresh = None
    initial = getattr(model, "initial_state", None)
    if callable(initial):
        fresh = initial(data.n_users, data.n_items)
    grown, report = grow_state(
        state,
        model.id_tables(),  # type: ignore[attr-defined]
        source.ids,
        data_ids(data),
        fresh,
        seed,
    )
    model.set_initial_state(grown)  # type: ignore[attr-defined]
    return report


@dataclass
class RunResult(TrainResult):
    """A recorded training run: the metrics, the fitted model and how it was configured."""

    config: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    warm_report: GrowReport | None = None


def fit_model(
    data: SplitData,
    name: str,
    params: dict[str, Any],
    parts: tuple[str, ...],
    warm: WarmSource | None = None,
) -> tuple[Recommender, float, GrowReport | None]:
    """Build, optionally warm-start, and fit on ``parts``; returns the model and fit seconds."""
    model = build_model(name, **params)
    if hasattr(model, "set_item_features"):  # hybrid models: text vectors, categories, recency
        model.set_item_features(data.item_features or ItemFeatures.empty(data.n_items))
    prepare_impressions(model, data, parts)
    report = apply_warm_start(model, warm, data, int(params.get("seed", 0))) if warm is not None else None
    histories = data.histories(parts)
    started = time.perf_counter()
    model.fit(histories_to_csr(histories, data.n_items), histories)
    return model, round(time.perf_counter() - started, 3), report


def train_run(
    data: SplitData,
    name: str,
    params: dict[str, Any],
    ks: list[int],
    warm: WarmSource | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Fit on train (warm when given), evaluate on valid and test, and describe the run."""
    model, seconds, report = fit_model(data, name, params, ("train",), warm)
    curve = model.training_curve() if callable(getattr(model, "training_curve", None)) else []  # type: ignore[attr-defined]
    for row in curve:
        log(
            f"{name} epoch {row['epoch']}: loss {row['loss']:.4f}, val ndcg@10 {row.get('val_ndcg10')}, "
            f"{row.get('seconds', 0):.1f}s"
        )
    valid = evaluate(model, data, "valid", ks)
    test = evaluate(model, data, "test", ks)
    config = {
        "model": name,
        "params": model.params(),
        "seed": model.params().get("seed"),
        "split": data.split_name,
        "fit_on": ["train"],
        "warm_start": warm.record() if warm is not None else None,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    return RunResult(
        run_id=uuid.uuid4().hex,
        model_name=name,
        params=model.params(),
        valid=valid,
        test=test,
        train_seconds=seconds,
        model=model,
        config=config,
        curve=curve,
        warm_report=report,
    )


def record_config_run(
    con: duckdb.DuckDBPyConnection,
    result: RunResult,
    proto: dict[str, Any],
    fingerprint: str,
    flow_run_id: str | None,
) -> None:
    """``record_run`` plus the full config in ``model_run_configs`` (same ``run_id``)."""
    record_run(con, result, proto, fingerprint, flow_run_id)
    con.execute(
        "INSERT INTO model_run_configs (run_id, config) VALUES (?, ?)",
        [result.run_id, json.dumps({**result.config, "data_fingerprint": fingerprint})],
    )


def recorded_config(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """The config a run was recorded with, and its recorded ``metrics``."""
    rows = con.execute(
        "SELECT c.config, r.metrics FROM model_runs r LEFT JOIN model_run_configs c USING (run_id) "
        "WHERE r.run_id = ?",
        [run_id],
    ).fetchall()
    if not rows:
        raise KeyError(f"no model run {run_id!r} in model_runs")
    if rows[0][0] is None:
        raise ValueError(f"model run {run_id} was recorded without a config; it cannot be re-run")
    return {**json.loads(rows[0][0]), "metrics": json.loads(rows[0][1])}


def reproduce_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    data: SplitData,
    ks: list[int],
    store: ArtifactStore | None = None,
) -> RunResult:
    """Fit again exactly as run ``run_id`` was: same model, parameters, seed and warm start.

    ``data`` must be the split the run used (the recorded fingerprint says which data that
    was); a warm-started run needs its source bundle, which must still be in ``store``.
    """
    config = recorded_config(con, run_id)
    if config.get("merge"):
        raise ValueError(
            f"run {run_id} is a checkpoint merge of {config['merge']['inputs']}; merge them again"
        )
    warm = None
    if config.get("warm_start"):
        ws = config["warm_start"]
        if store is None or ws.get("bundle") is None:
            raise ValueError(f"run {run_id} was warm-started from {ws}; pass the store holding that bundle")
        base = store.root / ws["bundle"]
        warm = WarmSource(ws["bundle"], base / ws["checkpoint"], catalog_ids(base))
        if file_sha256(warm.checkpoint / STATE_FILE) != ws["sha256"]:
            raise CheckpointError(f"{warm.checkpoint} changed since run {run_id} (checksum differs)")
    return train_run(data, config["model"], config["params"], ks, warm, log=lambda _: None)


def popularity_counts(data: SplitData) -> np.ndarray:
    return np.bincount(np.concatenate([*data.train, np.zeros(0, np.int64)]), minlength=data.n_items)


def bundle_vectors(
    con: duckdb.DuckDBPyConnection, settings: Settings, data: SplitData, log: Callable[[str], None] = print
) -> tuple[np.ndarray | None, Any]:
    """Text vectors and the FAISS index for a bundle over ``data``'s items (None, None when
    embedding is off). Raises below the index's recall floor, so nothing is published then."""
    if not settings.embedding.enabled:
        return None, None
    from expectations.vectors import check_item_vectors
    from models.text_encoder import embedding_dim
    from tasks.embedding import item_vectors
    from tasks.indexing import build_index

    ids = [str(i) for i in data.item_ids]
    vectors = item_vectors(con, settings.embedding, ids)
    check_item_vectors(vectors, data.n_items, embedding_dim(settings.embedding.model))
    index = build_index(vectors, ids, settings.index)
    log(
        f"index {index.kind} over {index.n} items, recall@{settings.index.recall_k}={index.recall or 0.0:.4f}"
    )
    return vectors, index


def vectors_key(con: duckdb.DuckDBPyConnection, settings: Settings) -> str | None:
    """What a bundle's item vectors and index are a function of: every item's text inputs (the
    columns :func:`tasks.embedding.plan_embedding` renders), the embedding settings that
    shape a vector, and the index settings; None when embedding is off. A bundle records it
    (``vectors_key``), so a later night with the same key reuses its vectors and index."""
    if not settings.embedding.enabled:
        return None
    items = con.execute(
        "SELECT count(*), bit_xor(hash(item_id, title, categories, year, description, url, source)) "
        "FROM items"
    ).fetchall()[0]
    embedding = settings.embedding
    payload = {
        "items": list(items),
        "embedding": [embedding.model, embedding.template, embedding.precision],
        "index": settings.index.model_dump(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def live_vectors(
    store: ArtifactStore, key: str | None, data: SplitData
) -> tuple[np.ndarray, ItemIndex, str] | None:
    """The live bundle's item vectors and index when its ``vectors_key`` is ``key`` and its
    items are ``data``'s in the same order (vectors, index, live version); else None."""
    live = store.current_version()
    if key is None or live is None or store.manifest(live).get("vectors_key") != key:
        return None
    bundle = store.root / live
    if not (bundle / "item_vectors.npy").is_file() or not (bundle / "index").is_dir():
        return None
    index = ItemIndex.load(bundle / "index", mmap=True)  # published files are never rewritten
    if list(index.item_ids) != [str(i) for i in data.item_ids]:
        return None
    return np.load(bundle / "item_vectors.npy"), index, live


def results_dict(settings: Settings, proto: dict[str, Any], runs: Sequence[TrainResult]) -> dict[str, Any]:
    """Runs in the shape of ``tasks/report.py::run_evaluation``'s results (for the report)."""
    return {
        "dataset": settings.catalogue,
        "protocol": proto,
        "models": {
            r.model_name: {**r.test, "train_seconds": r.train_seconds, "params": r.params} for r in runs
        },
        "valid": {r.model_name: r.valid for r in runs},
    }


def gate_markdown(
    champion: RunResult, runs: list[RunResult], published: PublishResult, live_scored: LiveScore
) -> str:
    """The champion/challenger decision as a table: every candidate against the live bundle
    (its metric re-scored on this split, or as stored when it could not be)."""
    nan = float("nan")
    live = live_scored.valid.get("ndcg@10", nan)
    rows = "\n".join(
        f"| {'**' + r.model_name + '**' if r is champion else r.model_name} "
        f"| {r.valid.get('ndcg@10', nan):.4f} "
        f"| {live:.4f} | {r.test.get('ndcg@10', nan):.4f} | {r.test.get('hr@10', nan):.4f} "
        f"| {r.train_seconds:.1f} s | {'warm: ' + r.warm_report.summary() if r.warm_report else 'cold'} |"
        for r in runs
    )
    return (
        f"### Champion / challenger\n\nChampion `{champion.model_name}`; published `{published.version}`; "
        f"live: `{published.live}` ({published.reason}); live valid ndcg@10 {live_scored.source}: "
        f"{live_scored.how}\n\n"
        "| model | valid ndcg@10 | live valid ndcg@10 | test ndcg@10 | test hr@10 | fit | start |\n"
        "|---|---:|---:|---:|---:|---:|---|\n" + rows + "\n"
    )


@dataclass(frozen=True)
class ChampionOutcome:
    published: PublishResult
    report_markdown: str
    gate_markdown: str
    serving_warm: GrowReport | None


def publish_champion(
    con: duckdb.DuckDBPyConnection,
    store: ArtifactStore,
    settings: Settings,
    data: SplitData,
    proto: dict[str, Any],
    runs: list[RunResult],
    champion: RunResult,
    *,
    tolerance: float,
    warm_start: bool,
    source_run: str | None,
    fingerprint: str,
    log: Callable[[str], None] = print,
    serving: Recommender | None = None,
    title: str | None = None,
) -> ChampionOutcome:
    """Refit the champion on everything (unless ``serving`` is given, as for a merge), attach
    report and train checkpoint, publish through the gate (``CURRENT`` moves only if valid
    ndcg@10 is within ``tolerance`` of the live one)."""
    import tempfile

    from tasks.eval_report import EvalReport, report_for_models

    serving_warm = serving_report = None
    started = time.perf_counter()
    live = store.current_version()
    live_scored = live_score(store, data, list(settings.eval.ks))  # on this split, like the champion
    live_valid = live_scored.valid
    log(f"gate: live {live} valid ndcg@10 {live_scored.source} ({live_scored.how})")

    def write_report(directory: Path, notes: str) -> EvalReport:
        """The evaluation report of every candidate run, the same whether published or refused."""
        return report_for_models(
            results_dict(settings, proto, runs),
            data,
            {r.model_name: r.model for r in runs},
            directory,
            title=title or f"train-models: {', '.join(r.model_name for r in runs)}",
            notes=notes,
        )

    # The gate before the serving refit: a refused challenger costs no second fit and leaves
    # no bundle; publish_bundle applies the same rule again when writing.
    refusal = gate_refusal(champion.valid, live, live_valid, tolerance)
    if refusal is not None:
        log(f"gate: {refusal}; nothing is refitted or written")
        with tempfile.TemporaryDirectory(prefix="recflow-train-") as tmp:
            report = write_report(Path(tmp) / "report", f"Refused by the gate: {refusal}.")
        published = PublishResult(None, live, refusal)
        return ChampionOutcome(
            published, report.markdown, gate_markdown(champion, runs, published, live_scored), None
        )
    if serving is None:
        if warm_start:
            _, serving_warm, why = live_warm_sources(store, champion.model_name)
            log(
                f"serving fit of {champion.model_name}: "
                + (f"warm start from {why}" if serving_warm else f"cold start ({why})")
            )
        serving, seconds, serving_report = fit_model(
            data, champion.model_name, champion.params, ("train", "valid", "test"), serving_warm
        )
        log(f"serving fit of {champion.model_name} on every interaction: {seconds:.1f}s")
    vectors, index = bundle_vectors(con, settings, data, log)
    with tempfile.TemporaryDirectory(prefix="recflow-train-") as tmp:
        attachments: dict[str, Path] = {}
        report = write_report(
            Path(tmp) / "report",
            f"Champion: `{champion.model_name}` (best validation ndcg@10); live bundle valid "
            f"ndcg@10: {live_valid.get('ndcg@10', float('nan')):.4f}.",
        )
        attachments["report"] = report.directory
        if is_torch_model(champion.model):
            champion.model.save(Path(tmp) / TRAIN_MODEL_DIR)
            attachments[TRAIN_MODEL_DIR] = Path(tmp) / TRAIN_MODEL_DIR
        if champion.model_name == "nrms" and data.impressions:
            from tasks.news_ranking import attach_news_ranker

            attachments["ranker"] = attach_news_ranker(
                con, settings, data, champion.model, vectors, Path(tmp), log
            )
        manifest = build_manifest(
            catalogue=settings.catalogue,
            source_run=source_run,
            result=champion,
            proto=proto,
            fingerprint=fingerprint,
            embedding=settings.embedding if settings.embedding.enabled else None,
            extra={
                "config": champion.config,
                "candidates": {
                    r.model_name: {"run_id": r.run_id, "valid_ndcg@10": r.valid.get("ndcg@10")} for r in runs
                },
                "warm_start": {
                    "train": champion.config.get("warm_start"),
                    "serving": serving_warm.record() if serving_warm else None,
                },
                "report": "report/report.md",
            },
        )
        published = publish_bundle(
            store,
            con,
            data,
            serving,
            manifest,
            tolerance=tolerance,
            vectors=vectors,
            index=index,
            attachments=attachments,
            live_scored=live_scored,
        )
    log(
        f"bundle {published.version} written in {time.perf_counter() - started:.1f}s; "
        f"live: {published.live} ({published.reason})"
    )
    return ChampionOutcome(
        published, report.markdown, gate_markdown(champion, runs, published, live_scored), serving_report
    )
