"""MIND (Microsoft News Dataset): ``news.tsv`` and ``behaviors.tsv`` → the one schema.

``news.tsv`` (no header, tab-separated): news_id, category, subcategory, title, abstract,
url, title_entities, abstract_entities → items (categories = [category, subcategory],
description = abstract).

``behaviors.tsv`` (no header): impression_id, user_id, time (``11/15/2019 8:55:22 AM``),
history (space-separated news ids clicked before the log's period), impressions
(``N123-1 N456-0``: shown news id, 1 = clicked; MIND's test split has no ``-label``) →

* users: every user id;
* interactions: one ``click`` (value 1) per clicked impression entry at the impression's
  time, with the impression as session; plus the user's ``history`` clicks, which MIND
  gives without times, as ``click`` events at the user's first impression time (their
  order kept in ``seq``), each history entry once per user;
* impressions: one row per behaviors line (history, shown, clicked), with the id prefixed
  by the file's directory name, because MIND numbers impressions from 1 in every split.

Lines whose time or impression list cannot be parsed are rejected with their line number
and go to quarantine; nothing of such a line is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.sources.common import (
    SourceData,
    SourceFormatError,
    finish_interactions,
    finish_items,
    read_delimited,
)

NEWS_COLUMNS = [
    "news_id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
]
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
_ENTRY = re.compile(r"^(?P<item>[^\s-]+)(?:-(?P<label>[01]))?$")
IMPRESSION_FRAME_COLUMNS = [
    "impression_id",
    "user_id",
    "ts",
    "history",
    "shown",
    "clicked",
    "dwell_s",
    "row_number",
]


@dataclass
class MindData(SourceData):
    """A MIND split: the one schema plus its impression log."""

    impressions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMPRESSION_FRAME_COLUMNS))


def _reject(path: Path, row_number: int, rule: str, payload: str) -> dict[str, object]:
    return {
        "table": "impressions",
        "source_file": str(path),
        "row_number": int(row_number),
        "rule": rule,
        "payload": payload,
    }


def parse_impression_list(text: str) -> tuple[list[str], list[bool | None]]:
    """``"N1-1 N2-0"`` → (["N1", "N2"], [True, False]); unlabelled entries give None.

    Raises ValueError naming the bad entry and the expected form.
    """
    shown: list[str] = []
    clicked: list[bool | None] = []
    for entry in text.split():
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"impression entry {entry!r} is not NEWSID-0, NEWSID-1 or NEWSID")
        shown.append(match["item"])
        label = match["label"]
        clicked.append(None if label is None else label == "1")
    if not shown:
        raise ValueError("empty impression list")
    return shown, clicked


def read_mind(directory: Path) -> MindData:
    """Read one MIND split directory (``news.tsv`` + ``behaviors.tsv``)."""
    news_path, behaviors_path = directory / "news.tsv", directory / "behaviors.tsv"
    for path in (news_path, behaviors_path):
        if not path.is_file():
            raise SourceFormatError(
                f"MIND data not found: {path} is missing; expected a MIND split directory with "
                "news.tsv and behaviors.tsv"
            )
    raw_news, rej_news = read_delimited(news_path, table="items", sep="\t", header=False, names=NEWS_COLUMNS)
    items = finish_items(
        pd.DataFrame(
            {
                "item_id": raw_news["news_id"],
                "title": raw_news["title"],
                "categories": [
                    [c for c in (cat, sub) if isinstance(c, str) and c]
                    for cat, sub in zip(raw_news["category"], raw_news["subcategory"], strict=True)
                ],
                "description": raw_news["abstract"].where(raw_news["abstract"].notna(), None),
                "url": raw_news["url"],
                "row_number": raw_news["row_number"],
            }
        )
    )
    raw, rej_beh = read_delimited(
        behaviors_path, table="interactions", sep="\t", header=False, names=BEHAVIOR_COLUMNS
    )
    times = pd.to_datetime(raw["time"], format=MIND_TIME_FORMAT, errors="coerce", utc=True)
    seconds = (times - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)

    split = directory.resolve().name
    impressions: list[tuple] = []
    rejects: list[dict[str, object]] = []
    for row, imp_id, user, ts, history, listing, raw_time in zip(
        raw["row_number"],
        raw["impression_id"],
        raw["user_id"],
        seconds,
        raw["history"],
        raw["impressions"],
        raw["time"],
        strict=True,
    ):
        line = "\t".join(str(v) for v in (imp_id, user, raw_time, history or "", listing or ""))
        if pd.isna(ts):
            rejects.append(_reject(behaviors_path, row, f"parse:time (expected {MIND_TIME_FORMAT})", line))
            continue
        try:
            shown, clicked = parse_impression_list(listing or "")
        except ValueError as exc:
            rejects.append(_reject(behaviors_path, row, f"parse:impressions ({exc})", line))
            continue
        hist = history.split() if isinstance(history, str) else []
        impressions.append((f"{split}:{imp_id}", user, int(ts), hist, shown, clicked, None, int(row)))
    imp_frame = pd.DataFrame(impressions, columns=IMPRESSION_FRAME_COLUMNS)

    interactions = _interactions(imp_frame)
    users = pd.DataFrame(
        {"user_id": imp_frame["user_id"].drop_duplicates().astype("string"), "attributes": "{}"}
    ).reset_index(drop=True)
    users["row_number"] = range(1, len(users) + 1)
    return MindData(
        name=f"mind:{split}",
        items=items,
        interactions=interactions,
        users=users,
        files={"items": news_path, "interactions": behaviors_path, "users": behaviors_path},
        rejects=pd.concat(
            [rej_news, rej_beh, pd.DataFrame(rejects, columns=rej_news.columns)], ignore_index=True
        ),
        impressions=imp_frame,
    )


def _interactions(impressions: pd.DataFrame) -> pd.DataFrame:
    """Clicks from the impressions, then each user's untimed history at their first visit."""
    rows: list[tuple] = []
    seen_history: dict[str, set[str]] = {}
    first_ts = impressions.groupby("user_id")["ts"].min().to_dict() if len(impressions) else {}
    for imp_id, user, ts, history, shown, clicked, row in zip(
        impressions["impression_id"],
        impressions["user_id"],
        impressions["ts"],
        impressions["history"],
        impressions["shown"],
        impressions["clicked"],
        impressions["row_number"],
        strict=True,
    ):
        known = seen_history.setdefault(user, set())
        for item in history:
            if item not in known:
                known.add(item)
                rows.append((user, item, "click", 1.0, first_ts[user], None, row))
        for item, c in zip(shown, clicked, strict=True):
            if c:
                rows.append((user, item, "click", 1.0, ts, imp_id, row))
    frame = pd.DataFrame(
        rows, columns=["user_id", "item_id", "event_type", "value", "ts", "session_id", "row_number"]
    )
    frame["ts"] = frame["ts"].astype("Int64")
    frame["seq"] = range(len(frame))
    return finish_interactions(frame, event_type="click")
