"""Data-quality gates: each rule rejects exactly its bad rows, quarantine is idempotent.

Real Great Expectations and a real DuckDB file throughout; the frames are small and written
by hand so that every expected rejection can be checked by eye.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from expectations import (
    DataQualityError,
    ValidationOutcome,
    enforce_failure_share,
    quarantine,
    quarantine_id,
    validate_interactions,
    validate_items,
)
from storage.warehouse import connect

NOT_NULL = "expect_column_values_to_not_be_null"
UNIQUE = "expect_column_values_to_be_unique"
BETWEEN = "expect_column_values_to_be_between"
KNOWN = "expect_column_values_to_not_be_in_set"


def items_frame(rows: list[tuple[Any, Any]]) -> pd.DataFrame:
    """Items with the given (item_id, title) pairs; row_number counts from 2 (after a header)."""
    return pd.DataFrame(
        {
            "item_id": [r[0] for r in rows],
            "title": [r[1] for r in rows],
            "categories": [["drama", "crime"] if i % 2 else [] for i in range(len(rows))],
            "year": pd.array([1990 + i for i in range(len(rows))], dtype="Int64"),
            "row_number": range(2, len(rows) + 2),
        }
    )


def interactions_frame(n: int = 6) -> pd.DataFrame:
    """``n`` valid interactions on items i0..i2 by users u0..u1, ts in [1000, 2000]."""
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 2}" for i in range(n)],
            "item_id": [f"i{i % 3}" for i in range(n)],
            "event_type": ["rating"] * n,
            "value": [float(1 + i % 5) for i in range(n)],
            "ts": [1000 + 100 * i for i in range(n)],
            "seq": list(range(n)),
            "row_number": list(range(2, n + 2)),
        }
    )


LIMITS: dict[str, Any] = {
    "known_items": ["i0", "i1", "i2"],
    "known_users": ["u0", "u1"],
    "value_min": 0.5,
    "value_max": 5.0,
    "min_ts": 1000,
    "max_ts": 2000,
}


def check(df: pd.DataFrame, **overrides: Any) -> ValidationOutcome:
    """Validate interactions against LIMITS, with some limits replaced."""
    return validate_interactions(df, source_file="ratings.csv", **{**LIMITS, **overrides})


def failing(outcome: ValidationOutcome) -> dict[str, list[int]]:
    """Rule -> sorted row numbers it rejected (rules with no failures left out)."""
    grouped = outcome.rejected.groupby("rule")["row_number"]
    return {rule: sorted(int(r) for r in rows) for rule, rows in grouped}


# --- items ---------------------------------------------------------------------------------


def test_valid_items_pass_untouched() -> None:
    df = items_frame([("a", "A"), ("b", "B"), ("c", "C")])
    out = validate_items(df, source_file="items.csv")
    assert out.table == "items" and out.source_file == "items.csv"
    assert out.total_rows == 3 and out.rejected_rows == 0 and out.failure_share == 0.0
    assert out.rejected.empty and list(out.rejected.columns) == ["row_number", "rule", "payload"]
    pd.testing.assert_frame_equal(out.clean, df)
    assert out.failures == {
        f"{NOT_NULL}(item_id)": 0,
        f"{UNIQUE}(item_id)": 0,
        f"{NOT_NULL}(title)": 0,
    }


def test_items_each_rule_catches_only_its_rows() -> None:
    df = items_frame([("a", "A"), (None, "no id"), ("b", None), ("c", "C")])
    out = validate_items(df, source_file="items.csv")
    assert failing(out) == {f"{NOT_NULL}(item_id)": [3], f"{NOT_NULL}(title)": [4]}
    assert out.clean["item_id"].tolist() == ["a", "c"]


def test_duplicate_item_ids_keep_the_first_occurrence() -> None:
    # GX's unique flags every copy of "a" and "b", the first ones included.
    df = items_frame([("a", "A1"), ("b", "B1"), ("a", "A2"), ("c", "C"), ("a", "A3"), ("b", "B2")])
    out = validate_items(df, source_file="items.csv")
    assert failing(out) == {f"{UNIQUE}(item_id)": [4, 6, 7]}
    assert out.failures[f"{UNIQUE}(item_id)"] == 3
    assert out.clean["title"].tolist() == ["A1", "B1", "C"]


def test_clean_keeps_input_order_and_resets_the_index() -> None:
    df = items_frame([("z", "Z"), ("y", None), ("x", "X"), ("w", "W")])
    df.index = [40, 30, 20, 10]
    out = validate_items(df, source_file="items.csv")
    assert out.clean["item_id"].tolist() == ["z", "x", "w"]
    assert out.clean.index.tolist() == [0, 1, 2]
    assert list(out.clean.columns) == list(df.columns)
    assert failing(out) == {f"{NOT_NULL}(title)": [3]}


def test_payload_is_the_original_row_as_json() -> None:
    df = items_frame([("a", "A"), ("b", None)])  # row 3 has categories ["drama", "crime"]
    df["year"] = pd.array([1999, None], dtype="Int64")
    out = validate_items(df, source_file="items.csv")
    row = out.rejected.iloc[0]
    assert isinstance(row["row_number"], (int, np.integer)) and row["row_number"] == 3
    assert json.loads(row["payload"]) == {
        "item_id": "b",
        "title": None,
        "categories": ["drama", "crime"],
        "year": None,
    }


# --- interactions --------------------------------------------------------------------------


def test_valid_interactions_pass_untouched() -> None:
    df = interactions_frame()
    out = check(df)
    assert out.table == "interactions" and out.rejected.empty
    pd.testing.assert_frame_equal(out.clean, df)
    assert set(out.failures) == {
        f"{NOT_NULL}(user_id)",
        f"{NOT_NULL}(item_id)",
        f"{NOT_NULL}(ts)",
        f"{BETWEEN}(ts)",
        f"{BETWEEN}(value)",
        f"{KNOWN}(item_id)",
        f"{KNOWN}(user_id)",
    }
    assert not any(out.failures.values())


@pytest.mark.parametrize(
    ("column", "bad", "rule"),
    [
        ("user_id", None, f"{NOT_NULL}(user_id)"),
        ("item_id", None, f"{NOT_NULL}(item_id)"),
        ("ts", None, f"{NOT_NULL}(ts)"),
        ("ts", 999, f"{BETWEEN}(ts)"),
        ("ts", 2001, f"{BETWEEN}(ts)"),
        ("ts", 1_700_000_000_000, f"{BETWEEN}(ts)"),  # milliseconds by mistake
        ("value", 0.0, f"{BETWEEN}(value)"),
        ("value", 5.5, f"{BETWEEN}(value)"),
        ("item_id", "i999", f"{KNOWN}(item_id)"),
        ("user_id", "stranger", f"{KNOWN}(user_id)"),
    ],
)
def test_interaction_rule_catches_only_its_rows(column: str, bad: Any, rule: str) -> None:
    df = interactions_frame()
    if column == "ts" and bad is None:
        df["ts"] = df["ts"].astype("Int64")
    df[column] = df[column].astype(object)
    df.loc[[1, 4], column] = bad  # row_numbers 3 and 6
    out = check(df)
    assert failing(out) == {rule: [3, 6]}
    assert out.failures[rule] == 2 and out.rejected_rows == 2
    assert out.clean["row_number"].tolist() == [2, 4, 5, 7]


def test_bounds_are_inclusive_and_a_missing_value_is_allowed() -> None:
    df = interactions_frame(4)
    df["ts"] = [1000, 2000, 1500, 1500]
    df["value"] = [0.5, 5.0, None, np.nan]
    out = check(df)
    assert out.rejected.empty and len(out.clean) == 4


def test_user_rule_is_skipped_without_known_users() -> None:
    df = interactions_frame()
    df.loc[0, "user_id"] = "stranger"
    out = check(df, known_users=None)
    assert out.rejected.empty
    assert f"{KNOWN}(user_id)" not in out.failures


def test_known_ids_accept_any_iterable() -> None:
    df = interactions_frame()
    df.loc[2, "item_id"] = "i999"
    out = check(df, known_items=(f"i{k}" for k in range(3)), known_users={"u0", "u1"})
    assert failing(out) == {f"{KNOWN}(item_id)": [4]}


def test_a_row_breaking_two_rules_is_listed_twice_but_counted_once() -> None:
    df = interactions_frame()
    df.loc[2, ["item_id", "value"]] = ["i999", 9.0]
    df.loc[3, "ts"] = 5000
    out = check(df)
    assert out.rejected[["row_number", "rule"]].values.tolist() == [
        [4, f"{BETWEEN}(value)"],
        [4, f"{KNOWN}(item_id)"],
        [5, f"{BETWEEN}(ts)"],
    ]
    assert out.rejected_rows == 2 and out.failure_share == pytest.approx(2 / 6)
    payload = json.loads(out.rejected["payload"].iloc[0])
    assert payload == {
        "user_id": "u0",
        "item_id": "i999",
        "event_type": "rating",
        "value": 9.0,
        "ts": 1200,
        "seq": 2,
    }


def test_payload_is_json_safe_for_infinities() -> None:
    df = interactions_frame(2)
    df["value"] = [np.inf, 1.0]
    out = check(df)
    assert json.loads(out.rejected["payload"].iloc[0])["value"] == "inf"


def test_empty_file_validates() -> None:
    out = check(interactions_frame(0))
    assert out.total_rows == 0 and out.failure_share == 0.0
    assert out.clean.empty and out.rejected.empty


def test_missing_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"ratings\.csv: missing column\(s\) ts"):
        check(interactions_frame().drop(columns="ts"))


def test_uncomparable_column_is_reported_not_passed() -> None:
    df = interactions_frame().assign(ts="yesterday")
    with pytest.raises(RuntimeError, match=r"ratings\.csv.*between\(ts\)"):
        check(df)


def test_repeated_calls_do_not_collide() -> None:
    first = check(interactions_frame())
    df = interactions_frame()
    df.loc[0, "item_id"] = "i999"
    second = check(df)
    assert first.rejected.empty and failing(second) == {f"{KNOWN}(item_id)": [2]}


def test_100k_rows_validate() -> None:
    n = 100_000
    rng = np.random.default_rng(7)
    df = pd.DataFrame(
        {
            "user_id": rng.choice([f"u{k}" for k in range(5_000)], n),
            "item_id": rng.choice([f"i{k}" for k in range(2_000)], n),
            "event_type": "rating",
            "value": rng.integers(1, 6, n).astype(float),
            "ts": rng.integers(1_000, 2_001, n),
            "seq": np.arange(n),
            "row_number": np.arange(2, n + 2),
        }
    )
    df.loc[[10, 50_000, 99_999], "value"] = 7.0
    out = check(
        df,
        known_items=[f"i{k}" for k in range(2_000)],
        known_users=[f"u{k}" for k in range(5_000)],
    )
    assert out.total_rows == n and len(out.clean) == n - 3
    assert failing(out) == {f"{BETWEEN}(value)": [12, 50_002, 100_001]}


# --- quarantine ----------------------------------------------------------------------------


def test_quarantine_writes_rejected_rows_once(tmp_path: Path) -> None:
    df = interactions_frame()
    df.loc[1, "ts"] = 1
    df.loc[2, ["item_id", "value"]] = ["i999", 9.0]
    out = check(df)
    con = connect(tmp_path / "w.duckdb")
    try:
        assert quarantine(con, out) == 3
        assert quarantine(con, out) == 0
        rows = con.execute(
            "SELECT quarantine_id, table_name, source_file, row_number, rule, "
            "payload->>'item_id' FROM quarantine ORDER BY row_number, rule"
        ).fetchall()
    finally:
        con.close()
    assert [r[1:] for r in rows] == [
        ("interactions", "ratings.csv", 3, f"{BETWEEN}(ts)", "i1"),
        ("interactions", "ratings.csv", 4, f"{BETWEEN}(value)", "i999"),
        ("interactions", "ratings.csv", 4, f"{KNOWN}(item_id)", "i999"),
    ]
    assert rows[0][0] == quarantine_id("interactions", "ratings.csv", 3, f"{BETWEEN}(ts)")


def test_quarantine_keeps_files_apart_and_survives_reopening(tmp_path: Path) -> None:
    df = items_frame([("a", "A"), ("a", "again")])
    path = tmp_path / "w.duckdb"
    con = connect(path)
    try:
        assert quarantine(con, validate_items(df, source_file="items-1.csv")) == 1
        assert quarantine(con, validate_items(df, source_file="items-2.csv")) == 1
    finally:
        con.close()
    con = connect(path)
    try:
        assert quarantine(con, validate_items(df, source_file="items-1.csv")) == 0
        assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (2,)
    finally:
        con.close()


def test_quarantine_of_a_clean_file_inserts_nothing(tmp_path: Path) -> None:
    con = connect(tmp_path / "w.duckdb")
    try:
        assert quarantine(con, check(interactions_frame())) == 0
    finally:
        con.close()


# --- failure share and summary -------------------------------------------------------------


def test_enforce_failure_share_names_file_rule_and_counts() -> None:
    df = interactions_frame(10)
    df.loc[[0, 1, 2], "value"] = 9.0
    df.loc[3, "ts"] = 1
    out = check(df)
    with pytest.raises(DataQualityError) as info:
        enforce_failure_share(out, 0.05)
    assert str(info.value) == (
        "ratings.csv: 4 of 10 rows (40.0%) failed validation, more than the allowed 5.0%; "
        f"worst rule {BETWEEN}(value) failed on 3 rows"
    )
    assert isinstance(info.value, ValueError)


def test_enforce_failure_share_passes_at_or_below_the_share() -> None:
    df = interactions_frame(10)
    df.loc[0, "value"] = 9.0
    out = check(df)
    enforce_failure_share(out, 0.1)  # exactly the allowed share
    enforce_failure_share(out, 0.5)
    with pytest.raises(DataQualityError, match=r"1 of 10 rows \(10\.0%\).*allowed 9\.0%"):
        enforce_failure_share(out, 0.09)
    with pytest.raises(ValueError, match="max_share"):
        enforce_failure_share(out, 5.0)


def test_summary_markdown_lists_totals_and_rules() -> None:
    df = interactions_frame(4)
    df.loc[0, "value"] = 9.0
    text = check(df).summary_markdown()
    assert "| ratings.csv | interactions | 4 | 3 | 1 (25.0%) |" in text
    assert f"| {BETWEEN}(value) | 1 |" in text
    assert f"| {NOT_NULL}(ts) | 0 |" in text
