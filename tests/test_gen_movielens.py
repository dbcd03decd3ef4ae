"""The ML-25M-shaped generator writes ML-25M's layout with its shape."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tasks.sources.movielens import detect_layout
from tasks.synthetic_movielens import FULL_ITEMS, FULL_USERS, GENRES, generate, main, shape_for


def test_layout_and_shape(tmp_path: Path) -> None:
    shape = generate(50_000, tmp_path, seed=1)
    assert detect_layout(tmp_path) == "ml-latest"
    with (tmp_path / "ratings.csv").open() as fh:
        assert fh.readline() == "userId,movieId,rating,timestamp\n"
    with (tmp_path / "movies.csv").open() as fh:
        assert fh.readline() == "movieId,title,genres\n"
    con = duckdb.connect()
    r = "read_csv('" + str(tmp_path / "ratings.csv") + "', header = true)"
    m = "read_csv('" + str(tmp_path / "movies.csv") + "', header = true, quote = '\"')"
    n, users, items, pairs, min_per_user, bad_rating = con.execute(
        f"""SELECT count(*), count(DISTINCT userId), count(DISTINCT movieId),
                   count(DISTINCT (userId, movieId)),
                   (SELECT min(c) FROM (SELECT count(*) c FROM {r} GROUP BY userId)),
                   count(*) FILTER (WHERE rating * 2 <> round(rating * 2) OR rating < 0.5 OR rating > 5)
            FROM {r}"""
    ).fetchall()[0]
    assert n == shape.ratings == 50_000
    assert users == shape.users and pairs == n and min_per_user >= 20 and bad_rating == 0
    assert items <= shape.items
    # ML-25M's order: by user, then movie
    assert (
        con.execute(
            f"SELECT count(*) FROM (SELECT userId, movieId, lag(userId) OVER () pu, lag(movieId) OVER () pm "
            f"FROM {r}) WHERE pu IS NOT NULL AND (userId, movieId) < (pu, pm)"
        ).fetchall()[0][0]
        == 0
    )
    # long tail: the top 1 % of movies hold far more than 1 % of the ratings
    top = con.execute(
        f"SELECT sum(c) / {n} FROM (SELECT count(*) c FROM {r} GROUP BY movieId ORDER BY c DESC "
        f"LIMIT {max(1, shape.items // 100)})"
    ).fetchall()[0][0]
    assert top > 0.08
    titles = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE title LIKE '%,%'), min(genres) FROM {m}"
    ).fetchall()
    assert titles[0][0] == shape.items and titles[0][1] > 0
    genres = {g for (s,) in con.execute(f"SELECT genres FROM {m}").fetchall() for g in s.split("|")}
    assert genres <= set(GENRES)


def test_seeded_and_scaled(tmp_path: Path) -> None:
    generate(5_000, tmp_path / "a", seed=4)
    generate(5_000, tmp_path / "b", seed=4)
    assert (tmp_path / "a" / "ratings.csv").read_bytes() == (tmp_path / "b" / "ratings.csv").read_bytes()
    full = shape_for(25_000_095)
    assert (full.users, full.items) == (FULL_USERS, FULL_ITEMS)
    assert shape_for(1_000_000).users < shape_for(5_000_000).users < full.users
    with pytest.raises(ValueError, match="at least 1000"):
        shape_for(10)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--ratings", "2000", "--out", str(tmp_path)])
    assert "2,000 ratings" in capsys.readouterr().out


def test_recflow_data_generate_movielens(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deployments.cli import app

    result = CliRunner().invoke(
        app, ["data", "generate-movielens", "--ratings", "3000", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "3,000 ratings" in result.output
    assert detect_layout(tmp_path) == "ml-latest"
    bad = CliRunner().invoke(app, ["data", "generate-movielens", "--ratings", "5", "--out", str(tmp_path)])
    assert bad.exit_code != 0
