"""Load a configured source into the warehouse through the expectation gates.

Rows that cannot be parsed, or that fail an expectation, go to ``quarantine`` with the rule
they broke; clean rows are inserted idempotently (content-based ids, existing events
skipped), so loading the same file twice, or a line twice, adds it once.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from expectations import (
    DataQualityError,
    ValidationOutcome,
    enforce_failure_share,
    quarantine,
    validate_interactions,
    validate_items,
)
from storage.artifacts import file_sha256
from storage.settings import Settings
from storage.warehouse import scalar
from tasks.impressions import load_impressions
from tasks.sources import SourceData, read_source


@dataclass
class TableLoad:
    """What happened to one input file."""

    table: str
    source_file: str
    rows_seen: int
    rows_added: int
    rows_quarantined: int
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadSummary:
    source: str
    tables: list[TableLoad]

    def added(self, table: str) -> int:
        return sum(t.rows_added for t in self.tables if t.table == table)

    def markdown(self) -> str:
        lines = [
            f"### Load of `{self.source}`",
            "",
            "| table | file | rows seen | added | quarantined | failed rules |",
            "|---|---|---:|---:|---:|---|",
        ]
        for t in self.tables:
            rules = ", ".join(f"{r}: {n}" for r, n in sorted(t.failures.items())) or "—"
            lines.append(
                f"| {t.table} | `{Path(t.source_file).name}` | {t.rows_seen:,} | {t.rows_added:,} "
                f"| {t.rows_quarantined:,} | {rules} |"
            )
        return "\n".join(lines)


def _quarantine_parse_rejects(con: duckdb.DuckDBPyConnection, rejects: pd.DataFrame) -> int:
    if rejects.empty:
        return 0
    rej = rejects.copy()
    rej["quarantine_id"] = [
        hashlib.sha1(f"{t}|{f}|{r}|{rule}".encode()).hexdigest()
        for t, f, r, rule in zip(
            rej["table"], rej["source_file"], rej["row_number"], rej["rule"], strict=True
        )
    ]
    # A line that did not parse is kept as the line; a value that did not fit (a dict naming
    # its column, e.g. {"timestamp": "1e30", "row": {...}}) as it is.
    rej["payload"] = rej["payload"].map(
        lambda p: json.dumps(p) if isinstance(p, dict) else pd.io.json.ujson_dumps({"line": p})
    )
    before = scalar(con, "SELECT count(*) FROM quarantine")
    con.register("parse_rejects", rej)
    con.execute(
        "INSERT INTO quarantine (quarantine_id, table_name, source_file, row_number, rule, payload) "
        'SELECT quarantine_id, "table", source_file, row_number, rule, payload FROM parse_rejects '
        "ON CONFLICT DO NOTHING"
    )
    con.unregister("parse_rejects")
    return int(scalar(con, "SELECT count(*) FROM quarantine") - before)


def _check_share(outcome: ValidationOutcome, parse_rejects: int, max_share: float) -> None:
    total = outcome.total_rows + parse_rejects
    bad = outcome.rejected_rows + parse_rejects
    if parse_rejects and total and bad / total > max_share:
        raise DataQualityError(
            f"{outcome.source_file}: {bad:,} of {total:,} rows ({bad / total:.1%}) were rejected, "
            f"more than the allowed {max_share:.1%}; {parse_rejects:,} could not be parsed "
            "(see the quarantine table)"
        )
    enforce_failure_share(outcome, max_share)


def upsert_items(con: duckdb.DuckDBPyConnection, items: pd.DataFrame, source: str) -> int:
    """Insert new items, update changed ones (by content hash); returns rows added."""
    frame = items.drop(columns=["row_number"]).copy()
    frame["source"] = source
    before = scalar(con, "SELECT count(*) FROM items")
    con.register("new_items", frame)
    con.execute(
        """
        INSERT INTO items (item_id, title, categories, year, description, url, source, content_hash)
        SELECT item_id, title, CAST(categories AS VARCHAR[]), year, description, url, source,
               md5(concat_ws('|', title, array_to_string(CAST(categories AS VARCHAR[]), ','),
                             CAST(year AS VARCHAR), description, url))
        FROM new_items
        ON CONFLICT (item_id) DO UPDATE SET
            title = excluded.title, categories = excluded.categories, year = excluded.year,
            description = excluded.description, url = excluded.url,
            content_hash = excluded.content_hash
        """
    )
    con.unregister("new_items")
    return int(scalar(con, "SELECT count(*) FROM items") - before)


def upsert_item_attributes(
    con: duckdb.DuckDBPyConnection, attributes: pd.DataFrame, clean_ids: pd.Series
) -> int:
    """Store the side metadata of the items that passed validation (a quarantined item's
    attributes would describe nothing); returns the rows written."""
    keep = attributes[attributes["item_id"].isin(set(clean_ids))].drop_duplicates("item_id")
    frame = pd.DataFrame(
        {"item_id": keep["item_id"].astype(str), "attributes": [json.dumps(a) for a in keep["attributes"]]}
    )
    con.register("new_item_attributes", frame)
    con.execute(
        """INSERT INTO item_attributes (item_id, attributes)
           SELECT item_id, CAST(attributes AS JSON) FROM new_item_attributes
           ON CONFLICT (item_id) DO UPDATE SET attributes = excluded.attributes"""
    )
    con.unregister("new_item_attributes")
    return len(frame)


def insert_interactions(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, source_file: str) -> int:
    """Insert interactions with content-based event ids; events already present are skipped.

    An event is what a row says: user, item, event type, time, value, dwell and session. The
    id hashes exactly that, so identical rows (a duplicated line, the same file loaded twice,
    a file that grew at the end) are one event, while the same user rating the same item again
    at another time, or with another value, stays a distinct event. Rows already in the
    warehouse with the same content are skipped whatever their id, so events stored under an
    earlier id scheme are not loaded a second time (which also keeps ``event_id`` unique: the
    table has no key index, see migration 12).
    """
    frame = rows.drop(columns=["row_number"]).copy()
    frame["source_file"] = source_file
    before = scalar(con, "SELECT count(*) FROM interactions")
    con.register("new_interactions", frame)
    con.execute(
        """
        INSERT INTO interactions
            (event_id, user_id, item_id, event_type, value, dwell_s, ts, seq, session_id, source_file)
        SELECT md5(to_json([user_id, item_id, event_type, CAST(ts AS VARCHAR), CAST(value AS VARCHAR),
                            CAST(dwell_s AS VARCHAR), session_id])::VARCHAR) AS event_id,
               user_id, item_id, event_type, value, dwell_s, ts, seq, session_id, source_file
        FROM new_interactions n
        WHERE NOT EXISTS (
            SELECT 1 FROM interactions i
            WHERE i.user_id = n.user_id AND i.item_id = n.item_id AND i.event_type = n.event_type
              AND i.ts = n.ts AND i.value IS NOT DISTINCT FROM n.value
              AND i.dwell_s IS NOT DISTINCT FROM n.dwell_s
              AND i.session_id IS NOT DISTINCT FROM n.session_id
        )
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY seq) = 1
        """
    )
    con.unregister("new_interactions")
    return int(scalar(con, "SELECT count(*) FROM interactions") - before)


def upsert_users(con: duckdb.DuckDBPyConnection, users: pd.DataFrame, *, overwrite: bool = True) -> int:
    """Insert users; ``overwrite`` replaces attributes of known users (a users file is truth)."""
    conflict = "DO UPDATE SET attributes = excluded.attributes" if overwrite else "DO NOTHING"
    before = scalar(con, "SELECT count(*) FROM users")
    con.register("new_users", users[["user_id", "attributes"]])
    con.execute(
        "INSERT INTO users (user_id, attributes) SELECT user_id, CAST(attributes AS JSON) FROM new_users "
        "WHERE user_id IS NOT NULL QUALIFY row_number() OVER (PARTITION BY user_id) = 1 "
        f"ON CONFLICT (user_id) {conflict}"
    )
    con.unregister("new_users")
    return int(scalar(con, "SELECT count(*) FROM users") - before)


def _record_load(con: duckdb.DuckDBPyConnection, load: TableLoad) -> None:
    path = Path(load.source_file)
    sha = file_sha256(path) if path.is_file() else ""
    load_id = hashlib.sha1(f"{load.table}|{path}|{sha}|{time.time_ns()}".encode()).hexdigest()
    con.execute(
        "INSERT INTO loads VALUES (?, ?, ?, ?, ?, ?, ?, current_timestamp)",
        [load_id, str(path), sha, load.table, load.rows_seen, load.rows_added, load.rows_quarantined],
    )


def load_source(
    con: duckdb.DuckDBPyConnection, settings: Settings, data: SourceData | None = None
) -> LoadSummary:
    """Read, validate, quarantine and insert the configured source; returns what happened.

    Raises :class:`DataQualityError` (after quarantining) when a file's rejected share is
    beyond ``settings.validation.max_failure_share``; nothing of that file is inserted then.
    """
    if data is None:
        from tasks.bulk_load import bulk_loadable, load_movielens_csv  # imports this module

        if bulk_loadable(settings):  # ML-25M's CSV layout: streamed through DuckDB
            return load_movielens_csv(con, settings)
    data = data if data is not None else read_source(settings.source)
    max_share = settings.validation.max_failure_share
    loads: list[TableLoad] = []
    rejects = data.rejects

    def parse_rejects(table: str) -> pd.DataFrame:
        return rejects[rejects["table"] == table] if len(rejects) else rejects

    items_file = str(data.files.get("items", data.files["interactions"]))
    items_outcome = validate_items(data.items, source_file=items_file)
    item_rejects = parse_rejects("items")
    q = quarantine(con, items_outcome) + _quarantine_parse_rejects(con, item_rejects)
    _check_share(items_outcome, len(item_rejects), max_share)
    added = upsert_items(con, items_outcome.clean, data.name)
    if data.item_attributes is not None:
        upsert_item_attributes(con, data.item_attributes, items_outcome.clean["item_id"])
    loads.append(
        TableLoad(
            "items",
            items_file,
            items_outcome.total_rows + len(item_rejects),
            added,
            q,
            {**items_outcome.failures, **_rule_counts(item_rejects)},
        )
    )

    known_users: list[str] | None = None
    if data.users is not None:
        user_rejects = parse_rejects("users")
        q = _quarantine_parse_rejects(con, user_rejects)
        added = upsert_users(con, data.users)
        loads.append(
            TableLoad(
                "users",
                str(data.files["users"]),
                len(data.users) + len(user_rejects),
                added,
                q,
                _rule_counts(user_rejects),
            )
        )
        known_users = [r[0] for r in con.execute("SELECT user_id FROM users").fetchall()]

    known_items = [r[0] for r in con.execute("SELECT item_id FROM items").fetchall()]
    inter_file = str(data.files["interactions"])
    outcome = validate_interactions(
        data.interactions,
        source_file=inter_file,
        known_items=known_items,
        known_users=known_users,
        value_min=settings.source.value_min,
        value_max=settings.source.value_max,
        min_ts=settings.source.min_timestamp,
        max_ts=int(time.time()) + settings.source.future_skew_s,
    )
    inter_rejects = parse_rejects("interactions")
    q = quarantine(con, outcome) + _quarantine_parse_rejects(con, inter_rejects)
    _check_share(outcome, len(inter_rejects), max_share)
    added = insert_interactions(con, outcome.clean, inter_file)
    if data.users is None:
        derived = outcome.clean[["user_id"]].drop_duplicates().assign(attributes="{}")
        upsert_users(con, derived, overwrite=False)
    loads.append(
        TableLoad(
            "interactions",
            inter_file,
            outcome.total_rows + len(inter_rejects),
            added,
            q,
            {**outcome.failures, **_rule_counts(inter_rejects)},
        )
    )
    impressions = getattr(data, "impressions", None)  # impression logs (MIND): tasks/impressions.py
    if impressions is not None:
        imp_file = str(data.files["interactions"])
        imp_rejects = parse_rejects("impressions")
        q = _quarantine_parse_rejects(con, imp_rejects)
        added, q_valid, failures = load_impressions(
            con,
            impressions,
            source=data.name,
            source_file=imp_file,
            max_failure_share=max_share,
            known_users=known_users,
            parse_rejects=len(imp_rejects),
        )
        loads.append(
            TableLoad(
                "impressions",
                imp_file,
                len(impressions) + len(imp_rejects),
                added,
                q + q_valid,
                {**failures, **_rule_counts(imp_rejects)},
            )
        )
    for load in loads:
        _record_load(con, load)
    return LoadSummary(data.name, loads)


def _rule_counts(rejects: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in rejects["rule"].value_counts().items()} if len(rejects) else {}
