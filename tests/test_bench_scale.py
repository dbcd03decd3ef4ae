"""``bench_scale --data-only`` at a tiny size: per-stage seconds and memory, full and +1 % night."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_resume_keeps_the_sizes_already_measured(tmp_path: Path) -> None:
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    common = ["--data-only", "--cache", str(tmp_path / "cache"), "--work", str(tmp_path / "w")]
    common += ["--out", str(out), "--plot", str(png)]
    main(["--sizes", "5000", *common])
    first = json.loads(out.read_text())["sizes"]
    results = main(["--sizes", "3000", "5000", "--resume", *common])
    sizes = json.loads(out.read_text())["sizes"]
    assert [s["requested"] for s in sizes] == [3000, 5000] == [r["requested"] for r in results]
    assert sizes[1] == first[0]  # 5000 not run again: the same measurement, not a new one
    # without --resume every size is measured again
    main(["--sizes", "5000", *common])
    (again,) = json.loads(out.read_text())["sizes"]
    assert again["full"] != first[0]["full"]


def test_resume_from_joins_sizes_measured_by_separate_commands(tmp_path: Path) -> None:
    common = ["--data-only", "--cache", str(tmp_path / "cache"), "--work", str(tmp_path / "w")]
    small, large, joined = tmp_path / "small.json", tmp_path / "large.json", tmp_path / "scale.json"
    main(["--sizes", "3000", *common, "--out", str(small), "--plot", str(tmp_path / "s.png")])
    main(["--sizes", "5000", *common, "--out", str(large), "--plot", str(tmp_path / "l.png")])
    png = tmp_path / "scale.png"
    main(
        [
            "--sizes",
            "3000",
            "5000",
            *common,
            "--resume-from",
            str(large),
            str(small),
            "--out",
            str(joined),
            "--plot",
            str(png),
        ]
    )
    sizes = json.loads(joined.read_text())["sizes"]
    assert sizes == json.loads(small.read_text())["sizes"] + json.loads(large.read_text())["sizes"]
    assert all(s["measured"]["load_average"] for s in sizes)  # when and under what load
    assert png.stat().st_size > 10_000


def test_resume_refuses_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    out.write_text('{"something": 1}')
    args = ["--sizes", "3000", "--data-only", "--work", str(tmp_path / "w")]
    with pytest.raises(SystemExit, match="not a bench_scale result file"):
        main([*args, "--resume", "--out", str(out)])
    with pytest.raises(SystemExit, match="does not exist"):
        main([*args, "--resume-from", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o.json")])


def test_resume_keeps_only_sizes_measured_with_the_same_embedding_settings(tmp_path: Path) -> None:
    from benchmarks.bench_scale import previous_results

    out = tmp_path / "scale.json"
    default = {"requested": 5000, "seed": 0, "mode": "nightly", "embedding": {}}
    old = {"requested": 3000, "seed": 0, "mode": "nightly"}  # written before the setting existed
    bf16 = {"requested": 5000, "seed": 0, "mode": "nightly", "embedding": {"precision": "bfloat16"}}
    out.write_text(json.dumps({"sizes": [default, old, bf16]}))
    assert previous_results(out, 0, False) == [default, old]
    assert previous_results(out, 0, False, embedding={"precision": "bfloat16"}) == [bf16]


def test_embedding_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--sizes", "3000", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit):
        main([*args, "--embedding-threads", "-1"])
    assert "--embedding-threads must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--embedding-precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_a_stage_shorter_than_the_sampling_period_still_reports_its_memory() -> None:
    """A stage between two samples (a tiny k-core on an idle machine) reads the last sample
    before its end: what it held, not 0."""
    from benchmarks.bench_scale import RssSampler

    sampler = RssSampler()
    sampler.samples = [(10.0, 100 * 2**20), (10.1, 120 * 2**20)]
    assert sampler.peak(10.02, 10.05) == 100 * 2**20
    assert sampler.peak(10.0, 10.1) == 120 * 2**20
    assert sampler.peak(5.0, 6.0) > 0, "before any sample: this process's memory now"
