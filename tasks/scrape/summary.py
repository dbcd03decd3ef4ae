"""What a scrape run did, per feed and overall: the flow's log line, artifact and stored record."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

OK_STATUSES = frozenset({"ok", "not-modified", "recovered"})
"""Statuses that count as a successful fetch (they reset the failure count). Every other one
counts toward pausing the feed, ``all-rejected`` (every entry quarantined) included."""


@dataclass
class FeedOutcome:
    """What happened to one feed in a run (a row of the summary)."""

    url: str
    name: str
    status: str
    http_status: int | None = None
    detail: str = ""
    entries: int = 0
    new_items: int = 0
    merged: int = 0
    quarantined: int = 0
    conditional: bool = False
    attempts: int = 0
    consecutive_failures: int = 0
    paused: bool = False
    wished: bool = False


@dataclass
class ScrapeSummary:
    """One run: every feed's outcome, the totals and the time per phase (the flow logs and stores it)."""

    run_id: str
    started_at: datetime
    feeds: list[FeedOutcome]
    seconds: dict[str, float]
    """Wall seconds per phase: fetch, parse, write."""
    items_added: int
    entries_parsed: int
    merged_url: int
    merged_content: int
    quarantined: int
    demo_server: str | None = None
    fetched_at: datetime | None = None
    """When the scrape's work ended (the freshness benchmark measures from here)."""
    delta: str | None = None
    """What the publish-fresh step after the scrape did (its log line)."""

    @property
    def requests(self) -> int:
        return sum(1 for f in self.feeds if f.attempts)

    @property
    def conditional_requests(self) -> int:
        return sum(1 for f in self.feeds if f.conditional)

    @property
    def not_modified(self) -> int:
        return sum(1 for f in self.feeds if f.status == "not-modified")

    @property
    def problems(self) -> list[FeedOutcome]:
        return [f for f in self.feeds if f.status not in OK_STATUSES or f.paused]

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.feeds:
            counts[f.status] = counts.get(f.status, 0) + 1
        return dict(sorted(counts.items()))

    def log_line(self) -> str:
        total = sum(self.seconds.values())
        return (
            f"{len(self.feeds)} feeds, {self.requests} fetched ({self.conditional_requests} conditional, "
            f"{self.not_modified} not modified: 304, nothing parsed); {self.entries_parsed} entries parsed, "
            f"{self.items_added} new items, {self.merged_url} merged by URL, {self.merged_content} merged by "
            f"content hash, {self.quarantined} quarantined; {len(self.problems)} feeds with problems; "
            f"{total:.2f}s (fetch {self.seconds['fetch']:.2f}s, parse {self.seconds['parse']:.2f}s, "
            f"write {self.seconds['write']:.2f}s)"
        )

    def markdown(self) -> str:
        lines = [
            f"### Scrape `{self.run_id[:8]}`",
            "",
            self.log_line(),
            "",
            "| status | feeds |",
            "|---|---:|",
            *(f"| {s} | {n} |" for s, n in self.status_counts().items()),
            "",
        ]
        if self.problems:
            lines += [
                "#### Feeds with problems",
                "",
                "| feed | url | status | http | detail | failures in a row | paused |",
                "|---|---|---|---:|---|---:|---|",
            ]
            lines += [
                f"| {_md(f.name)} | {_md(f.url)} | {f.status} | {f.http_status or ''} "
                f"| {_md(f.detail[:160])} "
                f"| {f.consecutive_failures} | {'yes' if f.paused else ''} |"
                for f in self.problems
            ]
            lines.append("")
        lines += [
            "#### Feeds",
            "",
            "| feed | status | conditional | entries | new | merged | quarantined |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {_md(f.name)}{' (wished)' if f.wished else ''} | {f.status} "
            f"| {'yes' if f.conditional else ''} "
            f"| {f.entries} | {f.new_items} | {f.merged} | {f.quarantined} |"
            for f in self.feeds
        ]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        return out


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
