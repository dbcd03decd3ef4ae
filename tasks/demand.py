"""Demand analysis: topics and sources readers engage with more than the pool supplies them.

From the interactions of the last ``days`` days (positive events: click, like, share,
dwell), each topic's and each source's share of engagement is compared with its share of
the pools served over the same days (or, before any pool exists, of the items published
then). Where engagement share / supply share ≥ ``min_ratio`` and at least ``min_events``
positive events back it, the topic or source goes on the ``wishlist``. The scraper fetches
feeds of wished topics and sources first and more often; the harvest reserves room for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pandas as pd


@dataclass(frozen=True)
class Wish:
    kind: str
    """``topic`` or ``source``."""
    value: str
    engagement_share: float
    pool_share: float
    ratio: float
    events: int


def demand_table(con: duckdb.DuckDBPyConnection, days: int, now: datetime) -> pd.DataFrame:
    """Per topic and source: positive events, engagement share, supply share."""
    since = int(now.timestamp()) - days * 86400
    since_date = datetime.fromtimestamp(since, UTC).date()
    has_pool = bool(
        con.execute("SELECT count(*) FROM daily_pool WHERE pool_date >= ?", [since_date]).fetchall()[0][0]
    )
    supply = (
        "SELECT topic, source FROM daily_pool WHERE pool_date >= $since_date"
        if has_pool
        else "SELECT coalesce(categories[1], 'unknown') AS topic, source FROM items "
        "WHERE published_ts >= $since"
    )
    return con.execute(
        f"""
        WITH engaged AS (
            SELECT coalesce(i.categories[1], 'unknown') AS topic, i.source, t.value
            FROM interactions t JOIN items i USING (item_id)
            WHERE t.ts >= $since AND t.value > 0
        ), supply AS ({supply}),
        e AS (
            SELECT 'topic' AS kind, topic AS value, count(*) AS events FROM engaged GROUP BY topic
            UNION ALL
            SELECT 'source', source, count(*) FROM engaged GROUP BY source
        ), s AS (
            SELECT 'topic' AS kind, topic AS value, count(*) AS supplied FROM supply GROUP BY topic
            UNION ALL
            SELECT 'source', source, count(*) FROM supply GROUP BY source
        )
        SELECT e.kind, e.value, e.events,
               e.events / sum(e.events) OVER (PARTITION BY e.kind) AS engagement_share,
               coalesce(s.supplied, 0) / nullif((SELECT sum(supplied) FROM s s2 WHERE s2.kind = e.kind), 0)
                   AS supply_share
        FROM e LEFT JOIN s USING (kind, value)
        ORDER BY e.kind, engagement_share DESC
        """,
        {"since": since, "since_date": since_date} if has_pool else {"since": since},
    ).df()


def compute_wishlist(
    con: duckdb.DuckDBPyConnection,
    days: int,
    *,
    now: datetime | None = None,
    min_ratio: float = 1.25,
    min_events: int = 20,
) -> list[Wish]:
    """Recompute the wishlist and replace the ``wishlist`` table with it; returns the wishes."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    table = demand_table(con, days, now)
    wishes: list[Wish] = []
    for row in table.itertuples(index=False):
        supply = float(row.supply_share) if pd.notna(row.supply_share) else 0.0
        ratio = float(row.engagement_share) / max(supply, 0.005)
        if row.events >= min_events and ratio >= min_ratio:
            wishes.append(
                Wish(
                    row.kind,
                    str(row.value),
                    float(row.engagement_share),
                    supply,
                    round(ratio, 4),
                    int(row.events),
                )
            )
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM wishlist")
        for w in wishes:
            con.execute(
                "INSERT INTO wishlist VALUES (?, ?, ?, ?, ?, ?)",
                [w.kind, w.value, w.engagement_share, w.pool_share, w.ratio, now.replace(tzinfo=None)],
            )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return wishes


def wishlist_markdown(wishes: list[Wish]) -> str:
    if not wishes:
        return "### Wishlist\n\nNo topic or source is under-supplied (or too few interactions yet).\n"
    lines = [
        "### Wishlist",
        "",
        "| kind | value | engagement share | pool share | ratio | events |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {w.kind} | {w.value} | {w.engagement_share:.1%} | {w.pool_share:.1%} | {w.ratio:.2f} "
        f"| {w.events} |"
        for w in wishes
    ]
    return "\n".join(lines) + "\n"
