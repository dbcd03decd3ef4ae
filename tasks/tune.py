"""Hyper-parameter search for one model: search spaces, one trial, pruning, the trial table.

The ``tune-models`` flow (``flows/tune.py``) asks Optuna's TPE sampler for each trial's
parameters and tells it the result; :func:`run_trial` fits the model on the training part,
watches its validation NDCG@10 after every epoch (``models.trainer.on_epoch``) and stops it
when Optuna's median pruner says the curve is below the median of the finished trials at the
same epoch. The pruner runs beside the model on a private study holding copies of the
finished trials, so a trial prunes the same way in the flow's process and on a Dask worker.

Only the training and validation parts are read: :func:`without_test` empties the test part
before any trial sees the data, so tuning cannot leak the held-out result it is judged by.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
import numpy as np
import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.configs import config_class
from models.trainer import on_epoch
from tasks.training import SplitData, evaluate, prepare_model

Value = bool | int | float | str


class FloatRange(BaseModel):
    """A real parameter drawn from ``[low, high]`` (on a log scale with ``log``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high or (self.log and self.low <= 0):
            raise ValueError(
                f"float range needs low <= high (and low > 0 with log), got {self.low}..{self.high}"
            )
        return self


class IntRange(BaseModel):
    """An integer parameter drawn from ``[low, high]`` in steps of ``step``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high or (self.log and self.low <= 0):
            raise ValueError(
                f"int range needs low <= high (and low > 0 with log), got {self.low}..{self.high}"
            )
        return self


class Choice(BaseModel):
    """A parameter drawn from a list of values (one value: held fixed)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["choice"] = "choice"
    choices: list[Value] = Field(min_length=1)


Dimension = Annotated[FloatRange | IntRange | Choice, Field(discriminator="kind")]


class SearchSpace(BaseModel):
    """The parameters a study searches, by the model's config field name.

    The ``space`` parameter of the ``tune-models`` flow: ``params`` replace or extend the
    model's default space (:data:`DEFAULT_SPACES`) entry by entry; with ``replace`` only
    ``params`` are searched. Every other parameter keeps the settings' value."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    params: dict[str, Dimension] = Field(default_factory=dict)
    """Parameter name → ``{"kind": "float", "low": .., "high": .., "log": ..}``,
    ``{"kind": "int", "low": .., "high": ..}`` or ``{"kind": "choice", "choices": [..]}``."""
    replace: bool = False
    """Search only ``params`` instead of merging them over the default space."""


def _space(**params: Dimension) -> dict[str, Dimension]:
    return dict(params)


DEFAULT_SPACES: dict[str, dict[str, Dimension]] = {
    "two-tower": _space(
        dim=Choice(choices=[32, 64, 128]),
        max_len=Choice(choices=[20, 50]),
        layers=Choice(choices=[1, 2]),
        dropout=FloatRange(low=0.0, high=0.5),
        id_dropout=FloatRange(low=0.0, high=0.3),
        temperature=FloatRange(low=0.05, high=0.2, log=True),
        lr=FloatRange(low=1e-3, high=1e-2, log=True),
        weight_decay=FloatRange(low=1e-6, high=1e-2, log=True),
        batch_size=Choice(choices=[64, 128, 256]),
        windows=Choice(choices=["random", "all"]),
    ),
    "nextitem-mf": _space(
        dim=Choice(choices=[16, 32, 64]),
        window=IntRange(low=5, high=50, log=True),
        lr=FloatRange(low=1e-3, high=5e-2, log=True),
        weight_decay=FloatRange(low=1e-7, high=1e-3, log=True),
    ),
    "neumf": _space(
        dim=Choice(choices=[16, 32, 64]),
        negatives=IntRange(low=2, high=8),
        dropout=FloatRange(low=0.0, high=0.4),
        lr=FloatRange(low=1e-3, high=1e-2, log=True),
        weight_decay=FloatRange(low=1e-7, high=1e-3, log=True),
    ),
    "itemknn": _space(
        neighbors=IntRange(low=20, high=800, log=True),
        shrink=FloatRange(low=0.0, high=50.0),
    ),
    "itemknn-recency": _space(
        neighbors=IntRange(low=20, high=800, log=True),
        shrink=FloatRange(low=0.0, high=50.0),
        decay=FloatRange(low=0.3, high=1.0),
    ),
}
"""The space searched per model unless the flow's ``space`` says otherwise."""

TUNABLE = sorted(DEFAULT_SPACES)


def resolve_space(model: str, space: SearchSpace | None) -> dict[str, Dimension]:
    """The model's space with ``space`` applied, every bound checked by the model's config
    class first, so a bad space fails before any trial trains, naming the parameter."""
    if model not in DEFAULT_SPACES and (space is None or not space.replace):
        raise ValueError(
            f"model {model!r} has no default search space (tunable: {TUNABLE}); "
            "give one with space.params and space.replace = true"
        )
    params: dict[str, Dimension] = {} if space is not None and space.replace else dict(DEFAULT_SPACES[model])
    params.update(space.params if space is not None else {})
    if not params:
        raise ValueError(f"the search space for {model!r} is empty; give at least one parameter")
    config_cls = config_class(model)
    unknown = sorted(set(params) - set(config_cls.model_fields))
    if unknown:
        raise ValueError(
            f"search space names {unknown}, which {model!r} does not have; its parameters: "
            f"{sorted(config_cls.model_fields)}"
        )
    for name, dim in params.items():
        values: list[Value] = dim.choices if isinstance(dim, Choice) else [dim.low, dim.high]
        for value in values:
            try:
                config_cls.model_validate({name: value})
            except ValidationError as exc:
                raise ValueError(
                    f"search space {name}={value!r} is not a valid {model} parameter: "
                    f"{exc.errors()[0]['msg']}"
                ) from None
    return params


def distributions(space: dict[str, Dimension]) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, dim in space.items():
        if isinstance(dim, FloatRange):
            out[name] = optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntRange):
            out[name] = optuna.distributions.IntDistribution(
                dim.low, dim.high, log=dim.log, step=1 if dim.log else dim.step
            )
        else:
            out[name] = optuna.distributions.CategoricalDistribution(dim.choices)
    return out


def in_space(space: dict[str, Dimension], values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` the space can hold (for enqueuing a known config as a trial)."""
    kept: dict[str, Any] = {}
    for name, dim in space.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(dim, Choice):
            if value in dim.choices:
                kept[name] = value
        elif isinstance(value, int | float) and dim.low <= value <= dim.high:
            kept[name] = value
    return kept


def trial_fixed(model: str, max_epochs: int, max_seconds: float | None) -> dict[str, Any]:
    """Parameters every trial holds fixed: the epoch cap, the time left, no progress bars."""
    fields = config_class(model).model_fields
    fixed: dict[str, Any] = {}
    if "epochs" in fields:
        fixed["epochs"] = max_epochs
    if "progress" in fields:
        fixed["progress"] = False
    if "max_seconds" in fields and max_seconds is not None:
        fixed["max_seconds"] = max(max_seconds, 1.0)
    return fixed


def without_test(data: SplitData) -> SplitData:
    """The split with its test part emptied: what every trial gets, so nothing tuned on it."""
    empty = np.zeros(0, dtype=np.int64)
    return replace(data, test=[empty for _ in data.test])


@dataclass
class TrialOutcome:
    """What one trial did; recorded in ``model_runs`` and told to the study."""

    number: int
    params: dict[str, Any]
    """The full constructor parameters the model trained with."""
    sampled: dict[str, Any]
    """The parameters the sampler chose."""
    state: Literal["complete", "pruned", "failed"]
    value: float | None
    """Validation NDCG@10 (complete), the last reported one (pruned), None (failed)."""
    valid: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    device: str = "cpu"


def run_trial(
    data: SplitData,
    model: str,
    number: int,
    sampled: dict[str, Any],
    base: dict[str, Any],
    ks: list[int],
    finished: Sequence[optuna.trial.FrozenTrial],
    pruner: optuna.pruners.BasePruner,
) -> TrialOutcome:
    """Fit ``model`` with ``base`` + ``sampled`` on train, prune on validation NDCG@10 per
    epoch against ``finished`` trials, evaluate the survivor on validation only."""
    import torch

    from models.registry import build_model

    params = {**base, **sampled}
    started = time.perf_counter()
    curve: list[dict[str, Any]] = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        params = config_class(model).model_validate(params).model_dump()
        recommender = build_model(model, **params)
    except (ValueError, TypeError) as exc:
        return TrialOutcome(number, params, sampled, "failed", None, error=str(exc), device=device)
    judge = optuna.create_study(direction="maximize", pruner=pruner)
    judge.add_trials(list(finished))
    trial = judge.ask()

    def watch(epoch: int, metric: float | None, row: dict[str, Any]) -> None:
        curve.append(dict(row))
        if metric is None:
            return
        trial.report(metric, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: valid ndcg@10 {metric:.4f} below the median")

    prepare_model(recommender, data)
    if hasattr(recommender, "set_validation"):  # torch models: early stopping + pruning on valid
        recommender.set_validation(data.train, data.valid)
    try:
        with on_epoch(watch):
            recommender.fit(data.matrix(("train",)), data.train)
    except optuna.TrialPruned:
        seconds = round(time.perf_counter() - started, 3)
        last = next((r["val_ndcg10"] for r in reversed(curve) if r.get("val_ndcg10") is not None), None)
        return TrialOutcome(
            number, params, sampled, "pruned", last, {"ndcg@10": last or 0.0}, curve, seconds, device=device
        )
    except (FloatingPointError, RuntimeError, ValueError) as exc:
        return TrialOutcome(
            number,
            params,
            sampled,
            "failed",
            None,
            curve=curve,
            seconds=round(time.perf_counter() - started, 3),
            error=str(exc),
            device=device,
        )
    valid = evaluate(recommender, data, "valid", ks)
    return TrialOutcome(
        number,
        params,
        sampled,
        "complete",
        valid.get("ndcg@10"),
        valid,
        curve,
        round(time.perf_counter() - started, 3),
        device=device,
    )


def tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """Hand a trial's curve and result to the study (the sampler learns from both)."""
    for row in outcome.curve:
        if row.get("val_ndcg10") is not None:
            trial.report(float(row["val_ndcg10"]), int(row["epoch"]))
    trial.set_user_attr("seconds", outcome.seconds)
    if outcome.state == "complete" and outcome.value is not None and math.isfinite(outcome.value):
        study.tell(trial, outcome.value)
    elif outcome.state == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        trial.set_user_attr("error", outcome.error or "")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def record_trial(
    con: duckdb.DuckDBPyConnection,
    outcome: TrialOutcome,
    model: str,
    run_id: str,
    study: str,
    proto: dict[str, Any],
    fingerprint: str,
    flow_run_id: str | None,
) -> None:
    """One ``model_runs`` row per trial (validation metrics only) and its full config in
    ``model_run_configs``: re-runnable like any training run."""
    now = datetime.now(UTC).replace(tzinfo=None)
    con.execute(
        "INSERT INTO model_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
        [
            run_id,
            model,
            json.dumps(outcome.params),
            json.dumps({"valid": outcome.valid, "test": {}}),
            json.dumps(proto),
            fingerprint,
            flow_run_id,
            outcome.seconds,
            now,
        ],
    )
    import torch

    config = {
        "model": model,
        "params": outcome.params,
        "seed": outcome.params.get("seed"),
        "split": proto.get("split"),
        "fit_on": ["train"],
        "warm_start": None,
        "torch": torch.__version__,
        "device": outcome.device,
        "data_fingerprint": fingerprint,
        "tune": {
            "study": study,
            "trial": outcome.number,
            "state": outcome.state,
            "sampled": outcome.sampled,
            "valid_ndcg10": outcome.value,
            "epochs_run": len(outcome.curve),
            "error": outcome.error,
        },
    }
    con.execute("INSERT INTO model_run_configs (run_id, config) VALUES (?, ?)", [run_id, json.dumps(config)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trial_table(outcomes: Iterable[TrialOutcome], best: int | None, space: Iterable[str]) -> str:
    """The trials as a markdown table (best in bold), one column per searched parameter."""
    names = list(space)
    head = "| trial | state | valid ndcg@10 | epochs | seconds | " + " | ".join(names) + " |\n"
    head += "|---:|---|---:|---:|---:|" + "---|" * len(names) + "\n"
    rows = []
    for o in sorted(outcomes, key=lambda o: o.number):
        value = "—" if o.value is None else f"{o.value:.4f}"
        mark = "**" if o.number == best else ""
        cells = " | ".join(_fmt(o.sampled.get(n, "")) for n in names)
        rows.append(
            f"| {mark}{o.number}{mark} | {o.state} | {mark}{value}{mark} | {len(o.curve) or '—'} "
            f"| {o.seconds:.1f} | {cells} |"
        )
    return head + "\n".join(rows) + "\n"


def plot_study(outcomes: Sequence[TrialOutcome], path: Path, title: str) -> Path:
    """Two panels: valid NDCG@10 per trial with the best so far, and each trial's
    per-epoch validation curve (pruned trials dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (history, curves) = plt.subplots(1, 2, figsize=(11, 4))
    ordered = sorted(outcomes, key=lambda o: o.number)
    colours = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red"}
    best = float("-inf")
    best_line: list[tuple[int, float]] = []
    for o in ordered:
        if o.value is not None:
            history.scatter(o.number, o.value, color=colours[o.state], s=18, zorder=3)
        if o.state == "complete" and o.value is not None:
            best = max(best, o.value)
        if best > float("-inf"):
            best_line.append((o.number, best))
    if best_line:
        history.step(*zip(*best_line, strict=True), where="post", color="black", label="best so far")
    for state, colour in colours.items():
        history.scatter([], [], color=colour, label=state)
    history.set(xlabel="trial", ylabel="valid NDCG@10", title="Optimisation history")
    history.legend(fontsize=8)
    for o in ordered:
        points = [(r["epoch"], r["val_ndcg10"]) for r in o.curve if r.get("val_ndcg10") is not None]
        if points:
            curves.plot(
                *zip(*points, strict=True),
                color=colours[o.state],
                alpha=0.6,
                linestyle="--" if o.state == "pruned" else "-",
                linewidth=1,
            )
    curves.set(xlabel="epoch", ylabel="valid NDCG@10", title="Validation curve per trial (pruned dashed)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def png_markdown(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{caption}](data:image/png;base64,{data})\n"
