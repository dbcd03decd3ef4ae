"""``bench_scale --data-only`` at a tiny size: per-stage seconds and memory, full and +1 % night."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_scale import main


def test_data_stages_full_then_incremental(tmp_path: Path) -> None:
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    dirs = ["--cache", str(tmp_path / "cache"), "--work", str(tmp_path / "w")]
    main(["--sizes", "20000", "--data-only", *dirs, "--out", str(out), "--plot", str(png)])
    (size,) = json.loads(out.read_text())["sizes"]
    assert size["ratings"] == 20_000 and size["mode"] == "data stages"
    for night in ("full", "incremental"):
        stages = size[night]["stages"]
        assert list(stages) == ["load-and-validate", "k-core", "split"]
        assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 0 for s in stages.values())
    assert size["incremental"]["new_rows"] > 150
    assert png.stat().st_size > 10_000
    assert (tmp_path / "cache" / "20000" / "shape.json").exists()  # cached for the next run
