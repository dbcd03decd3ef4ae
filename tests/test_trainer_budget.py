"""``max_cpu_seconds`` bounds training within an epoch, not only between epochs."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from models.trainer import FitConfig, fit_module


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_budget_stops_inside_a_long_epoch() -> None:
    module = nn.Linear(4, 1)
    data = torch.randn(8, 4)
    calls = 0

    def make_batches(rng: np.random.Generator) -> list[torch.Tensor]:
        return [data] * 60  # one epoch ≈ 1.2 CPU seconds, six times the budget

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        _burn(0.02)
        return module(batch).pow(2).mean()

    report = fit_module(
        module,
        FitConfig(epochs=5, max_cpu_seconds=0.2, progress=False, threads=1),
        make_batches,
        loss_fn,
        validate=lambda: 0.5,
    )
    assert len(report.curve) == 1  # the partial first epoch is validated and kept
    assert report.best_epoch == 1
    assert 5 <= calls < 30, calls  # stopped near the budget, far from the epoch's 60 batches
    assert np.isfinite(report.curve[0]["loss"])


def test_without_a_budget_every_batch_of_every_epoch_runs() -> None:
    module = nn.Linear(4, 1)
    data = torch.randn(8, 4)
    calls = 0

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return module(batch).pow(2).mean()

    report = fit_module(
        module,
        FitConfig(epochs=3, progress=False, threads=1),
        lambda rng: [data] * 10,
        loss_fn,
    )
    assert calls == 30 and len(report.curve) == 3
