"""The DuckDB warehouse: one file per catalogue, schema kept by numbered migrations.

The pipeline is the only writer (DuckDB allows one writing process). Every load is
idempotent: interactions carry a deterministic ``event_id`` and items an ``item_id``, and
inserts skip keys that are already present, so loading the same file twice adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
        3,
        "news feeds: feed health, item outlets, daily pool, wishlist, event log offsets",
        """
        CREATE TABLE feeds (
            url                  VARCHAR PRIMARY KEY,
            name                 VARCHAR NOT NULL,
            default_category     VARCHAR,
            etag                 VARCHAR,
            last_modified        VARCHAR,
            last_status          VARCHAR,
            last_http_status     INTEGER,
            last_error           VARCHAR,
            last_fetch_at        TIMESTAMP,
            last_success_at      TIMESTAMP,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            paused               BOOLEAN NOT NULL DEFAULT false,
            paused_at            TIMESTAMP,
            entries_last         INTEGER,
            items_added_total    BIGINT NOT NULL DEFAULT 0
        );
        CREATE TABLE item_outlets (
            item_id        VARCHAR NOT NULL,
            feed_url       VARCHAR NOT NULL,
            entry_url      VARCHAR NOT NULL,
            source         VARCHAR,
            title          VARCHAR,
            published_ts   BIGINT,
            date_estimated BOOLEAN NOT NULL DEFAULT false,
            enclosure_url  VARCHAR,
            merged_by      VARCHAR NOT NULL,
            first_seen     TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (item_id, feed_url, entry_url)
        );
        CREATE TABLE scrape_runs (
            run_id        VARCHAR PRIMARY KEY,
            started_at    TIMESTAMP NOT NULL,
            seconds       DOUBLE,
            feeds         INTEGER,
            summary       JSON
        );
        CREATE TABLE daily_pool (
            pool_date DATE NOT NULL,
            rank      INTEGER NOT NULL,
            item_id   VARCHAR NOT NULL,
            topic     VARCHAR,
            cluster   INTEGER,
            source    VARCHAR,
            reason    VARCHAR,
            score     DOUBLE,
            PRIMARY KEY (pool_date, item_id)
        );
        CREATE TABLE wishlist (
            kind             VARCHAR NOT NULL,
            value            VARCHAR NOT NULL,
            engagement_share DOUBLE NOT NULL,
            pool_share       DOUBLE NOT NULL,
            ratio            DOUBLE NOT NULL,
            computed_at      TIMESTAMP NOT NULL,
            PRIMARY KEY (kind, value)
        );
        CREATE TABLE event_log_offsets (
            file       VARCHAR PRIMARY KEY,
            offset_b   BIGINT NOT NULL,
            lines      BIGINT NOT NULL,
            updated_at TIMESTAMP DEFAULT current_timestamp
        );
        """,
    ),
    (
        4,
        "impression logs (MIND behaviors, simulated personas)",
        """
        CREATE TABLE impressions (
            impression_id VARCHAR PRIMARY KEY,
            user_id       VARCHAR NOT NULL,
            ts            BIGINT NOT NULL,
            history       VARCHAR[] NOT NULL,
            shown         VARCHAR[] NOT NULL,
            clicked       BOOLEAN[] NOT NULL,
            dwell_s       DOUBLE[],
            source        VARCHAR NOT NULL,
            source_file   VARCHAR,
            loaded_at     TIMESTAMP DEFAULT current_timestamp
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
    (
        6,
        "interactions.client: the app that sent a serving event (NULL: anonymous or batch-loaded)",
        """
        ALTER TABLE interactions ADD COLUMN client VARCHAR;
        """,
    ),
    (
        7,
        "interactions.label: positive / negative / weak_negative (storage.labels; NULL: not labelled yet)",
        """
        ALTER TABLE interactions ADD COLUMN label VARCHAR;
        """,
    ),
    (
        8,
        "served_impressions: what each /feed and /recommend answer listed (the serving impression log)",
        """
        CREATE TABLE served_impressions (
            request_id     VARCHAR PRIMARY KEY,
            ts             DOUBLE NOT NULL,
            endpoint       VARCHAR NOT NULL,
            session_id     VARCHAR,
            user_id        VARCHAR,
            item_ids       VARCHAR[] NOT NULL,
            stages         VARCHAR[],
            model          VARCHAR,
            bundle_version VARCHAR,
            delta_seq      VARCHAR,
            strategy       VARCHAR,
            source_file    VARCHAR,
            derived        BOOLEAN NOT NULL DEFAULT false,
            loaded_at      TIMESTAMP DEFAULT current_timestamp
        );
        """,
    ),
    (
        9,
        "item_attributes: item metadata beyond the core columns (authors, numeric) for side features",
        """
        CREATE TABLE item_attributes (
            item_id    VARCHAR PRIMARY KEY,
            attributes JSON,
            loaded_at  TIMESTAMP DEFAULT current_timestamp
        );
        """,
    ),
    (
        10,
        "source_offsets: bytes and lines of a source file already loaded (incremental nights)",
        """
        CREATE TABLE source_offsets (
            source_file   VARCHAR PRIMARY KEY,
            offset_b      BIGINT NOT NULL,
            lines         BIGINT NOT NULL,
            prefix_sha256 VARCHAR NOT NULL,
            updated_at    TIMESTAMP DEFAULT current_timestamp
        );
        """,
    ),
    (
        11,
        "splits without a primary key: make_splits rewrites them whole; a 2 x n text key index only costs",
        """
        CREATE TABLE splits_unkeyed (
            split_name VARCHAR NOT NULL,
            event_id   VARCHAR NOT NULL,
            part       VARCHAR NOT NULL
        );
        INSERT INTO splits_unkeyed SELECT split_name, event_id, part FROM splits;
        DROP TABLE splits;
        ALTER TABLE splits_unkeyed RENAME TO splits;
        """,
    ),
    (
        12,
        "interactions without a primary key: loaders dedupe by content and event id in bulk",
        # A text primary key is indexed row by row: 20 s per million rows, most of a 25M load.
        """
        CREATE TABLE interactions_unkeyed (
            event_id    VARCHAR NOT NULL,
            user_id     VARCHAR NOT NULL,
            item_id     VARCHAR NOT NULL,
            event_type  VARCHAR NOT NULL,
            value       DOUBLE,
            dwell_s     DOUBLE,
            ts          BIGINT NOT NULL,
            seq         BIGINT NOT NULL,
            session_id  VARCHAR,
            source_file VARCHAR,
            loaded_at   TIMESTAMP DEFAULT current_timestamp,
            client      VARCHAR,
            label       VARCHAR
        );
        INSERT INTO interactions_unkeyed SELECT event_id, user_id, item_id, event_type, value, dwell_s,
            ts, seq, session_id, source_file, loaded_at, client, label FROM interactions;
        DROP TABLE interactions;
        ALTER TABLE interactions_unkeyed RENAME TO interactions;
        """,
    ),
    (
        13,
        "split_state: the rows the recorded splits describe, so a night finds its new rows by load time",
        # Without it a night found its new rows by anti-joining every event id with the
        # splits' (20 s at 25M ratings); the first split after this migration rebuilds whole.
        """
        CREATE TABLE split_state (
            source_table VARCHAR PRIMARY KEY,
            row_count    BIGINT NOT NULL,
            id_xor       UBIGINT,
            loaded_until TIMESTAMP,
            temporal_cut BIGINT,
            updated_at   TIMESTAMP DEFAULT current_timestamp
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


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> Any:
    """First column of the first row. Fetches everything: DuckDB 2 refuses new work on a
    connection whose previous result was not fully read (``fetchone`` leaves it open)."""
    rows = con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()
    return rows[0][0] if rows else None
