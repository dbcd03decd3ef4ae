"""Amazon Reviews 2023 (McAuley Lab): one category's reviews JSONL and its meta JSONL.

Reviews (``path``, ``.jsonl`` or ``.jsonl.gz``) carry ``rating, title, text, images, asin,
parent_asin, user_id, timestamp`` (Unix **milliseconds**), ``helpful_vote,
verified_purchase``; meta (``items_path``) carries ``main_category, title, average_rating,
rating_number, features, description, price, images, videos, store, categories, details,
parent_asin, bought_together``. Items are ``parent_asin`` (one product, all its variants).

The files run to tens of millions of lines, so they are streamed: ``chunk_lines`` lines are
parsed at a time and appended to a DuckDB table on disk, which filters (rating, verified,
date) and k-cores them in SQL; only the kept interactions come back to Python. A line that is
no JSON object, or lacks an id, is returned as a reject with its line number (quarantined).
"""

from __future__ import annotations

import gzip
import html
import io
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import duckdb
import orjson
import pandas as pd
import pyarrow as pa

from storage.settings import AmazonRules
from tasks.sources.common import SourceData, SourceFormatError, finish_interactions, finish_items

REVIEW_FIELDS = ["user_id", "parent_asin", "asin", "rating", "timestamp", "verified_purchase", "helpful_vote"]
REVIEW_TYPES = {
    "line": pa.int64(),
    "user_id": pa.string(),
    "parent_asin": pa.string(),
    "asin": pa.string(),
    "rating": pa.float64(),
    "ts_ms": pa.int64(),
    "verified": pa.bool_(),
    "helpful_vote": pa.int64(),
}
REVIEW_COLUMNS = list(REVIEW_TYPES)
REJECT_COLUMNS = ["table", "source_file", "row_number", "rule", "payload"]
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
# Listing boilerplate that says nothing about the product.
_BOILERPLATE = re.compile(
    r"(?i)\b(product description|from the manufacturer|about the author|see more|read more|"
    r"click here|amazon\.com exclusive|this item is not eligible[^.|]*)\b[:.]?"
)
SEPARATOR = " | "
STAGE_MEMORY = "256MB"
"""DuckDB's memory for staging, filtering and k-coring: beyond it pages spill to disk."""


def open_text(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when it ends in ``.gz``."""
    if not path.is_file():
        raise SourceFormatError(f"Amazon file {path} does not exist (expected a .jsonl or .jsonl.gz file)")
    if path.suffix != ".gz":
        return path.open("rb", buffering=1 << 20)
    # GzipFile.readline is Python code per line; a buffered reader over it splits lines in C
    return cast(IO[bytes], io.BufferedReader(cast(Any, gzip.open(path, "rb")), buffer_size=1 << 20))


def clean_text(value: Any) -> str:
    """Text without HTML tags, entities, boilerplate phrases or runs of whitespace; lists joined."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(t for t in (clean_text(v) for v in value) if t)
    text = html.unescape(_TAG.sub(" ", str(value)))
    text = _BOILERPLATE.sub(" ", text)
    return _SPACE.sub(" ", text).strip(" .|")


def item_text(meta: dict[str, Any]) -> str:
    """Title, features, description, categories and store, cleaned and joined with ``" | "``."""
    parts = [meta.get(k) for k in ("title", "features", "description", "categories", "store")]
    if isinstance(parts[3], list):  # categories is a path: keep its order, no duplicates
        parts[3] = " > ".join(dict.fromkeys(clean_text(c) for c in parts[3] if clean_text(c)))
    return SEPARATOR.join(t for t in (clean_text(p) for p in parts) if t)


def _chunks(path: Path, size: int) -> Iterator[list[tuple[int, bytes]]]:
    with open_text(path) as fh:
        chunk: list[tuple[int, bytes]] = []
        for number, line in enumerate(fh, start=1):
            if line.strip():
                chunk.append((number, line))
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _reject(path: Path, table: str, number: int, rule: str, line: bytes) -> dict[str, Any]:
    return {
        "table": table,
        "source_file": str(path),
        "row_number": number,
        "rule": rule,
        "payload": line[:2000].decode("utf-8", "replace").rstrip("\n"),
    }


def _parse(
    path: Path, table: str, chunk: list[tuple[int, bytes]], key: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for number, line in chunk:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            rejects.append(_reject(path, table, number, f"parse:json({exc.msg})", line))
            continue
        if not isinstance(obj, dict):
            rejects.append(_reject(path, table, number, "parse:not-an-object", line))
            continue
        if not obj.get(key) or (table == "interactions" and not obj.get("user_id")):
            rejects.append(
                _reject(path, table, number, f"parse:missing({key if not obj.get(key) else 'user_id'})", line)
            )
            continue
        obj["_line"] = number
        rows.append(obj)
    return rows, rejects


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _timestamp_ms(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and abs(number) < 2**62 else None


def stage_reviews(con: duckdb.DuckDBPyConnection, path: Path, rules: AmazonRules) -> pd.DataFrame:
    """Stream the reviews file into table ``amazon_reviews``; returns the rejected lines.

    Values of the wrong type become NULL (the expectations quarantine them), so one odd field
    never costs the whole line its place in the quarantine report.
    """
    con.execute(
        "CREATE OR REPLACE TABLE amazon_reviews (line BIGINT, user_id VARCHAR, parent_asin VARCHAR, "
        "asin VARCHAR, rating DOUBLE, ts_ms BIGINT, verified BOOLEAN, helpful_vote BIGINT)"
    )
    rejects: list[dict[str, Any]] = []
    for chunk in _chunks(path, rules.chunk_lines):
        rows, bad = _parse(path, "interactions", chunk, "parent_asin")
        rejects.extend(bad)
        if not rows:
            continue
        columns: dict[str, list[Any]] = {k: [] for k in REVIEW_COLUMNS}
        for r in rows:  # one pass, values of the wrong type → None
            helpful = r.get("helpful_vote")
            verified = r.get("verified_purchase")
            columns["line"].append(r["_line"])
            columns["user_id"].append(str(r["user_id"]))
            columns["parent_asin"].append(str(r["parent_asin"]))
            columns["asin"].append(None if r.get("asin") is None else str(r["asin"]))
            columns["rating"].append(_number(r.get("rating")))
            columns["ts_ms"].append(_timestamp_ms(r.get("timestamp")))
            columns["verified"].append(verified if isinstance(verified, bool) else None)
            columns["helpful_vote"].append(
                helpful
                if isinstance(helpful, int) and not isinstance(helpful, bool) and abs(helpful) < 2**62
                else None
            )
        frame = pa.table({k: pa.array(v, type=REVIEW_TYPES[k]) for k, v in columns.items()})
        con.register("chunk", frame)
        con.execute("INSERT INTO amazon_reviews SELECT * FROM chunk")
        con.unregister("chunk")
    return pd.DataFrame(rejects, columns=REJECT_COLUMNS)


def stage_meta(con: duckdb.DuckDBPyConnection, path: Path, rules: AmazonRules) -> pd.DataFrame:
    """Stream the meta file into table ``amazon_meta`` (one row per parent ASIN, cleaned text)."""
    con.execute(
        "CREATE OR REPLACE TABLE amazon_meta (line BIGINT, parent_asin VARCHAR, title VARCHAR, "
        "categories VARCHAR[], description VARCHAR, store VARCHAR, main_category VARCHAR, "
        "average_rating DOUBLE, rating_number BIGINT, price DOUBLE)"
    )
    rejects: list[dict[str, Any]] = []
    for chunk in _chunks(path, rules.chunk_lines):
        rows, bad = _parse(path, "items", chunk, "parent_asin")
        rejects.extend(bad)
        if not rows:
            continue
        frame = pd.DataFrame(
            {
                "line": [r["_line"] for r in rows],
                "parent_asin": [str(r["parent_asin"]) for r in rows],
                "title": [clean_text(r.get("title")) or None for r in rows],
                "categories": [
                    [c for c in (clean_text(x) for x in r["categories"]) if c]
                    if isinstance(r.get("categories"), list)
                    else ([clean_text(r["main_category"])] if r.get("main_category") else [])
                    for r in rows
                ],
                "description": [item_text(r) or None for r in rows],
                "store": [clean_text(r.get("store")) or None for r in rows],
                "main_category": [clean_text(r.get("main_category")) or None for r in rows],
                "average_rating": pd.array([_number(r.get("average_rating")) for r in rows], dtype="Float64"),
                "rating_number": pd.array(
                    [
                        int(n)
                        if (n := _number(r.get("rating_number"))) is not None and abs(n) < 2**62
                        else None
                        for r in rows
                    ],
                    dtype="Int64",
                ),
                "price": pd.array([_number(r.get("price")) for r in rows], dtype="Float64"),
            }
        )
        con.register("chunk", frame)
        con.execute("INSERT INTO amazon_meta SELECT * FROM chunk")
        con.unregister("chunk")
    return pd.DataFrame(rejects, columns=REJECT_COLUMNS)


def kept_reviews(con: duckdb.DuckDBPyConnection, rules: AmazonRules) -> int:
    """Apply the seed rules in SQL into table ``kept``; returns its row count.

    Rows with a NULL rating or timestamp stay (the expectations quarantine them under their
    rule); the rating, verified and date rules drop valid rows that are simply not positives.
    """
    since_ms = int(datetime(rules.since_year, 1, 1, tzinfo=UTC).timestamp() * 1000)
    verified = "AND verified IS NOT FALSE" if rules.verified_only else ""
    con.execute(
        f"""CREATE OR REPLACE TABLE kept AS SELECT * FROM amazon_reviews
            WHERE (rating IS NULL OR rating >= $min_rating) {verified}
              AND (ts_ms IS NULL OR ts_ms >= $since)""",
        {"min_rating": rules.min_rating, "since": since_ms},
    )
    k = rules.kcore
    while k > 0:
        removed = con.execute(
            """DELETE FROM kept WHERE user_id IN (SELECT user_id FROM kept GROUP BY 1 HAVING count(*) < $k)
               OR parent_asin IN (SELECT parent_asin FROM kept GROUP BY 1 HAVING count(*) < $k)""",
            {"k": k},
        ).fetchall()[0][0]
        if not removed:
            break
    return int(con.execute("SELECT count(*) FROM kept").fetchall()[0][0])


def read_amazon(path: Path, items_path: Path | None, rules: AmazonRules) -> SourceData:
    """Reviews → positive interactions (ts in seconds); meta → items keyed by parent ASIN."""
    with tempfile.TemporaryDirectory(prefix="recflow-amazon-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "stage.duckdb"))
        try:
            con.execute(f"SET temp_directory = '{tmp}'")
            # DuckDB would otherwise keep the staged table's pages cached up to 80 % of RAM
            con.execute(f"SET memory_limit = '{STAGE_MEMORY}'")
            rejects = [stage_reviews(con, path, rules)]
            kept_reviews(con, rules)
            reviews = con.execute(
                """SELECT user_id, parent_asin AS item_id, rating AS value,
                          CAST(floor(ts_ms / 1000) AS BIGINT) AS ts, line AS row_number
                   FROM kept ORDER BY line"""
            ).df()
            files = {"interactions": path}
            if items_path is not None:
                rejects.append(stage_meta(con, items_path, rules))
                items = con.execute(
                    """SELECT m.parent_asin AS item_id, m.title, m.categories, m.description,
                              m.line AS row_number
                       FROM amazon_meta m WHERE m.parent_asin IN (SELECT parent_asin FROM kept)
                       QUALIFY row_number() OVER (PARTITION BY m.parent_asin ORDER BY m.line) = 1
                       ORDER BY m.line"""
                ).df()
                files["items"] = items_path
            else:
                items = pd.DataFrame({"item_id": reviews["item_id"].drop_duplicates()})
                items["title"] = items["item_id"]
                items["categories"] = [[] for _ in range(len(items))]
                items["row_number"] = range(1, len(items) + 1)
        finally:
            con.close()
    reviews["seq"] = range(len(reviews))
    reviews["url"] = None
    items["categories"] = [list(c) if c is not None else [] for c in items["categories"]]
    items["url"] = "https://www.amazon.com/dp/" + items["item_id"].astype(str)
    interactions = finish_interactions(reviews.drop(columns="url"), event_type="rating")
    non_empty = [r for r in rejects if len(r)]
    all_rejects = (
        pd.concat(non_empty, ignore_index=True) if non_empty else pd.DataFrame(columns=REJECT_COLUMNS)
    )
    return SourceData(path.name.split(".")[0], finish_items(items), interactions, None, files, all_rejects)
