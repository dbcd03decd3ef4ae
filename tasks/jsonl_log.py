"""Reading what was appended to a JSON-lines log since last time, shared by the event and
impression ingests.

Per file, the byte offset and line count read so far are kept in ``event_log_offsets``. A
line without its trailing newline is a torn write (a worker died mid-line, or is still
writing): it is not consumed, so the next read sees it whole. A file that shrank was replaced
and is read again from the start (ids make the re-read harmless). Lines that do not parse
become quarantine rows naming the file, the line and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from expectations.suites import quarantine_id


@dataclass
class NewLines:
    """The complete lines appended to one file since its stored offset."""

    key: str
    offset: int
    first_line: int
    """Number (1-based) of ``lines[0]`` in its file."""
    lines: list[bytes]
    consumed: int
    """Bytes these lines take, newlines included (0 when only a torn line is there)."""
    torn: bool

    def commit_offset(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record these lines as read (call inside the transaction that stores them)."""
        con.execute(
            "INSERT INTO event_log_offsets (file, offset_b, lines) VALUES (?, ?, ?) "
            "ON CONFLICT (file) DO UPDATE SET offset_b = excluded.offset_b, lines = excluded.lines, "
            "updated_at = now()",
            [self.key, self.offset + self.consumed, self.first_line - 1 + len(self.lines)],
        )


@dataclass
class ParsedLines:
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)


def read_new_lines(con: duckdb.DuckDBPyConnection, path: Path, key: str) -> NewLines | None:
    """The lines of ``path`` after its stored offset (under ``key``); None when nothing was
    appended."""
    rows = con.execute("SELECT offset_b, lines FROM event_log_offsets WHERE file = ?", [key]).fetchall()
    offset, line_no = (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)
    size = path.stat().st_size
    if size < offset:
        offset, line_no = 0, 0
    if size == offset:
        return None
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(size - offset)
    complete, newline, tail = data.rpartition(b"\n")
    lines = complete.split(b"\n") if newline else []
    return NewLines(key, offset, line_no + 1, lines, len(complete) + 1 if newline else 0, bool(tail))


def parse_lines(
    new: NewLines,
    parse: Callable[[str, int], dict[str, Any]],
    *,
    table: str,
    source_file: str,
    what: str,
) -> ParsedLines:
    """Each non-blank line through ``parse(text, line_number)``; a ``ValueError`` quarantines
    the line for ``table`` with the rule "malformed <what>: <reason>"."""
    out = ParsedLines()
    for i, raw in enumerate(new.lines, start=new.first_line):
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        try:
            out.rows.append(parse(text, i))
        except ValueError as exc:
            rule = f"malformed {what}: {exc}"
            out.bad.append(
                {
                    "quarantine_id": quarantine_id(table, source_file, i, rule),
                    "table_name": table,
                    "source_file": source_file,
                    "row_number": i,
                    "rule": rule,
                    "payload": json.dumps({"line": text[:2000]}),
                }
            )
    return out


def quarantine_bad_lines(con: duckdb.DuckDBPyConnection, bad: list[dict[str, Any]]) -> None:
    """Insert the rows of :func:`parse_lines`' ``bad`` into ``quarantine`` (once each)."""
    if not bad:
        return
    con.register("bad_log_lines", pd.DataFrame(bad))
    try:
        con.execute(
            "INSERT INTO quarantine (quarantine_id, table_name, source_file, row_number, rule, payload) "
            "SELECT quarantine_id, table_name, source_file, row_number, rule, payload::JSON "
            "FROM bad_log_lines ON CONFLICT DO NOTHING"
        )
    finally:
        con.unregister("bad_log_lines")
