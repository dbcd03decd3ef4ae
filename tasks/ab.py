"""The A/B harness: two arms served side by side, simulated readers split between them.

Each arm is the service under its own settings (overrides on the catalogue's settings, e.g.
``serving.update_mode=none``), run as its own uvicorn server on 127.0.0.1 over the same
catalogue home, so both answer from the same bundle, pool and fresh stories and log to the
same event log. A session belongs to an arm by a stable hash of its id
(:func:`tasks.simulate.stable_arm`): the same reader always meets the same arm.

Per arm, over its sessions: click-through (clicks / listed stories), like rate and skip
rate (per listed story), mean dwell per click, catalogue coverage (distinct stories listed
/ stories in the catalogue) and the mean age of clicked stories. Each comes with a 95 %
percentile-bootstrap interval over sessions (readers, not impressions, are the independent
units: one reader's visits are correlated); coverage's is bias-corrected, since a resample
of sessions can only list fewer distinct stories than all of them did.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.artifacts import ArtifactStore
from storage.settings import Settings, catalogue_settings
from tasks.simulate import SimulationResult, Visit

METRICS: dict[str, str] = {
    "ctr": "click-through (clicks / listed)",
    "like_rate": "likes / listed",
    "skip_rate": "skips / listed",
    "dwell_s": "mean dwell per click (s)",
    "coverage": "catalogue coverage (distinct listed / catalogue)",
    "clicked_age_h": "mean age of clicked stories (h)",
}


@dataclass(frozen=True)
class Arm:
    """One arm: a name and the settings overrides it is served with."""

    name: str
    overrides: dict[str, Any]


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_arm(spec: str, default_name: str) -> Arm:
    """``[name:]key=value[,key=value…]`` with dotted settings keys, e.g.
    ``control:serving.update_mode=none,serving.exploration=false``; ``bundle=VERSION`` is
    short for ``serving.bundle_version=VERSION`` (serve that published bundle, not
    ``CURRENT``); an empty spec (or just ``name:``) is the catalogue's settings as they are.
    Values are JSON where they parse."""
    name, _, body = spec.partition(":") if ":" in spec.split("=", 1)[0] else (default_name, "", spec)
    name = name.strip() or default_name
    overrides: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or any(not k for k in key.strip().split(".")):
            raise ValueError(
                f"arm {name!r}: {part!r} is not key=value; expected e.g. serving.update_mode=none "
                "(dotted settings keys, comma-separated)"
            )
        node = overrides
        keys = key.strip().split(".")
        if keys == ["bundle"]:
            keys = ["serving", "bundle_version"]
            value = json.dumps(value.strip())  # a version is a string even when it looks like a number
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"arm {name!r}: {key!r} sets both a value and a field below it")
        node[keys[-1]] = parse_value(value.strip())
    return Arm(name, overrides)


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# --- serving the arms ------------------------------------------------------------------------


class ServiceThread:
    """The service app on a free port of 127.0.0.1, in a daemon thread (one per arm)."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from serving.app import create_app

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def arm_settings(catalogue: str, overrides: Mapping[str, Any] | None, arm: Arm) -> Settings:
    """The catalogue's settings under the run's overrides, then the arm's; an arm pinned to a
    bundle version must name a published one."""
    settings = catalogue_settings(catalogue, merge(overrides or {}, arm.overrides))
    pinned = settings.serving.bundle_version
    if pinned is not None:
        published = ArtifactStore(settings.bundles_dir).versions()
        if pinned not in published:
            raise ValueError(
                f"arm {arm.name!r}: bundle version {pinned!r} is not published under "
                f"{settings.bundles_dir}; published: {published[-5:]} (latest last)"
            )
    return settings


@contextmanager
def serve_arms(
    catalogue: str, overrides: Mapping[str, Any] | None, arms: Sequence[Arm]
) -> Iterator[dict[str, str]]:
    """Each arm's service running on 127.0.0.1; yields arm name → base URL."""
    with ExitStack() as stack:
        urls = {}
        for arm in arms:
            urls[arm.name] = stack.enter_context(ServiceThread(arm_settings(catalogue, overrides, arm)))
        yield urls


# --- metrics with intervals ------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.lo, self.hi]}


def estimate_text(e: Mapping[str, Any]) -> str:
    """``value [lo, hi]`` of an :meth:`Estimate.as_dict`."""
    return f"{e['value']:.4g} [{e['ci95'][0]:.4g}, {e['ci95'][1]:.4g}]"


def _per_session(visits: Sequence[Visit], item_index: dict[str, int]) -> dict[str, Any]:
    sessions = sorted({v.session for v in visits})
    at = {s: i for i, s in enumerate(sessions)}
    n = len(sessions)
    cols = {k: np.zeros(n) for k in ("shown", "clicks", "likes", "skips", "dwell", "age_sum", "age_n")}
    listed: list[set[int]] = [set() for _ in sessions]
    for v in visits:
        i = at[v.session]
        cols["shown"][i] += len(v.shown)
        cols["clicks"][i] += v.count("click")
        cols["likes"][i] += v.count("like")
        cols["skips"][i] += v.count("skip")
        cols["dwell"][i] += v.dwell_s
        ages = v.clicked_ages_h
        cols["age_sum"][i] += sum(ages)
        cols["age_n"][i] += len(ages)
        listed[i].update(item_index.setdefault(item, len(item_index)) for item in v.shown)
    return {"n": n, "listed": listed, **cols}


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    d = float(den.sum())
    return float(num.sum()) / d if d else float("nan")


def _metrics(s: dict[str, Any], pick: np.ndarray, catalogue_size: int) -> dict[str, float]:
    listed: set[int] = set()
    for i in pick:
        listed |= s["listed"][i]
    return {
        "ctr": _ratio(s["clicks"][pick], s["shown"][pick]),
        "like_rate": _ratio(s["likes"][pick], s["shown"][pick]),
        "skip_rate": _ratio(s["skips"][pick], s["shown"][pick]),
        "dwell_s": _ratio(s["dwell"][pick], s["clicks"][pick]),
        "coverage": len(listed) / catalogue_size if catalogue_size else float("nan"),
        "clicked_age_h": _ratio(s["age_sum"][pick], s["age_n"][pick]),
    }


BIASED = frozenset({"coverage"})
"""Metrics whose bootstrap intervals are bias-corrected (:func:`arm_metrics`)."""


def arm_metrics(
    visits: Sequence[Visit], catalogue_size: int, seed: int, resamples: int = 1000
) -> dict[str, Any]:
    """Point estimates and 95 % bootstrap intervals (sessions resampled) of every metric."""
    s = _per_session(visits, {})
    n = s["n"]
    if n == 0:
        return {
            "sessions": 0,
            "visits": 0,
            **{m: Estimate(float("nan"), float("nan"), float("nan")).as_dict() for m in METRICS},
        }
    point = _metrics(s, np.arange(n), catalogue_size)
    rng = np.random.default_rng(seed)
    draws = [_metrics(s, rng.integers(0, n, n), catalogue_size) for _ in range(resamples)]
    out: dict[str, Any] = {
        "sessions": n,
        "visits": len(visits),
        "listed": int(s["shown"].sum()),
        "clicks": int(s["clicks"].sum()),
        "likes": int(s["likes"].sum()),
        "skips": int(s["skips"].sum()),
    }
    for m in METRICS:
        values = np.array([d[m] for d in draws], dtype=float)
        values = values[~np.isnan(values)]
        lo, hi = np.percentile(values, [2.5, 97.5]) if len(values) else (float("nan"), float("nan"))
        if m in BIASED and len(values):
            # A resample of sessions lists at most the stories all of them did, so its coverage
            # is low by construction: the interval moves by the resamples' mean shortfall.
            shift = point[m] - float(values.mean())
            lo, hi = lo + shift, hi + shift
        out[m] = Estimate(round(point[m], 5), round(float(lo), 5), round(float(hi), 5)).as_dict()
    return out


def assignment(result: SimulationResult) -> dict[str, dict[str, Any]]:
    """Session → the arm that served it, its visits and the most session events the
    service said it applied (0 where the arm keeps no session state)."""
    out: dict[str, dict[str, Any]] = {}
    for v in result.visits:
        row = out.setdefault(v.session, {"arm": v.arm, "visits": 0, "session_events": 0})
        if row["arm"] != v.arm:
            raise AssertionError(f"session {v.session} met two arms: {row['arm']} and {v.arm}")
        row["visits"] += 1
        row["session_events"] = max(row["session_events"], v.session_events)
    return out


def compare(result: SimulationResult, arms: Sequence[str], catalogue_size: int, seed: int) -> dict[str, Any]:
    """Every arm's metrics, the relative CTR lift of the second arm over the first and
    whether their CTR intervals overlap."""
    per_arm = {a: arm_metrics([v for v in result.visits if v.arm == a], catalogue_size, seed) for a in arms}
    first, second = (per_arm[a]["ctr"] for a in arms[:2])
    lift = (second["value"] / first["value"] - 1.0) if first["value"] else float("nan")
    overlap = not (first["ci95"][1] < second["ci95"][0] or second["ci95"][1] < first["ci95"][0])
    return {
        "arms": per_arm,
        "ctr_lift": round(lift, 4),
        "ctr_intervals_overlap": overlap,
        "ctr_by_visit": ctr_by_visit(result, arms),
    }


VISIT_BUCKETS = ("1", "2", "3", "4+")


def ctr_by_visit(result: SimulationResult, arms: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm, click-through of a reader's 1st, 2nd, 3rd and later visits (``listed`` and
    ``ctr`` per bucket): where a lift is won, on the cold first visits or once a reader has
    a history, which one overall number hides."""
    seen: dict[str, int] = {}
    counts = {a: {b: [0, 0] for b in VISIT_BUCKETS} for a in arms}
    for visit in result.visits:
        n = seen.get(visit.session, 0)
        seen[visit.session] = n + 1
        if visit.arm not in counts:
            continue
        cell = counts[visit.arm][VISIT_BUCKETS[min(n, len(VISIT_BUCKETS) - 1)]]
        cell[0] += len(visit.shown)
        cell[1] += visit.count("click")
    return {
        a: {b: {"listed": float(n), "ctr": round(c / n, 5) if n else 0.0} for b, (n, c) in per.items()}
        for a, per in counts.items()
    }


# --- the report ------------------------------------------------------------------------------


def report_markdown(
    title: str, comparison: Mapping[str, Any], arms: Sequence[Arm], meta: Mapping[str, Any]
) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    for arm in arms:
        lines.append(
            f"- arm `{arm.name}`: `{json.dumps(arm.overrides) if arm.overrides else 'catalogue settings'}`"
        )
    lines += ["", "| metric | " + " | ".join(a.name for a in arms) + " |", "|---|" + "---|" * len(arms)]
    per = comparison["arms"]
    for key in ("sessions", "visits", "listed", "clicks", "likes", "skips"):
        lines.append(f"| {key} | " + " | ".join(str(per[a.name].get(key, 0)) for a in arms) + " |")
    for key, label in METRICS.items():
        cells = [estimate_text(per[a.name][key]) for a in arms]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    by_visit = comparison.get("ctr_by_visit")
    if by_visit:
        for bucket in VISIT_BUCKETS:
            cells = [f"{by_visit[a.name][bucket]['ctr']:.4f}" for a in arms]
            lines.append(f"| click-through, visit {bucket} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"CTR of `{arms[1].name}` relative to `{arms[0].name}`: {comparison['ctr_lift']:+.1%}; "
        f"95 % intervals {'overlap' if comparison['ctr_intervals_overlap'] else 'do not overlap'}.",
        "",
        "Intervals: 95 % percentile bootstrap over sessions (1000 resamples).",
    ]
    return "\n".join(lines) + "\n"


def plot_arms(comparison: Mapping[str, Any], arms: Sequence[Arm], path: Path) -> Path:
    """One panel per metric: each arm's estimate with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    per = comparison["arms"]
    for ax, (key, label) in zip(axes.flat, METRICS.items(), strict=True):
        values = [per[a.name][key]["value"] for a in arms]
        # A bootstrap interval need not contain the point estimate, so a bar never reaches below 0.
        lo = [max(0.0, v - per[a.name][key]["ci95"][0]) for a, v in zip(arms, values, strict=True)]
        hi = [max(0.0, per[a.name][key]["ci95"][1] - v) for a, v in zip(arms, values, strict=True)]
        ax.bar(
            [a.name for a in arms],
            values,
            yerr=[lo, hi],
            capsize=6,
            color=["tab:blue", "tab:orange"][: len(arms)],
        )
        ax.set_title(label, fontsize=9)
    fig.suptitle("A/B: simulated readers, 95 % bootstrap intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
