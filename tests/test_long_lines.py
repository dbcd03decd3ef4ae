"""An over-long line in a CSV export is one rejected row with its true line number.

DuckDB's sniffer read the sample, met the 3 MB line and failed the whole file as
"CSV Error on Line: 1"; the adapter now sniffs the header alone, so the line is quarantined
as line 1,001 and every other row loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.sources import SourceFormatError
from tasks.sources.common import MAX_LINE_BYTES, read_delimited
from tasks.sources.tabular import read_tabular


def _csv(
    path: Path, long_at: int, rows: int = 1010, header: str = "user_id,item_id,rating,timestamp"
) -> Path:
    lines = [header] + [f"{u},{u % 7},4,{880_000_000 + u}" for u in range(1, rows)]
    lines.insert(long_at - 1, "999999,5,4," + "9" * (MAX_LINE_BYTES + 1_000_000))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("long_at", [2, 1001])
def test_over_long_line_is_rejected_under_its_own_line_number(tmp_path: Path, long_at: int) -> None:
    data = read_tabular(_csv(tmp_path / "events.csv", long_at))
    assert data.rejects["row_number"].tolist() == [long_at]
    assert data.rejects["rule"].tolist() == ["parse:LINE SIZE OVER MAXIMUM"]
    assert len(data.interactions) == 1009  # every other row
    numbers = data.interactions["row_number"].tolist()
    assert long_at not in numbers and numbers == sorted(numbers) and numbers[-1] == 1011


def test_header_names_are_the_ones_duckdb_gives(tmp_path: Path) -> None:
    """Sniffing the header alone names columns as a whole-file sniff did: trimmed, quoted
    names kept, duplicates suffixed; a UTF-8 BOM and CRLF line ends are understood."""
    path = tmp_path / "export.csv"
    path.write_bytes(b'\xef\xbb\xbf user_id ,item_id,"time stamp",item_id\r\n1,2,880000000,x\r\n')
    rows, rejects = read_delimited(path, table="interactions", sep=",", header=True)
    assert rejects.empty
    assert list(rows.columns) == ["user_id", "item_id", "time stamp", "item_id_1", "row_number", "seq"]
    assert rows.iloc[0, :4].tolist() == ["1", "2", "880000000", "x"]


def test_over_long_header_names_line_one(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("user_id," + "x" * (MAX_LINE_BYTES + 10) + "\n1,2\n")
    with pytest.raises(SourceFormatError, match="line 1, the header"):
        read_tabular(path)
