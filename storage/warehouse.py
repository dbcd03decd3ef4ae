"""The DuckDB warehouse: one file per catalogue, schema kept by numbered migrations.

The pipeline is the only writer (DuckDB allows one writing process). Every load is
idempotent: interactions carry a deterministic ``event_id`` and items an ``item_id``, and
inserts skip keys that are already present, so loading the same file twice adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

# Each migration is applied once, in order, inside a transaction; never edit a released one.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "core schema",
        """
        CREATE TABLE items (
            item_id      VARCHAR PRIMARY KEY,
            title        VARCHAR,
            categories   VARCHAR[],
            year         INTEGER,
            description  VARCHAR,
            url          VARCHAR,
            source       VARCHAR,
            published_ts BIGINT,
            content_hash VARCHAR,
            loaded_at    TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE users (
            user_id    VARCHAR PRIMARY KEY,
            attributes JSON,
            loaded_at  TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE interactions (
            event_id    VARCHAR PRIMARY KEY,
            user_id     VARCHAR NOT NULL,
            item_id     VARCHAR NOT NULL,
            event_type  VARCHAR NOT NULL,
            value       DOUBLE,
            dwell_s     DOUBLE,
            ts          BIGINT NOT NULL,
            seq         BIGINT NOT NULL,
            session_id  VARCHAR,
            source_file VARCHAR,
            loaded_at   TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE quarantine (
            quarantine_id VARCHAR PRIMARY KEY,
            table_name    VARCHAR NOT NULL,
            source_file   VARCHAR NOT NULL,
            row_number    BIGINT NOT NULL,
            rule          VARCHAR NOT NULL,
            payload       JSON,
            quarantined_at TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE loads (
            load_id     VARCHAR PRIMARY KEY,
            source_file VARCHAR NOT NULL,
            sha256      VARCHAR NOT NULL,
            table_name  VARCHAR NOT NULL,
            rows_seen   BIGINT,
            rows_added  BIGINT,
            rows_quarantined BIGINT,
            loaded_at   TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE model_runs (
            run_id      VARCHAR PRIMARY KEY,
            model       VARCHAR NOT NULL,
            params      JSON,
            metrics     JSON,
            protocol    JSON,
            data_fingerprint VARCHAR,
            flow_run_id VARCHAR,
            train_seconds DOUBLE,
            started_at  TIMESTAMP,
            finished_at TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE splits (
            split_name VARCHAR NOT NULL,
            event_id   VARCHAR NOT NULL,
            part       VARCHAR NOT NULL,
            PRIMARY KEY (split_name, event_id)
        );
        """,
    ),
    (
        2,
        "item text vectors cached by (model, content hash)",
        """
        CREATE TABLE item_vectors (
            model_id   VARCHAR NOT NULL,
            text_hash  VARCHAR NOT NULL,
            dim        INTEGER NOT NULL,
            vector     FLOAT[] NOT NULL,
            created_at TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (model_id, text_hash)
        );
        """,
    ),
    (
        5,
        "model_run_configs: the full config (model, params, seed, warm start) that re-runs a model run",
        """
        CREATE TABLE model_run_configs (
            run_id      VARCHAR PRIMARY KEY,
            config      JSON NOT NULL,
            recorded_at TIMESTAMP DEFAULT current_timestamp
        );
        """,
    ),
]


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, creating it and applying pending migrations when writable."""
    path = Path(path)
    if read_only:
        if not path.exists():
            raise FileNotFoundError(f"warehouse {path} does not exist; run a load first")
        return duckdb.connect(str(path), read_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    migrate(con)
    return con


@contextmanager
def open_warehouse(path: Path | str, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Context-managed :func:`connect` that always closes the file (frees DuckDB's lock)."""
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """Highest migration applied, 0 for an empty database."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP DEFAULT current_timestamp)"
    )
    return int(scalar(con, "SELECT coalesce(max(version), 0) FROM schema_migrations"))


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration newer than the database's version; returns the new version."""
    current = schema_version(con)
    for version, name, sql in MIGRATIONS:
        if version <= current:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    return current


def table_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Row counts of the core tables, for summaries and the health endpoint."""
    tables = ["items", "users", "interactions", "quarantine", "model_runs"]
    return {t: int(scalar(con, f"SELECT count(*) FROM {t}")) for t in tables}


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> object:
    """First column of the first row. Fetches everything: DuckDB 2 refuses new work on a
    connection whose previous result was not fully read (``fetchone`` leaves it open)."""
    rows = con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()
    return rows[0][0] if rows else None
