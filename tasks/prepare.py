"""k-core filtering and train/valid/test splits, in DuckDB SQL, recorded in the warehouse.

The k-core input is where the training data is built, so it is also the one place where
rows are admitted or held back: only positives (``storage.labels``: a skip or a short dwell
never trains a retrieval model nor becomes a target; it stays in ``interactions`` for the
ranker), and of those, serving events by ``events.train_from``. Everything downstream
(splits, training, evaluation, the gate) reads ``interactions_kcore`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from storage.labels import POSITIVE, label_rows
from storage.settings import EventsSettings
from storage.warehouse import scalar

KCORE_TABLE = "interactions_kcore"
LEAVE_LAST_OUT = "leave_last_out"
TEMPORAL = "temporal"


ANONYMOUS_SQL = "(client IS NULL AND session_id IS NOT NULL AND user_id = 'session:' || session_id)"
"""An anonymous serving event: no ``user_id`` (ingestion made it ``session:<session>``) and no
named client. Batch-loaded rows have no client but a real user id, so they never match."""


def admitted_interactions_sql(source: str = "interactions", events: EventsSettings | None = None) -> str:
    """A query over ``source`` keeping the rows ``events.train_from`` lets train (see
    :class:`storage.settings.EventsSettings`); identified rows are always kept."""
    rule = events or EventsSettings()
    if rule.train_from == "all":
        return f"SELECT * FROM {source}"
    if rule.train_from == "identified":
        return f"SELECT * FROM {source} WHERE NOT {ANONYMOUS_SQL}"
    return (
        f"SELECT * FROM {source} WHERE NOT {ANONYMOUS_SQL} OR user_id IN ("
        f"SELECT user_id FROM {source} WHERE {ANONYMOUS_SQL} GROUP BY user_id "
        f"HAVING count(*) >= {int(rule.min_session_events)} AND count(DISTINCT item_id) >= 2)"
    )


def positive_interactions_sql(source: str = "interactions") -> str:
    """A query over ``source`` keeping its positives: the only rows retrieval models learn from
    (``source`` must be labelled first, see :func:`storage.labels.label_rows`)."""
    return f"SELECT * FROM {source} WHERE label = '{POSITIVE}'"


def kcore_input_sql(source: str = "interactions", events: EventsSettings | None = None) -> str:
    """The k-core input: the positives of ``source`` that ``events.train_from`` admits (an
    anonymous session's history is counted in positives, so skips never make it admissible)."""
    positives = positive_interactions_sql(source)
    return f"WITH positives AS ({positives}) {admitted_interactions_sql('positives', events)}"


@dataclass(frozen=True)
class KCoreSummary:
    rows_before: int
    """Rows admitted by the event rule, before k-core filtering."""
    rows_after: int
    users_after: int
    items_after: int
    iterations: int
    held_back: int = 0
    """Positive anonymous session events the event rule kept out of training."""
    not_positive: int = 0
    """Negatives and weak negatives (skips, short dwells): never trained on, kept for the ranker."""
    appended: int | None = None
    """Rows appended to last night's table (None: rebuilt whole); see :func:`kcore_filter`."""

    @property
    def removed(self) -> int:
        return self.rows_before - self.rows_after


def kcore_filter(
    con: duckdb.DuckDBPyConnection,
    user_k: int,
    item_k: int,
    source: str = "interactions",
    target: str = KCORE_TABLE,
    events: EventsSettings | None = None,
) -> KCoreSummary:
    """Largest sub-log in which every user has ≥ ``user_k`` and every item ≥ ``item_k`` rows.

    ``source`` is labelled first with the mapping in ``events`` (:func:`storage.labels.label_rows`),
    then only its positives that the event rule admits enter (default: :class:`EventsSettings`'s
    defaults). Removing a low-degree user can push an item below its k and vice versa, so
    deletion is repeated until a pass removes nothing: the fixed point, which is the unique
    maximal k-core (peeling never removes a row that belongs to any valid core). ``k = 0``
    switches a side off.
    """
    label_rows(con, source, events)
    appended = None
    if user_k == 0 and item_k == 0:
        appended = _append_new_rows(con, source, target, events)
    if appended is None:
        con.execute(f"CREATE OR REPLACE TABLE {target} AS {kcore_input_sql(source, events)}")
    before = _count(con, target)
    positives = int(scalar(con, f"SELECT count(*) FROM ({positive_interactions_sql(source)})"))
    held_back = positives - before
    not_positive = _count(con, source) - positives
    iterations = 0
    while user_k > 0 or item_k > 0:
        iterations += 1
        n_before = _count(con, target)
        con.execute(
            f"""
            DELETE FROM {target}
            WHERE user_id IN (SELECT user_id FROM {target} GROUP BY user_id HAVING count(*) < $uk)
               OR item_id IN (SELECT item_id FROM {target} GROUP BY item_id HAVING count(*) < $ik)
            """,
            {"uk": user_k, "ik": item_k},
        )
        if _count(con, target) == n_before:
            break
    users, items = con.execute(
        f"SELECT count(DISTINCT user_id), count(DISTINCT item_id) FROM {target}"
    ).fetchall()[0]
    return KCoreSummary(
        before, _count(con, target), int(users), int(items), iterations, held_back, not_positive, appended
    )


def _append_new_rows(
    con: duckdb.DuckDBPyConnection, source: str, target: str, events: EventsSettings | None
) -> int | None:
    """Without k-core filtering the table is just the admitted rows, so a night that only
    added rows needs only those appended: the admitted rows loaded after the newest row of
    last night's table. Returns the rows appended, or None when the table must be rebuilt.

    Copying 25M rows costs minutes; appending 1 % and checking costs a scan. The check makes
    it safe: afterwards the table must hold exactly the admitted rows (same count, same XOR
    of event-id hashes). A relabelled event, an anonymous session that reached its minimum
    history (its older events become admissible), deleted rows or a changed schema fail it,
    and the table is rebuilt whole."""
    exists = scalar(
        con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND NOT temporary", [target]
    )
    if not exists:
        return None
    admitted = kcore_input_sql(source, events)
    con.execute("BEGIN TRANSACTION")
    try:
        watermark = scalar(con, f"SELECT max(loaded_at) FROM {target}")
        if watermark is None:
            con.execute("ROLLBACK")
            return None
        added = con.execute(
            f"INSERT INTO {target} SELECT * FROM ({admitted}) WHERE loaded_at > $w", {"w": watermark}
        ).fetchall()[0][0]
        want = con.execute(f"SELECT count(*), bit_xor(hash(event_id)) FROM ({admitted})").fetchall()[0]
        have = con.execute(f"SELECT count(*), bit_xor(hash(event_id)) FROM {target}").fetchall()[0]
        if want != have:
            con.execute("ROLLBACK")
            return None
        con.execute("COMMIT")
        return int(added)
    except duckdb.Error:
        con.execute("ROLLBACK")
        return None


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(scalar(con, f"SELECT count(*) FROM {table}"))


def make_splits(
    con: duckdb.DuckDBPyConnection, table: str = KCORE_TABLE, temporal_quantile: float = 0.9
) -> dict[str, dict[str, int]]:
    """Record both splits in ``splits`` (replacing earlier ones) and return part sizes.

    * ``leave_last_out``: per user, ordered by (timestamp, file order): the last interaction
      is ``test``, the second last ``valid``, the rest ``train`` (a user with two
      interactions has no valid row; with one, only train).
    * ``temporal``: one global cut at the ``temporal_quantile`` of timestamps: later
      interactions are ``test``, the rest ``train``.

    ``split_state`` records which rows of ``table`` the splits describe (count, XOR of
    event-id hashes, newest load time) and the temporal cut. When ``table`` only gained rows
    since (:func:`_update_splits`), only the rows whose part changes are rewritten; the
    result is the same as a rebuild's.
    """
    if not _update_splits(con, table, temporal_quantile):
        _rebuild_splits(con, table, temporal_quantile)
    rows = con.execute("SELECT split_name, part, count(*) FROM splits GROUP BY ALL ORDER BY ALL").fetchall()
    out: dict[str, dict[str, int]] = {}
    for name, part, n in rows:
        out.setdefault(name, {})[part] = int(n)
    return out


@dataclass(frozen=True)
class TableState:
    """What identifies the rows of an interactions table: their count, the XOR of their
    event-id hashes (order-free, as :func:`tasks.training.data_fingerprint` reads it) and
    the newest load time."""

    row_count: int
    id_xor: int
    loaded_until: Any


def table_state(con: duckdb.DuckDBPyConnection, table: str) -> TableState:
    """``table``'s :class:`TableState`: one scan (a table without load times has no newest:
    its splits are always rebuilt)."""
    timed = scalar(
        con,
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = 'loaded_at'",
        [table],
    )
    newest = "max(loaded_at)" if timed else "NULL"
    n, x, w = con.execute(
        f"SELECT count(*), coalesce(bit_xor(hash(event_id)), 0), {newest} FROM {table}"
    ).fetchall()[0]
    return TableState(int(n), int(x), w)


def splits_state(con: duckdb.DuckDBPyConnection, table: str) -> tuple[TableState, int | None] | None:
    """The rows of ``table`` the recorded splits describe and their temporal cut (rows with a
    later timestamp are ``test``), or None when no split of ``table`` is recorded."""
    rows = con.execute(
        "SELECT row_count, id_xor, loaded_until, temporal_cut FROM split_state WHERE source_table = ?",
        [table],
    ).fetchall()
    if not rows:
        return None
    n, x, w, cut = rows[0]
    return TableState(int(n), int(x or 0), w), (None if cut is None else int(cut))


def splits_describe(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the recorded splits describe exactly the rows ``table`` holds now: then every
    row of it has its part recorded, and one not recorded ``valid`` or ``test`` is ``train``."""
    recorded = splits_state(con, table)
    if recorded is None:
        return False
    now = table_state(con, table)
    return (now.row_count, now.id_xor) == (recorded[0].row_count, recorded[0].id_xor)


def _record_state(con: duckdb.DuckDBPyConnection, table: str, state: TableState, cut: int | None) -> None:
    """The splits now describe ``state``'s rows of ``table`` (one table's splits at a time)."""
    con.execute("DELETE FROM split_state")
    con.execute(
        "INSERT INTO split_state (source_table, row_count, id_xor, loaded_until, temporal_cut) "
        "VALUES (?, ?, ?, ?, ?)",
        [table, state.row_count, state.id_xor, state.loaded_until, cut],
    )


def _temporal_cut(con: duckdb.DuckDBPyConnection, table: str, temporal_quantile: float) -> int | None:
    cut = scalar(con, f"SELECT quantile_disc(ts, $q) FROM {table}", {"q": temporal_quantile})
    return None if cut is None else int(cut)


def _rebuild_splits(con: duckdb.DuckDBPyConnection, table: str, temporal_quantile: float) -> None:
    """Both splits computed from every row of ``table``."""
    # Written whole into a fresh table swapped in at commit: deleting last night's 2 x n rows
    # first cost more than writing tonight's (no key index either: migration 11).
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            """CREATE OR REPLACE TABLE splits_next (
                   split_name VARCHAR NOT NULL, event_id VARCHAR NOT NULL, part VARCHAR NOT NULL)"""
        )
        con.execute(
            f"INSERT INTO splits_next SELECT split_name, event_id, part FROM splits "
            f"WHERE split_name NOT IN ('{LEAVE_LAST_OUT}', '{TEMPORAL}')"
        )
        con.execute(
            f"""
            INSERT INTO splits_next
            SELECT '{LEAVE_LAST_OUT}', event_id,
                   CASE WHEN n >= 2 AND pos = n THEN 'test'
                        WHEN n >= 3 AND pos = n - 1 THEN 'valid'
                        ELSE 'train' END
            FROM (
                SELECT event_id,
                       row_number() OVER (PARTITION BY user_id ORDER BY ts, seq) AS pos,
                       count(*) OVER (PARTITION BY user_id) AS n
                FROM {table}
            )
            """
        )
        cut = _temporal_cut(con, table, temporal_quantile)
        con.execute(
            f"""
            INSERT INTO splits_next
            SELECT '{TEMPORAL}', event_id, CASE WHEN ts > $cut THEN 'test' ELSE 'train' END
            FROM {table}
            """,
            {"cut": cut},
        )
        con.execute("DROP TABLE splits")
        con.execute("ALTER TABLE splits_next RENAME TO splits")
        _record_state(con, table, table_state(con, table), cut)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


UPDATE_MAX_NEW_SHARE = 0.2
"""Above this share of new rows the splits are rebuilt: rewriting is then no dearer."""


def _update_splits(con: duckdb.DuckDBPyConnection, table: str, temporal_quantile: float) -> bool:
    """Bring the recorded splits up to ``table`` when it only gained rows since; False (and
    nothing changed) when they must be rebuilt: no recorded state, a recorded row no longer
    in ``table``, or more than :data:`UPDATE_MAX_NEW_SHARE` new rows.

    Only the rows whose part can change are written, and the result is what
    :func:`_rebuild_splits` gives:

    * the new rows are those loaded after the recorded newest load time; the rest must be
      the recorded rows (same count, same XOR of event-id hashes), else the splits are rebuilt;
    * leave-last-out: a user's last two rows are among their last two recorded ones and
      their new ones (every earlier row was and stays ``train``), so per user with new
      rows only those candidates are ranked (a user with at most two recorded rows: all);
    * temporal: the recorded rows are ``test`` above the recorded cut; the rows between it
      and tonight's cut change sides, the new rows take their side of tonight's cut.

    No join here holds every event id in a hash table: the ids are matched against the few
    recorded non-train rows or the changed rows only (every id against the splits' cost most
    of a night's split at 25M ratings)."""
    recorded = splits_state(con, table)
    if recorded is None:
        return False
    before, old_cut = recorded
    if before.row_count == 0 or before.loaded_until is None or old_cut is None:
        return False
    now = table_state(con, table)
    new = now.row_count - before.row_count
    if new < 0 or new > UPDATE_MAX_NEW_SHARE * now.row_count:
        return False
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE split_new AS SELECT event_id, user_id, ts, seq "
            f"FROM {table} WHERE loaded_at > $w",
            {"w": before.loaded_until},
        )
        got, got_xor = con.execute(
            "SELECT count(*), coalesce(bit_xor(hash(event_id)), 0) FROM split_new"
        ).fetchall()[0]
        if got != new or before.id_xor ^ int(got_xor) != now.id_xor:
            con.execute("ROLLBACK")
            return False
        # leave-last-out: rank each changed user's candidates for the last two places. A user
        # with a recorded valid row had three rows or more: their recorded valid and test rows
        # and new rows are the candidates (three or more). Any other had at most two: all of
        # their rows are, so the candidates' count is their size (no count over every row of
        # the changed users, most of the table on a night with 1 % new ratings).
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE split_recorded AS
            SELECT t.event_id, t.user_id, t.ts, t.seq, s.part
            FROM {table} t
            JOIN (SELECT event_id, part FROM splits
                  WHERE split_name = '{LEAVE_LAST_OUT}' AND part <> 'train') s ON s.event_id = t.event_id
            SEMI JOIN (SELECT DISTINCT user_id FROM split_new) u ON u.user_id = t.user_id
            """
        )
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE split_tail AS
            WITH short AS (
                SELECT DISTINCT user_id FROM split_new
                EXCEPT SELECT user_id FROM split_recorded WHERE part = 'valid'
            ),
            candidates AS (  -- with the part recorded for each (none for a new row)
                SELECT event_id, user_id, ts, seq, part AS old_part FROM split_recorded
                UNION ALL
                SELECT t.event_id, t.user_id, t.ts, t.seq, 'train'
                FROM {table} t SEMI JOIN short z ON z.user_id = t.user_id
                ANTI JOIN split_recorded r ON r.event_id = t.event_id
                WHERE NOT coalesce(t.loaded_at > $w, false)
                UNION ALL
                SELECT event_id, user_id, ts, seq, NULL FROM split_new
            )
            SELECT event_id, part, old_part
            FROM (
                SELECT event_id, old_part,
                       CASE WHEN n >= 2 AND r = 1 THEN 'test'
                            WHEN n >= 3 AND r = 2 THEN 'valid'
                            ELSE 'train' END AS part
                FROM (
                    SELECT event_id, old_part,
                           row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, seq DESC) AS r,
                           count(*) OVER (PARTITION BY user_id) AS n
                    FROM candidates
                )
            )
            WHERE part IS DISTINCT FROM old_part
            """,
            {"w": before.loaded_until},
        )
        # temporal: the rows between last night's cut and tonight's, and the new rows
        cut = _temporal_cut(con, table, temporal_quantile)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE split_moved AS
            SELECT event_id, CASE WHEN ts > $cut THEN 'test' ELSE 'train' END AS part,
                   CASE WHEN coalesce(loaded_at > $w, false) THEN NULL
                        WHEN ts > $old THEN 'test' ELSE 'train' END AS old_part
            FROM {table}
            WHERE (ts > least($cut, $old) AND ts <= greatest($cut, $old)) OR loaded_at > $w
            """,
            {"cut": cut, "old": old_cut, "w": before.loaded_until},
        )
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE split_changed AS
            SELECT '{LEAVE_LAST_OUT}' AS split_name, event_id, part, old_part FROM split_tail
            UNION ALL SELECT '{TEMPORAL}', event_id, part, old_part FROM split_moved
            """
        )
        # Only the recorded rows whose part changes are deleted (a new row has none), and
        # their recorded part narrows the search: most are valid or test rows, found among
        # the few splits rows that are not train; train rows that change (a cut moving down,
        # a late row) are looked for among all the others, when there are any.
        for was in ("<> 'train'", "= 'train'"):
            if scalar(con, f"SELECT count(*) FROM split_changed WHERE old_part {was}"):
                con.execute(
                    f"DELETE FROM splits USING split_changed c WHERE splits.part {was} "
                    f"AND c.old_part {was} AND splits.split_name = c.split_name "
                    "AND splits.event_id = c.event_id"
                )
        con.execute("INSERT INTO splits SELECT split_name, event_id, part FROM split_changed")
        for temp in ("split_new", "split_recorded", "split_tail", "split_moved", "split_changed"):
            con.execute(f"DROP TABLE {temp}")
        _record_state(con, table, now, cut)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return True
