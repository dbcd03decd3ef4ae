"""One training loop for every torch model: epochs, AdamW, clipping, schedule, early stopping.

Models describe *what* to optimise (a module, a batch generator, a loss, a validation
metric); this loop decides *how*: the device (CUDA when present, else CPU), the seed, a
warm-up + cosine learning-rate schedule, gradient clipping, early stopping on the validation
metric with the best weights restored, a tqdm bar per epoch and the training curve (C4).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models.metrics import mask_seen, metrics_at_k, target_ranks


def pick_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when a GPU is present, else CPU; anything else is taken literally."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    """Same seed, same weights, same batches: runs are reproducible from their config."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class FitConfig:
    """How to optimise; recorded with the model's params."""

    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    patience: int = 5
    """Epochs without a better validation metric before stopping (best weights restored)."""
    warmup_epochs: float = 1.0
    schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 42
    device: str = "auto"
    progress: bool = True
    threads: int = 0
    """CPU threads for torch (0: torch's default). One thread is much faster than two when
    other processes share the cores: torch's worker threads spin waiting for each other."""
    max_seconds: float | None = None
    """Stop after the epoch that crosses this wall-clock budget (None: no budget)."""
    max_cpu_seconds: float | None = None
    """Stop at the batch that crosses this budget of the process's CPU time (None: no budget);
    the part of the epoch trained is validated like a whole one. Checked per batch, not per
    epoch: at a million interactions one epoch can cost more than the budget itself. Unlike
    wall-clock time it does not shrink when other processes share the cores."""


EpochHook = Callable[[int, float | None, dict[str, Any]], None]
"""``hook(epoch, validation metric or None, curve row)``, called after every epoch."""

_epoch_hook: ContextVar[EpochHook | None] = ContextVar("recflow_epoch_hook", default=None)


@contextmanager
def on_epoch(hook: EpochHook) -> Iterator[None]:
    """Call ``hook`` after each epoch of every :func:`fit_module` run inside the block.

    Why a context and not a model parameter: a tuner (``flows/tune.py``) watches any torch
    model's validation curve without each model passing a callback through. The hook may
    raise to stop training (Optuna's ``TrialPruned`` does); the exception leaves ``fit``."""
    token = _epoch_hook.set(hook)
    try:
        yield
    finally:
        _epoch_hook.reset(token)


@dataclass
class FitReport:
    curve: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float | None = None
    seconds: float = 0.0


def fit_module(
    module: nn.Module,
    config: FitConfig,
    make_batches: Callable[[np.random.Generator], Sequence[Any]],
    loss_fn: Callable[[Any], torch.Tensor],
    validate: Callable[[], float] | None = None,
    desc: str = "training",
) -> FitReport:
    """Train ``module`` in place; with ``validate`` stop early and keep the best epoch.

    ``make_batches(rng)`` returns one epoch's batches (called each epoch with the seeded
    generator, so shuffling is reproducible); ``loss_fn(batch)`` returns a scalar loss.
    """
    rng = np.random.default_rng(config.seed)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    report = FitReport()
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    bar = tqdm(range(1, config.epochs + 1), desc=desc, unit="epoch", disable=not config.progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        batches = make_batches(rng)
        if scheduler is None:
            scheduler = _schedule(optimizer, config, max(len(batches), 1))
        module.train()
        total, done, out_of_cpu = 0.0, 0, False
        for batch in batches:
            if (
                done
                and config.max_cpu_seconds is not None
                and time.process_time() - cpu_started > config.max_cpu_seconds
            ):
                out_of_cpu = True
                break
            done += 1
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at epoch {epoch}")
            loss.backward()
            if config.clip_norm > 0:
                nn.utils.clip_grad_norm_(params, config.clip_norm)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        mean_loss = total / max(done, 1)
        metric = None
        if validate is not None:
            module.eval()
            with torch.no_grad():
                metric = float(validate())
        report.curve.append(
            {
                "epoch": epoch,
                "loss": round(mean_loss, 6),
                "val_ndcg10": None if metric is None else round(metric, 6),
                "seconds": round(time.perf_counter() - epoch_start, 3),
                "lr": scheduler.get_last_lr()[0],
            }
        )
        bar.set_postfix(loss=f"{mean_loss:.4f}", val_ndcg10="-" if metric is None else f"{metric:.4f}")
        hook = _epoch_hook.get()
        if hook is not None:
            try:
                hook(epoch, metric, report.curve[-1])
            except BaseException:
                bar.close()
                raise
        if metric is not None:
            if report.best_metric is None or metric > report.best_metric + 1e-6:
                report.best_metric, report.best_epoch, stale = metric, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    break
        else:
            report.best_epoch = epoch
        if config.max_seconds is not None and time.perf_counter() - started > config.max_seconds:
            break
        if out_of_cpu or (
            config.max_cpu_seconds is not None and time.process_time() - cpu_started > config.max_cpu_seconds
        ):
            break
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _schedule(optimizer: torch.optim.Optimizer, config: FitConfig, steps_per_epoch: int) -> Any:
    """Linear warm-up, then cosine decay to 5 % of the peak over the planned epochs."""
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = max(int(config.warmup_epochs * steps_per_epoch), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def ndcg_at_10(
    score_fn: Callable[[list[np.ndarray]], np.ndarray],
    histories: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    batch_size: int = 1024,
) -> float:
    """Full-ranking NDCG@10 with history items masked: the early-stopping signal, computed
    exactly as the evaluator computes it."""
    users = [u for u in range(len(targets)) if len(targets[u])]
    if not users:
        return 0.0
    ranks: list[np.ndarray] = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        hist = [np.asarray(histories[u]) for u in batch]
        scores = np.array(score_fn(hist), dtype=np.float32, copy=True)
        mask_seen(scores, hist)
        ranks.extend(target_ranks(scores, [targets[u] for u in batch]))
    ranked = metrics_at_k(ranks, [10])
    return float(ranked["ndcg"][10])


def holdout_last(
    histories: Sequence[np.ndarray], min_length: int = 3
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each history into (all but last, [last]) for users with ``min_length`` items:
    the validation set a model makes for itself when fitted without one (serving refits)."""
    train, valid = [], []
    for h in histories:
        h = np.asarray(h, dtype=np.int64)
        if len(h) >= min_length:
            train.append(h[:-1])
            valid.append(h[-1:])
        else:
            train.append(h)
            valid.append(np.zeros(0, dtype=np.int64))
    return train, valid


def batches_of(indices: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


def write_checkpoint(directory: Path, net: torch.nn.Module, meta: dict[str, Any]) -> None:
    """``state.pt`` (CPU tensors, loadable anywhere) and ``model.json`` with ``meta``: the
    checkpoint layout every torch model shares, so merging and warm start read any of them."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, directory / "state.pt")
    (directory / "model.json").write_text(json.dumps(meta, indent=2))


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``model.json`` written by :func:`write_checkpoint`."""
    return json.loads((directory / "model.json").read_text())


def load_weights(directory: Path, net: torch.nn.Module, device: torch.device) -> None:
    """Load ``state.pt`` into ``net`` (strict: a checkpoint must fit its own module) for inference."""
    state = torch.load(directory / "state.pt", map_location=device, weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
