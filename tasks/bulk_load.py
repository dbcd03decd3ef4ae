"""Streaming load of MovieLens' CSV layout (ML-25M, ml-latest): DuckDB reads, checks and inserts.

Why it exists: the general loader (:mod:`tasks.load`) reads a file into pandas as strings and
validates every row with Great Expectations; at 25 million ratings that alone took minutes
and over 11 GB. Here ``ratings.csv`` never becomes Python objects:

* DuckDB's ``read_csv`` streams it into a temporary table (text columns; malformed lines go to
  DuckDB's reject table and then to ``quarantine`` under the same ``parse:<error>`` rules the
  general loader uses, with their line numbers);
* every row is checked in SQL with the rules of
  :func:`expectations.validate_interactions` (ids and timestamp present, timestamp and rating
  in range, movie known), failing (row, rule) pairs quarantined in SQL;
* Great Expectations still runs, on a seeded sample plus the rows SQL rejected (capped), and
  must reject exactly the rows SQL rejected there: the two implementations of the rules are
  checked against each other on every load, and a disagreement stops it;
* clean rows are inserted with the same content-based ``event_id`` as the general loader, so
  either loader gives the same warehouse.

Incremental nights: ``source_offsets`` keeps, per file, the bytes and lines already loaded
and the SHA-256 of those bytes. When the file still starts with exactly those bytes (it grew
at the end, as logs and appended exports do), only the new tail is read; a file that changed
anywhere else is read whole (content ids make that idempotent). ``movies.csv`` is re-read
only when its SHA-256 differs from the last load's.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from expectations import DataQualityError, quarantine, validate_interactions, validate_items
from storage.artifacts import file_sha256
from storage.settings import Settings
from storage.warehouse import scalar
from tasks.load import (
    LoadSummary,
    TableLoad,
    _check_share,
    _quarantine_parse_rejects,
    _rule_counts,
    upsert_items,
)
from tasks.sources.common import SourceFormatError, read_delimited, require_columns
from tasks.sources.movielens import _pipe_genre_items, detect_layout

RATINGS_COLUMNS = ["userId", "movieId", "rating", "timestamp"]
GX_SAMPLE_ROWS = 20_000
"""Rows of each load Great Expectations validates (plus up to ``GX_REJECTED_ROWS`` rejected)."""
GX_REJECTED_ROWS = 2_000
_HASH_CHUNK = 1 << 22

_NULL = "expect_column_values_to_not_be_null"
_BETWEEN = "expect_column_values_to_be_between"
_NOT_IN = "expect_column_values_to_not_be_in_set"


def bulk_loadable(settings: Settings) -> bool:
    """Whether the configured source is a MovieLens directory in the CSV layout (ML-25M's)."""
    source = settings.source
    return source.kind == "movielens" and source.path.is_dir() and detect_layout(source.path) == "ml-latest"


@dataclass(frozen=True)
class FileState:
    """How much of a file the warehouse holds: bytes, lines (header included), their SHA-256."""

    offset_b: int
    lines: int
    prefix_sha256: str


def resume_point(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[FileState, str]:
    """Where to start reading ``path`` tonight, and the SHA-256 of the whole file.

    One pass over the file: the bytes loaded last time are hashed first and compared with the
    stored hash; if they match, reading resumes after them, else from the start."""
    row = con.execute(
        "SELECT offset_b, lines, prefix_sha256 FROM source_offsets WHERE source_file = ?", [str(path)]
    ).fetchall()
    stored = FileState(*row[0]) if row else None
    size = path.stat().st_size
    sha = hashlib.sha256()
    start = FileState(0, 0, "")
    with path.open("rb") as fh:
        if stored is not None and 0 < stored.offset_b <= size:
            left = stored.offset_b
            while left:
                block = fh.read(min(_HASH_CHUNK, left))
                if not block:
                    break
                sha.update(block)
                left -= len(block)
            if sha.hexdigest() == stored.prefix_sha256:
                start = stored
        if start.offset_b == 0:
            fh.seek(0)
            sha = hashlib.sha256()
        while block := fh.read(_HASH_CHUNK):
            sha.update(block)
    return start, sha.hexdigest()


def _count_lines(path: Path, offset: int) -> tuple[int, bytes]:
    """Lines from byte ``offset`` to the end (a last line without newline counts), and the
    last byte read (to know whether the file ends with a newline)."""
    lines, last = 0, b""
    with path.open("rb") as fh:
        fh.seek(offset)
        while block := fh.read(_HASH_CHUNK):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (1 if last and last != b"\n" else 0), last


def _tail_file(path: Path, offset: int, tmp: Path) -> Path:
    """A CSV of ``path``'s header line and its bytes from ``offset`` on."""
    out = tmp / "tail.csv"
    with path.open("rb") as src, out.open("wb") as dst:
        dst.write(src.readline())
        src.seek(offset)
        while block := src.read(_HASH_CHUNK):
            dst.write(block)
    return out


def _quarantine_sql(con: duckdb.DuckDBPyConnection, select: str) -> int:
    """Insert quarantine rows from ``select`` (columns source_file, row_number, rule, payload);
    ids as :func:`expectations.quarantine_id` computes them, so a re-run adds nothing."""
    before = int(scalar(con, "SELECT count(*) FROM quarantine"))
    con.execute(
        f"""
        INSERT INTO quarantine (quarantine_id, table_name, source_file, row_number, rule, payload)
        SELECT sha256('["interactions", ' || to_json(source_file) || ', ' || CAST(row_number AS VARCHAR)
                      || ', ' || to_json(rule) || ']'),
               'interactions', source_file, row_number, rule, CAST(payload AS JSON)
        FROM ({select}) ON CONFLICT DO NOTHING
        """
    )
    return int(scalar(con, "SELECT count(*) FROM quarantine")) - before


def load_items_if_changed(
    con: duckdb.DuckDBPyConnection, path: Path, source: str, max_share: float
) -> tuple[int, int, int, dict[str, int], str]:
    """``movies.csv`` through the general path (pandas + GX: it is small), skipped when a load
    of the same bytes is recorded; returns (seen, added, quarantined, failures, sha256)."""
    sha = file_sha256(path)
    done = scalar(
        con,
        "SELECT count(*) FROM loads WHERE source_file = ? AND sha256 = ? AND table_name = 'items'",
        [str(path), sha],
    )
    if done:
        return 0, 0, 0, {}, sha
    raw, rejects = read_delimited(path, table="items", sep=",", header=True)
    require_columns(raw, ["movieId", "title", "genres"], path)
    items = _pipe_genre_items(raw.rename(columns={"movieId": "item_id"}))
    outcome = validate_items(items, source_file=str(path))
    q = quarantine(con, outcome) + _quarantine_parse_rejects(con, rejects)
    _check_share(outcome, len(rejects), max_share)
    added = upsert_items(con, outcome.clean, source)
    return outcome.total_rows + len(rejects), added, q, {**outcome.failures, **_rule_counts(rejects)}, sha


def load_movielens_csv(con: duckdb.DuckDBPyConnection, settings: Settings) -> LoadSummary:
    """Load the configured ML-25M-layout directory; returns a :class:`tasks.load.LoadSummary`.

    Raises :class:`DataQualityError` (after quarantining) when the new rows' rejected share is
    beyond ``settings.validation.max_failure_share``; nothing of the file is inserted then."""
    directory = settings.source.path
    ratings, movies = directory / "ratings.csv", directory / "movies.csv"
    max_share = settings.validation.max_failure_share
    seen, added, q, failures, items_sha = load_items_if_changed(con, movies, "ml-latest", max_share)
    item_load = TableLoad("items", str(movies), seen, added, q, failures)
    inter_load = load_ratings(con, settings, ratings)
    for load, sha in ((item_load, items_sha), (inter_load, None)):
        if load.rows_seen or load.table == "interactions":
            _record(con, load, sha)
    return LoadSummary("ml-latest", [item_load, inter_load])


def _record(con: duckdb.DuckDBPyConnection, load: TableLoad, sha: str | None) -> None:
    if sha is None:
        sha = str(
            scalar(con, "SELECT prefix_sha256 FROM source_offsets WHERE source_file = ?", [load.source_file])
            or ""
        )
    load_id = hashlib.sha1(f"{load.table}|{load.source_file}|{sha}|{time.time_ns()}".encode()).hexdigest()
    con.execute(
        "INSERT INTO loads VALUES (?, ?, ?, ?, ?, ?, ?, current_timestamp)",
        [load_id, load.source_file, sha, load.table, load.rows_seen, load.rows_added, load.rows_quarantined],
    )


def load_ratings(con: duckdb.DuckDBPyConnection, settings: Settings, path: Path) -> TableLoad:
    """Stream ``ratings.csv`` (only what is new since the last load) into ``interactions``."""
    if not path.is_file():
        raise FileNotFoundError(f"interactions file {path} does not exist")
    start, full_sha = resume_point(con, path)
    size = path.stat().st_size
    if start.offset_b == size:
        return TableLoad("interactions", str(path), 0, 0, 0, {})
    new_lines, _ = _count_lines(path, start.offset_b)
    src = str(path)
    with tempfile.TemporaryDirectory(prefix="recflow-bulk-") as tmp:
        if start.offset_b:
            read_path = _tail_file(path, start.offset_b, Path(tmp))
            # a tail line t (header = line 1) is line t - 1 + lines already loaded
            line_shift = start.lines - 1
        else:
            read_path, line_shift = path, 0
        _stage(con, read_path, path, line_shift)
    try:
        result = _validate_and_insert(con, settings, src)
    finally:
        for t in ("_ml_raw", "_ml_rows", "_ml_rejects", "_ml_bad", "_ml_gaps"):
            con.execute(f"DROP TABLE IF EXISTS {t}")
    total_lines = start.lines + new_lines if start.offset_b else new_lines
    con.execute(
        """INSERT INTO source_offsets (source_file, offset_b, lines, prefix_sha256) VALUES (?, ?, ?, ?)
           ON CONFLICT (source_file) DO UPDATE SET offset_b = excluded.offset_b, lines = excluded.lines,
           prefix_sha256 = excluded.prefix_sha256, updated_at = now()""",
        [src, size, total_lines, full_sha],
    )
    return result


def _stage(con: duckdb.DuckDBPyConnection, read_path: Path, path: Path, line_shift: int) -> None:
    """``_ml_rows``: the file's rows as text with their line numbers; ``_ml_rejects``: lines
    DuckDB could not split into the four columns."""
    options = {
        "delim": ",",
        "header": True,
        "quote": '"',
        "escape": '"',
        "auto_detect": False,
        "store_rejects": True,
        "rejects_table": "_ml_rejects_raw",
        "rejects_scan": "_ml_rejects_scan",
        "columns": {c: "VARCHAR" for c in RATINGS_COLUMNS},
    }
    opts = ", ".join(f"{k} := ${k}" for k in options)
    con.execute("DROP TABLE IF EXISTS _ml_rejects_raw")
    con.execute("DROP TABLE IF EXISTS _ml_rejects_scan")
    with path.open("rb") as fh:
        header = fh.readline().decode("utf-8", "replace").strip().split(",")
    if [h.strip().strip('"') for h in header] != RATINGS_COLUMNS:
        raise SourceFormatError(f"{path}: header {header}, expected {RATINGS_COLUMNS} (ML-25M's ratings.csv)")
    try:
        # file order is kept (preserve_insertion_order), so rowid k is the k-th accepted line
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _ml_raw AS SELECT * FROM read_csv($path, {opts})",
            {"path": str(read_path), **options},
        )
    except duckdb.Error as exc:
        raise SourceFormatError(f"cannot read interactions file {path}: {exc}") from exc
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _ml_rejects AS
            SELECT line + {line_shift} AS row_number,
                   'parse:' || CAST(any_value(error_type) AS VARCHAR) AS rule, any_value(csv_line) AS payload
            FROM _ml_rejects_raw GROUP BY line"""
    )
    con.execute("DROP TABLE IF EXISTS _ml_rejects_raw")
    con.execute("DROP TABLE IF EXISTS _ml_rejects_scan")
    # accepted row k sits at line 2 + k + (rejected lines before it): g = where each rejected
    # line falls among accepted rows, j = rejects up to it; an ASOF join finds each row's j
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _ml_gaps AS
            SELECT row_number - {line_shift} - 2 - (row_number() OVER (ORDER BY row_number) - 1) AS g,
                   row_number() OVER (ORDER BY row_number) AS j
            FROM _ml_rejects"""
    )
    gaps = int(scalar(con, "SELECT count(*) FROM _ml_gaps"))
    line = f"r.k + 2 + {line_shift} + coalesce(gp.j, 0)" if gaps else f"r.k + 2 + {line_shift}"
    join = "ASOF LEFT JOIN _ml_gaps gp ON r.k >= gp.g" if gaps else ""
    int64 = "9223372036854775808.0"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ml_rows AS
        WITH r AS (SELECT rowid AS k, * FROM _ml_raw),
        n AS (
            SELECT {line} AS row_number, trim(r.userId) AS user_id, trim(r.movieId) AS item_id,
                   r.rating, r."timestamp" AS ts_text,
                   TRY_CAST(trim(r.rating) AS DOUBLE) AS v, TRY_CAST(trim(r."timestamp") AS DOUBLE) AS t
            FROM r {join}
        )
        SELECT row_number, row_number - 2 AS seq, user_id, item_id, rating, ts_text,
               CASE WHEN isnan(v) THEN NULL ELSE v END AS value,
               coalesce(TRY_CAST(trim(ts_text) AS BIGINT),
                        CASE WHEN abs(t) < {int64} THEN CAST(round(t) AS BIGINT) END) AS ts,
               t IS NOT NULL AND NOT isnan(t) AND abs(t) >= {int64} AS ts_out_of_range
        FROM n
        """
    )
    con.execute("DROP TABLE _ml_raw")


def _validate_and_insert(con: duckdb.DuckDBPyConnection, settings: Settings, src: str) -> TableLoad:
    s = settings.source
    max_ts = int(time.time()) + s.future_skew_s
    # timestamps no int64 holds: parse rejects naming the column, as the general loader does
    out_of_range = (
        "SELECT row_number, 'parse:out-of-range(timestamp)' AS rule, "
        "json_object('timestamp', ts_text, 'row', json_object('userId', user_id, 'movieId', item_id, "
        "'rating', rating, 'timestamp', ts_text)) AS payload FROM _ml_rows WHERE ts_out_of_range"
    )
    rules = [
        (f"{_NULL}(user_id)", "user_id IS NULL OR user_id = ''"),
        (f"{_NULL}(item_id)", "item_id IS NULL OR item_id = ''"),
        (f"{_NULL}(ts)", "ts IS NULL"),
        (f"{_BETWEEN}(ts)", f"ts IS NOT NULL AND (ts < {int(s.min_timestamp)} OR ts > {max_ts})"),
        (f"{_BETWEEN}(value)", f"value IS NOT NULL AND NOT (value BETWEEN {s.value_min} AND {s.value_max})"),
        (
            f"{_NOT_IN}(item_id)",
            "item_id IS NOT NULL AND item_id <> '' AND item_id NOT IN (SELECT item_id FROM items)",
        ),
    ]
    checks = " UNION ALL ".join(
        f"SELECT row_number, '{rule}' AS rule FROM _ml_rows WHERE NOT ts_out_of_range AND ({cond})"
        for rule, cond in rules
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ml_bad AS {checks}")
    payload = (
        "json_object('user_id', user_id, 'item_id', item_id, 'event_type', 'rating', 'value', value, "
        "'dwell_s', NULL, 'ts', ts, 'seq', seq, 'session_id', NULL)"
    )
    src_sql = "'" + src.replace("'", "''") + "'"
    q = _quarantine_sql(
        con,
        f"SELECT {src_sql} AS source_file, b.row_number, b.rule, {payload} AS payload "
        "FROM _ml_bad b JOIN _ml_rows USING (row_number)",
    )
    q += _quarantine_sql(
        con, f"SELECT {src_sql} AS source_file, row_number, rule, payload FROM ({out_of_range})"
    )
    q += _quarantine_sql(
        con,
        f"SELECT {src_sql} AS source_file, row_number, rule, to_json(payload) AS payload FROM _ml_rejects",
    )
    failures = {rule: 0 for rule, _ in rules}
    for rule, n in con.execute("SELECT rule, count(*) FROM _ml_bad GROUP BY rule").fetchall():
        failures[rule] = int(n)
    for rule, n in con.execute(
        "SELECT rule, count(*) FROM (SELECT rule FROM _ml_rejects "
        f"UNION ALL SELECT rule FROM ({out_of_range})) GROUP BY rule"
    ).fetchall():
        failures[rule] = int(n)
    rows = int(scalar(con, "SELECT count(*) FROM _ml_rows"))
    parse_bad = int(scalar(con, "SELECT count(*) FROM _ml_rejects")) + int(
        scalar(con, "SELECT count(*) FROM _ml_rows WHERE ts_out_of_range")
    )
    bad_rows = int(scalar(con, "SELECT count(DISTINCT row_number) FROM _ml_bad")) + parse_bad
    total = int(scalar(con, "SELECT count(*) FROM _ml_rejects")) + rows
    cross_check_with_gx(con, settings, src, max_ts)
    share = bad_rows / total if total else 0.0
    if share > settings.validation.max_failure_share:
        worst = max(failures.items(), key=lambda kv: kv[1])
        raise DataQualityError(
            f"{src}: {bad_rows:,} of {total:,} rows ({share:.1%}) failed validation, more than the "
            f"allowed {settings.validation.max_failure_share:.1%}; worst rule {worst[0]} failed on "
            f"{worst[1]:,} rows (see the quarantine table)"
        )
    added = _insert_clean(con, src)
    return TableLoad("interactions", src, total, added, q, failures)


def _insert_clean(con: duckdb.DuckDBPyConnection, src: str) -> int:
    """Clean rows into ``interactions`` (label ``positive``: ratings are batch positives, as
    :func:`storage.labels.label_rows` would set), and their users into ``users``.

    Ids hash the row's content exactly as :func:`tasks.load.insert_interactions` does. Rows
    whose content is already stored (under any id) are skipped: only stored rows sharing a
    (user, item, ts) with a new one are looked at, so a 1 % night does not scan into memory
    what earlier nights loaded."""
    before = int(scalar(con, "SELECT count(*) FROM interactions"))
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _ml_clean AS
        SELECT md5(to_json([user_id, item_id, 'rating', CAST(ts AS VARCHAR), CAST(value AS VARCHAR),
                            CAST(NULL::DOUBLE AS VARCHAR), NULL::VARCHAR])::VARCHAR) AS event_id,
               user_id, item_id, value, ts, seq
        FROM (
            -- one row per content (what the id hashes), the first in the file
            SELECT DISTINCT ON (user_id, item_id, ts, value) user_id, item_id, ts, value, seq
            FROM _ml_rows
            WHERE NOT ts_out_of_range AND row_number NOT IN (SELECT row_number FROM _ml_bad)
            ORDER BY user_id, item_id, ts, value, seq
        )
        """
    )
    con.execute("DROP TABLE IF EXISTS _ml_rows")
    if before:
        con.execute(
            """
            DELETE FROM _ml_clean WHERE event_id IN (
                SELECT c.event_id FROM _ml_clean c JOIN interactions i
                  ON i.user_id = c.user_id AND i.item_id = c.item_id AND i.ts = c.ts
                 AND i.event_type = 'rating' AND i.value IS NOT DISTINCT FROM c.value
                 AND i.dwell_s IS NULL AND i.session_id IS NULL
            )
            """
        )
    con.execute(
        """
        INSERT INTO interactions
            (event_id, user_id, item_id, event_type, value, dwell_s, ts, seq, session_id, source_file, label)
        SELECT event_id, user_id, item_id, 'rating', value, NULL, ts, seq, NULL, $src, 'positive'
        FROM _ml_clean
        """,
        {"src": src},
    )
    con.execute(
        "INSERT INTO users (user_id, attributes) SELECT DISTINCT user_id, '{}' FROM _ml_clean "
        "ON CONFLICT (user_id) DO NOTHING"
    )
    con.execute("DROP TABLE _ml_clean")
    return int(scalar(con, "SELECT count(*) FROM interactions")) - before


def cross_check_with_gx(con: duckdb.DuckDBPyConnection, settings: Settings, src: str, max_ts: int) -> None:
    """Great Expectations on a seeded sample of the rows plus (up to a cap) the rows SQL
    rejected; raises when GX and SQL disagree about any of those rows."""
    sample = con.execute(
        f"""
        WITH s AS (
            SELECT * FROM (SELECT * FROM _ml_rows WHERE NOT ts_out_of_range)
            USING SAMPLE reservoir({GX_SAMPLE_ROWS} ROWS) REPEATABLE (7)
            UNION
            SELECT * FROM _ml_rows WHERE NOT ts_out_of_range AND row_number IN (
                SELECT DISTINCT row_number FROM _ml_bad ORDER BY row_number LIMIT {GX_REJECTED_ROWS})
        )
        SELECT row_number, seq, user_id, item_id, value, ts FROM s ORDER BY row_number
        """
    ).df()
    if sample.empty:
        return
    frame = pd.DataFrame(
        {
            "user_id": sample["user_id"].astype("string").replace("", pd.NA),
            "item_id": sample["item_id"].astype("string").replace("", pd.NA),
            "event_type": "rating",
            "value": sample["value"].astype("float64"),
            "dwell_s": float("nan"),
            "ts": sample["ts"].astype("Int64"),
            "seq": sample["seq"],
            "session_id": None,
            "row_number": sample["row_number"],
        }
    )
    ids = [str(i) for i in frame["item_id"].dropna().unique()]
    known = [
        r[0]
        for r in con.execute(
            "SELECT item_id FROM items WHERE item_id IN (SELECT unnest(?))", [ids]
        ).fetchall()
    ]
    s = settings.source
    outcome = validate_interactions(
        frame,
        source_file=src,
        known_items=known,
        known_users=None,
        value_min=s.value_min,
        value_max=s.value_max,
        min_ts=s.min_timestamp,
        max_ts=max_ts,
    )
    by_gx = {
        (int(r), str(u))
        for r, u in zip(outcome.rejected["row_number"], outcome.rejected["rule"], strict=True)
    }
    by_sql = {
        (int(r), str(u))
        for r, u in con.execute(
            "SELECT row_number, rule FROM _ml_bad WHERE row_number IN (SELECT unnest(?))",
            [frame["row_number"].astype("int64").tolist()],
        ).fetchall()
    }
    if by_gx != by_sql:
        diff = sorted(by_gx ^ by_sql)[:5]
        raise RuntimeError(
            f"{src}: the SQL checks and Great Expectations disagree on {len(by_gx ^ by_sql)} (row, rule) "
            f"pairs of the {len(frame):,}-row sample, e.g. {diff}"
        )
