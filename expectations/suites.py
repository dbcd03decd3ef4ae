"""Row-level data-quality gates for incoming files, run with Great Expectations.

Why this module exists: a raw file must not reach the warehouse with rows that would poison
training (unknown ids, timestamps from 1970 or the future, ratings outside the scale). Rather
than rejecting a whole file for a handful of bad lines, each file is split into

* ``clean`` rows, which pass every expectation and may be loaded, and
* ``rejected`` rows, one per (row, failed rule), which :func:`quarantine` keeps in the
  warehouse with the original row as JSON so that someone can see *why* a line was dropped;

and :func:`enforce_failure_share` stops the load outright when too much of a file is bad,
because then the file (or the catalogue it refers to) is broken, not a few lines.

The expectations run through Great Expectations 1.x for real, so the rules are standard GX
expectations with GX's documented semantics (nulls are skipped by range/set rules, bounds
are inclusive). Choices forced by the stack (GX 1.x beside DuckDB 2):

* the pandas data source, not SQL: GX's SQL data source is broken on DuckDB;
* GX is imported lazily: importing it costs seconds, and most callers (the API, the CLI)
  import this package without validating anything;
* one ephemeral context per process, created on first use and reused: creating contexts is
  slow and an ephemeral one leaves nothing on disk. Every call registers its own uniquely
  named asset and suite and deletes the asset afterwards, so calls never collide and a
  long-running worker does not accumulate assets.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import duckdb
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.datasource.fluent import PandasDatasource
    from great_expectations.expectations import Expectation

__all__ = [
    "DataQualityError",
    "ValidationOutcome",
    "enforce_failure_share",
    "quarantine",
    "quarantine_id",
    "validate_interactions",
    "validate_items",
]

_UNIQUE = "expect_column_values_to_be_unique"
_REJECTED_COLUMNS = ["row_number", "rule", "payload"]

# GX's pandas engine is not thread-safe and the context is shared, so validations in one
# process (e.g. Prefect's thread pool) run one at a time. They take ~0.1-0.3 s each.
_GX_LOCK = threading.Lock()
_GX_CACHE: dict[str, Any] = {}


class DataQualityError(ValueError):
    """A file failed validation on more rows than allowed, so it must not be loaded.

    A ``ValueError`` because the input, not the code, is wrong; flows catch it to fail the
    load with a message a human can act on (which file, which rule, how many rows).
    """


@dataclass
class ValidationOutcome:
    """What validating one file produced: the loadable rows and the rejected ones with why.

    ``rejected`` has one row per (failing row, rule), so a row breaking two rules appears
    twice there (and twice in the quarantine) but is counted once in :attr:`rejected_rows`.
    ``failures`` lists every rule that ran, in suite order, with 0 for rules nobody broke,
    so summaries show what was checked and not only what failed.
    """

    table: str
    source_file: str
    clean: pd.DataFrame
    rejected: pd.DataFrame
    total_rows: int
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_rows(self) -> int:
        """Distinct source rows rejected by at least one rule."""
        return int(self.rejected["row_number"].nunique())

    @property
    def failure_share(self) -> float:
        """Share of the file's rows rejected (0.0 for an empty file)."""
        return self.rejected_rows / self.total_rows if self.total_rows else 0.0

    def summary_markdown(self) -> str:
        """A small markdown report (for a Prefect artifact): totals, then counts per rule."""
        share = _format_share(self.failure_share, 1)
        lines = [
            "| file | table | rows | clean | rejected |",
            "| --- | --- | ---: | ---: | ---: |",
            f"| {_md(self.source_file)} | {_md(self.table)} | {self.total_rows:,} "
            f"| {len(self.clean):,} | {self.rejected_rows:,} ({share}) |",
            "",
            "| rule | failing rows |",
            "| --- | ---: |",
        ]
        lines += [f"| {_md(rule)} | {count:,} |" for rule, count in self.failures.items()]
        return "\n".join(lines) + "\n"


def validate_items(df: pd.DataFrame, *, source_file: str) -> ValidationOutcome:
    """Validate an items file: ``item_id`` present and unique, ``title`` present.

    An item without an id cannot be referenced and one without a title cannot be shown or
    embedded. For duplicated ids the first occurrence in the file wins (it stays clean, if it
    passes the other rules) and every later one is rejected, so a re-listed item never
    silently overwrites the one loaded first. GX's ``unique`` flags *every* occurrence of a
    duplicated value, first one included; the first occurrences are dropped from its failures
    here.
    """
    import great_expectations.expectations as gxe

    _require_columns(df, ["item_id", "title", "row_number"], source_file)
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="title"),
    ]
    return _validate(df, "items", source_file, expectations)


def validate_interactions(
    df: pd.DataFrame,
    *,
    source_file: str,
    known_items: Iterable[str],
    known_users: Iterable[str] | None,
    value_min: float,
    value_max: float,
    min_ts: int,
    max_ts: int,
) -> ValidationOutcome:
    """Validate an interactions file against the catalogue and plausible ranges.

    Rules: ``user_id``, ``item_id`` and ``ts`` present; ``min_ts <= ts <= max_ts`` (clock
    errors and unit mix-ups, e.g. milliseconds); ``value_min <= value <= value_max`` where a
    value is given (implicit events such as clicks have none); ``item_id`` among
    ``known_items`` and, unless ``known_users`` is None (open sign-up), ``user_id`` among
    ``known_users``, because an event on an unknown id cannot be joined or trained on.

    Membership is expressed as ``expect_column_values_to_not_be_in_set`` over the ids of this
    file that are *not* known, rather than ``..._to_be_in_set`` over the whole catalogue. The
    failing rows are identical, but GX copies an expectation's arguments dozens of times per
    run: a 70k-id catalogue made 100k rows take ~15 s, while the unknown ids of a normal file
    are a handful (~0.2 ms per distinct unknown id). Rules are therefore named
    ``expect_column_values_to_not_be_in_set(item_id)`` / ``(user_id)``.
    """
    import great_expectations.expectations as gxe

    if value_min > value_max or min_ts > max_ts:
        raise ValueError(f"empty range: value [{value_min}, {value_max}], ts [{min_ts}, {max_ts}]")
    columns = ["user_id", "item_id", "ts", "value", "row_number"]
    _require_columns(df, columns, source_file)
    expectations: list[Expectation] = [
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="ts"),
        gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=min_ts, max_value=max_ts),
        gxe.ExpectColumnValuesToBeBetween(column="value", min_value=value_min, max_value=value_max),
        gxe.ExpectColumnValuesToNotBeInSet(
            column="item_id",
            value_set=_unknown_values(df["item_id"], known_items),
            notes="item_id must be a known item; value_set lists this file's unknown ids",
        ),
    ]
    if known_users is not None:
        expectations.append(
            gxe.ExpectColumnValuesToNotBeInSet(
                column="user_id",
                value_set=_unknown_values(df["user_id"], known_users),
                notes="user_id must be a known user; value_set lists this file's unknown ids",
            )
        )
    return _validate(df, "interactions", source_file, expectations)


def quarantine_id(table: str, source_file: str, row_number: int, rule: str) -> str:
    """Deterministic key of one quarantined (row, rule), so re-running a load adds nothing.

    A JSON array is hashed, not a joined string, so that no choice of separator can make
    two different keys collide.
    """
    key = json.dumps([table, source_file, int(row_number), rule], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def quarantine(con: duckdb.DuckDBPyConnection, outcome: ValidationOutcome) -> int:
    """Store ``outcome.rejected`` in the ``quarantine`` table; returns rows newly inserted.

    Idempotent: each row's key is :func:`quarantine_id`, and keys already present are
    skipped (``ON CONFLICT DO NOTHING``), so retrying a flow never duplicates quarantine
    rows. The rows go in as one bulk insert from a registered DataFrame.
    """
    rejected = outcome.rejected
    if rejected.empty:
        return 0
    ids = [
        quarantine_id(outcome.table, outcome.source_file, row_number, rule)
        for row_number, rule in zip(rejected["row_number"], rejected["rule"], strict=True)
    ]
    frame = pd.DataFrame(
        {
            "quarantine_id": ids,
            "table_name": outcome.table,
            "source_file": outcome.source_file,
            "row_number": rejected["row_number"].astype("int64").to_numpy(),
            "rule": rejected["rule"].astype(str).to_numpy(),
            "payload": rejected["payload"].astype(str).to_numpy(),
        }
    ).drop_duplicates("quarantine_id")
    view = f"_quarantine_batch_{uuid.uuid4().hex}"
    con.register(view, frame)
    try:
        row = con.execute(
            "INSERT INTO quarantine "
            "(quarantine_id, table_name, source_file, row_number, rule, payload) "
            "SELECT quarantine_id, table_name, source_file, row_number, rule, payload::JSON "
            f"FROM {view} ON CONFLICT DO NOTHING"
        ).fetchone()
    finally:
        con.unregister(view)
    return int(row[0]) if row else 0


def enforce_failure_share(outcome: ValidationOutcome, max_share: float) -> None:
    """Raise :class:`DataQualityError` when more than ``max_share`` of the rows were rejected.

    Quarantining a few bad lines is routine; losing a large share means the file or the
    catalogue is wrong, and loading the remainder would quietly skew the data. The message
    names the file, the rule that failed most and the counts, so it can be acted on from
    the flow's log alone.
    """
    if not 0.0 <= max_share <= 1.0:
        raise ValueError(f"max_share must be between 0 and 1, got {max_share}")
    share = outcome.failure_share
    if share <= max_share:
        return
    worst_rule, worst_count = min(outcome.failures.items(), key=lambda kv: (-kv[1], kv[0]))
    digits = 1
    while digits < 4 and _format_share(share, digits) == _format_share(max_share, digits):
        digits += 1
    raise DataQualityError(
        f"{outcome.source_file}: {outcome.rejected_rows:,} of {outcome.total_rows:,} rows "
        f"({_format_share(share, digits)}) failed validation, more than the allowed "
        f"{_format_share(max_share, digits)}; worst rule {worst_rule} failed on "
        f"{worst_count:,} {'row' if worst_count == 1 else 'rows'}"
    )


# --- internals ---------------------------------------------------------------------------


def _gx() -> tuple[AbstractDataContext, PandasDatasource]:
    """The process-wide ephemeral GX context and its pandas data source, made on first use."""
    if "context" not in _GX_CACHE:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        # GX draws tqdm bars on stderr for every validation; they only clutter flow logs.
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _GX_CACHE["datasource"] = context.data_sources.add_pandas(name="recflow")
        _GX_CACHE["context"] = context
    return _GX_CACHE["context"], _GX_CACHE["datasource"]


def _validate(
    df: pd.DataFrame, table: str, source_file: str, expectations: Sequence[Expectation]
) -> ValidationOutcome:
    """Run ``expectations`` on ``df`` with GX and split it into clean and rejected rows."""
    import great_expectations as gx

    # GX reports failing rows by index label; a fresh RangeIndex makes labels positions.
    data = df.reset_index(drop=True)
    name = f"{table}-{uuid.uuid4().hex}"
    with _GX_LOCK:
        _, datasource = _gx()
        asset = datasource.add_dataframe_asset(name=name)
        try:
            batch = asset.add_batch_definition_whole_dataframe(name).get_batch(
                batch_parameters={"dataframe": data}
            )
            suite = gx.ExpectationSuite(name=name, expectations=list(expectations))
            result = batch.validate(
                suite,
                result_format={
                    "result_format": "COMPLETE",
                    "partial_unexpected_count": 0,
                    "return_unexpected_index_query": False,
                },
            )
        finally:
            datasource.delete_asset(name=name)

    by_rule: dict[str, list[int]] = {}
    for res in result.results:
        config = res.expectation_config
        if config is None:
            raise RuntimeError(f"{source_file}: GX returned a result without its expectation")
        rule = f"{config.type}({config.kwargs.get('column')})"
        failed = _raised(res.exception_info)
        if failed:
            raise RuntimeError(f"{source_file}: GX could not evaluate {rule}: {failed}")
        by_rule[rule] = [int(i) for i in res.result.get("unexpected_index_list") or []]
    # GX may reorder results; report rules in the order the suite declares them.
    rules = [f"{e.expectation_type}({getattr(e, 'column', None)})" for e in expectations]
    for rule in rules:
        if rule.startswith(_UNIQUE + "("):
            column = rule[len(_UNIQUE) + 1 : -1]
            later = data[column].duplicated(keep="first").to_numpy()
            by_rule[rule] = [i for i in by_rule[rule] if later[i]]

    positions = np.array([i for rule in rules for i in by_rule[rule]], dtype=np.int64)
    rule_of = np.array([rule for rule in rules for _ in by_rule[rule]], dtype=object)
    order = np.lexsort((np.arange(len(positions)), positions))  # by row, then suite order
    positions, rule_of = positions[order], rule_of[order]

    bad = np.zeros(len(data), dtype=bool)
    bad[positions] = True
    payload_columns = [c for c in data.columns if c != "row_number"]
    payloads = _payloads(data.iloc[np.unique(positions)][payload_columns])
    rejected = pd.DataFrame(
        {
            "row_number": data["row_number"].to_numpy()[positions].astype("int64"),
            "rule": pd.Series(rule_of, dtype=object).astype(str),
            "payload": pd.Series([payloads[p] for p in positions], dtype=object).astype(str),
        },
        columns=_REJECTED_COLUMNS,
    )
    return ValidationOutcome(
        table=table,
        source_file=source_file,
        clean=data[~bad].reset_index(drop=True),
        rejected=rejected,
        total_rows=len(data),
        failures={rule: len(by_rule[rule]) for rule in rules},
    )


def _require_columns(df: pd.DataFrame, columns: list[str], source_file: str) -> None:
    """Fail fast on a malformed frame: GX would report a missing column per expectation."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{source_file}: missing column(s) {', '.join(missing)}")


def _unknown_values(column: pd.Series, known: Iterable[str]) -> list[Any]:
    """Distinct non-null values of ``column`` not in ``known``, sorted for stable configs.

    A Python set, not ``Series.isin``: pandas' Arrow strings test membership in a list
    element by element in Python, ~0.4 s for a 50k-id catalogue against ~5 ms here.
    """
    known_set = known if isinstance(known, set | frozenset) else set(known)
    seen = column.dropna().unique().tolist()
    return sorted((v for v in seen if v not in known_set), key=str)


def _raised(info: Any) -> str | None:
    """GX's exception message when an expectation could not be evaluated, else None."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for nested in info.values():  # one entry per metric when several metrics failed
        if isinstance(nested, dict) and nested.get("raised_exception"):
            return str(nested.get("exception_message"))
    return None


def _payloads(rows: pd.DataFrame) -> dict[int, str]:
    """Rows as JSON strings keyed by position, cells made JSON-safe by :func:`_json_safe`.

    Built column by column (``tolist`` gives Python scalars cheaply) rather than with
    ``to_dict("records")``, which iterates Arrow-backed columns slowly.
    """
    names = [str(c) for c in rows.columns]
    columns = [rows[c].tolist() for c in rows.columns]
    return {
        int(pos): json.dumps(dict(zip(names, map(_json_safe, values), strict=True)))
        for pos, *values in zip(rows.index, *columns, strict=True)
    }


def _json_safe(value: Any) -> Any:
    """One cell as plain JSON: NaN/NA -> null, arrays -> lists, numpy scalars -> Python.

    ``json.dumps`` would otherwise fail on numpy values or write ``NaN``, which DuckDB's JSON
    type (and most JSON readers) reject.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # the common cases first: this runs once per rejected cell
    if kind is float:
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | np.ndarray | pd.api.extensions.ExtensionArray):
        return [_json_safe(v) for v in value]
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool | int):  # subclasses such as IntEnum
        return int(value) if not isinstance(value, bool) else bool(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else _non_finite(value)
    return str(value)


def _non_finite(value: float) -> str | None:
    """NaN is a missing value (null); infinities are kept visible as "inf" / "-inf"."""
    return None if math.isnan(value) else str(value)


def _format_share(share: float, digits: int) -> str:
    """A share as a percentage with ``digits`` decimals, e.g. 0.123 -> '12.3%'."""
    return f"{share * 100:.{digits}f}%"


def _md(text: str) -> str:
    """Escape a value for a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
