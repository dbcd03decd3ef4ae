"""Generate MovieLens-25M-shaped data in ML-25M's own layout (``ratings.csv`` + ``movies.csv``).

Run as ``recflow data generate-movielens --ratings 5000000 --out var/bench/scale/5m``, or::

    .venv/bin/python -m tasks.synthetic_movielens --ratings 5000000 --out var/bench/scale/5m

Why it exists: the README's figures are on MovieLens-100K, and the nightly has to be measured
at the sizes people run (millions of ratings) on any machine, without a download. The files
are written exactly as GroupLens ships ML-25M (header ``userId,movieId,rating,timestamp``,
rows ordered by user then movie, half-star ratings; ``movieId,title,genres`` with ``A|B``
genres and quoted titles that hold commas), so the real ML-25M directory drops in where it
can be downloaded and the same catalogue setting reads either.

Shape, scaled by ``--ratings`` (25M gives ML-25M's ≈162k users and ≈62k movies): users grow
linearly with the ratings, movies with their square root; every user has ≥ 20 ratings and a
long-tailed (log-normal) count; movie popularity is Zipf-like; each user's taste is a mix
over the 19 genres that drifts from a start mix to an end mix along their history (so
sequence order carries signal); timestamps are increasing per user. Vectorised numpy,
written in chunks of whole users, seeded: the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

FULL_RATINGS = 25_000_095
FULL_USERS = 162_541
FULL_ITEMS = 62_423
MIN_PER_USER = 20
GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
_WORDS_A = [
    "Silent", "Red", "Last", "Broken", "Golden", "Hidden", "Lost", "Wild", "Dark", "Bright",
    "Cold", "Secret", "Final", "Burning", "Distant", "Empty", "Little", "Long", "Midnight", "Savage",
]  # fmt: skip
_WORDS_B = [
    "River", "City", "Garden", "Road", "Winter", "Sky", "House", "Summer", "Island", "Mirror",
    "Train", "Harbor", "Storm", "Forest", "Station", "Valley", "Empire", "Shadow", "Letter", "Dream",
]  # fmt: skip
_RATING_TEXT = pa.array([f"{r / 2:.1f}" for r in range(1, 11)])  # "0.5" … "5.0", as ML writes them
_T0 = 820_454_400  # 1996-01-01
_T1 = 1_569_888_000  # 2019-10-01 (ML-25M's last rating is from late 2019)


@dataclass(frozen=True)
class Shape:
    ratings: int
    users: int
    items: int


def shape_for(ratings: int) -> Shape:
    """Users and movies for ``ratings`` ratings: ML-25M's at full size, users linear, movies
    with the square root of the ratio (smaller MovieLens releases are denser, like this)."""
    if ratings < 1_000:
        raise ValueError(f"--ratings must be at least 1000, got {ratings}")
    ratio = ratings / FULL_RATINGS
    items = max(50, round(FULL_ITEMS * ratio**0.5))
    # small sizes: enough users that nobody needs more than an eighth of the catalogue
    users = max(10, round(FULL_USERS * ratio), -(-ratings // max(1, items // 8)))
    users = min(users, ratings // MIN_PER_USER)
    return Shape(ratings, users, items)


def _per_user_counts(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Long-tailed ratings per user, each ≥ 20 (and ≤ a quarter of the catalogue), summing to
    the requested total as closely as the caps allow."""
    cap = max(MIN_PER_USER, shape.items // 4)
    w = rng.lognormal(mean=0.0, sigma=1.2, size=shape.users)
    extra = shape.ratings - MIN_PER_USER * shape.users
    counts = MIN_PER_USER + np.floor(w / w.sum() * extra).astype(np.int64)
    counts = np.minimum(counts, cap)
    short = shape.ratings - int(counts.sum())
    room = np.flatnonzero(counts < cap)
    while short > 0 and len(room):
        take = rng.choice(room, size=min(short, len(room)), replace=False)
        counts[take] += 1
        short -= len(take)
        room = np.flatnonzero(counts < cap)
    return counts


def write_movies(rng: np.random.Generator, n_items: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``movies.csv``; returns each movie's primary genre and its popularity weight."""
    primary = rng.integers(0, len(GENRES), size=n_items)
    second = rng.integers(0, len(GENRES), size=n_items)
    has_second = rng.random(n_items) < 0.55
    year = rng.integers(1920, 2020, size=n_items)
    a = rng.integers(0, len(_WORDS_A), size=n_items)
    b = rng.integers(0, len(_WORDS_B), size=n_items)
    # Zipf-like popularity over a random permutation of ids, so id order says nothing.
    rank = rng.permutation(n_items)
    popularity = 1.0 / (rank + 10.0) ** 1.1
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["movieId", "title", "genres"])
        for i in range(n_items):
            name = f"{_WORDS_A[a[i]]} {_WORDS_B[b[i]]}"
            if i % 7 == 0:
                name = f"{name}, The"  # a comma: quoted, as in ML's "American President, The (1995)"
            genres = [GENRES[primary[i]]]
            if has_second[i] and second[i] != primary[i]:
                genres.append(GENRES[second[i]])
            out.writerow([i + 1, f"{name} {i + 1} ({year[i]})", "|".join(genres)])
    return primary, popularity


def _genre_samplers(primary: np.ndarray, popularity: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per genre: its movies and their cumulative popularity (for inverse-CDF sampling)."""
    out = []
    for g in range(len(GENRES)):
        members = np.flatnonzero(primary == g)
        if len(members) == 0:  # tiny catalogues: borrow the whole catalogue
            members = np.arange(len(primary))
        cum = np.cumsum(popularity[members])
        out.append((members, cum / cum[-1]))
    return out


def _draw(
    rng: np.random.Generator,
    users: np.ndarray,
    want: np.ndarray,
    cum0: np.ndarray,
    cum1: np.ndarray,
    samplers: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``want[i]`` picks for ``users[i]``: a genre from the user's taste at that point of the
    history (the end mix more likely later on), then a movie of that genre by popularity."""
    user = np.repeat(users, want)
    first = np.repeat(np.cumsum(want) - want, want)
    frac = (np.arange(len(user)) - first) / np.repeat(want, want)
    late = rng.random(len(user)) < frac
    u = rng.random(len(user), dtype=np.float32)
    cum = np.where(late[:, None], cum1[user], cum0[user])
    genre = np.minimum((cum < u[:, None]).sum(axis=1), len(samplers) - 1)
    del cum
    item = np.empty(len(user), dtype=np.int64)
    r = rng.random(len(user))
    for g, (members, gcum) in enumerate(samplers):
        at = np.flatnonzero(genre == g)
        if len(at):
            item[at] = members[np.minimum(np.searchsorted(gcum, r[at]), len(members) - 1)]
    return user, item, frac


def _picks(
    rng: np.random.Generator,
    users: np.ndarray,
    counts: np.ndarray,
    n_items: int,
    cum0: np.ndarray,
    cum1: np.ndarray,
    samplers: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's ``counts`` distinct movies (user, movie, position in history in [0, 1)),
    sorted by user: taste-driven picks, repeats dropped, a user still short after a few
    rounds topped up with uniformly drawn movies (the catalogue's tail)."""
    user = np.zeros(0, np.int64)
    item = np.zeros(0, np.int64)
    frac = np.zeros(0, np.float64)
    need = counts[users].astype(np.int64)
    for round_ in range(6):
        short = need > 0
        if not short.any():
            break
        who, k = users[short], need[short]
        if round_ < 3:
            nu, ni, nf = _draw(rng, who, np.ceil(k * 1.3).astype(np.int64) + 2, cum0, cum1, samplers)
        else:
            nu = np.repeat(who, k * 2)
            ni = rng.integers(0, n_items, size=len(nu))
            nf = rng.random(len(nu))
        user, item, frac = np.concatenate([user, nu]), np.concatenate([item, ni]), np.concatenate([frac, nf])
        _, keep = np.unique(user * n_items + item, return_index=True)  # first pick of each pair
        keep.sort()
        user, item, frac = user[keep], item[keep], frac[keep]
        order = np.argsort(user, kind="stable")
        user, item, frac = user[order], item[order], frac[order]
        starts = np.searchsorted(user, users)
        sizes = np.diff(np.append(starts, len(user)))
        rank = np.arange(len(user)) - np.repeat(starts, sizes)
        ok = rank < counts[user]
        user, item, frac = user[ok], item[ok], frac[ok]
        need = counts[users] - np.minimum(sizes, counts[users])
    return user, item, frac


def generate(ratings: int, out: Path, *, seed: int = 0, chunk_ratings: int = 1_000_000) -> Shape:
    """Write ``ratings.csv`` and ``movies.csv`` under ``out``; returns the shape written
    (its ``ratings`` is the exact row count: a user's repeated picks are dropped)."""
    shape = shape_for(ratings)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    primary, popularity = write_movies(rng, shape.items, out / "movies.csv")
    samplers = _genre_samplers(primary, popularity)
    quality = rng.normal(0.0, 0.6, size=shape.items)
    counts = _per_user_counts(rng, shape)
    # Taste: a sparse mix over genres at the start of a history and another at its end.
    taste0 = rng.dirichlet(np.full(len(GENRES), 0.3), size=shape.users)
    taste1 = rng.dirichlet(np.full(len(GENRES), 0.3), size=shape.users)
    cum0 = np.cumsum(taste0, axis=1).astype(np.float32)
    cum1 = np.cumsum(taste1, axis=1).astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=shape.users)
    start = rng.integers(_T0, _T1 - 86_400, size=shape.users)
    span = np.minimum(rng.lognormal(np.log(90 * 86_400), 1.5, size=shape.users), _T1 - start)

    ends = np.cumsum(counts)
    written = 0
    schema = pa.schema(
        [
            ("userId", pa.int64()),
            ("movieId", pa.int64()),
            ("rating", pa.dictionary(pa.int8(), pa.string())),
            ("timestamp", pa.int64()),
        ]
    )
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with (out / "ratings.csv").open("wb") as fh:
        fh.write(b"userId,movieId,rating,timestamp\n")  # unquoted, as GroupLens writes it
    with (
        (out / "ratings.csv").open("ab") as fh,
        pacsv.CSVWriter(fh, schema, write_options=options) as writer,
    ):
        lo = 0
        while lo < shape.users:
            # whole users per chunk, about chunk_ratings ratings each
            base = int(ends[lo - 1]) if lo else 0
            hi = int(np.searchsorted(ends, base + chunk_ratings, side="right"))
            hi = max(hi, lo + 1)
            users = np.arange(lo, hi)
            user, item, frac = _picks(rng, users, counts, shape.items, cum0, cum1, samplers)
            ts = start[user] + (frac * span[user]).astype(np.int64) + rng.integers(0, 600, len(user))
            score = 3.5 + quality[item] + bias[user] + rng.normal(0.0, 0.8, len(user))
            half = np.clip(np.rint(score * 2), 1, 10).astype(np.int8) - 1
            order = np.lexsort((item, user))  # ML-25M's file order: user, then movie
            table = pa.table(
                {
                    "userId": user[order] + 1,
                    "movieId": item[order] + 1,
                    "rating": pa.DictionaryArray.from_arrays(pa.array(half[order]), _RATING_TEXT),
                    "timestamp": ts[order],
                },
                schema=schema,
            )
            writer.write_table(table)
            written += len(user)
            lo = hi
    return Shape(written, shape.users, shape.items)


def append_ratings(directory: Path, ratings: int, *, seed: int = 1) -> int:
    """Append ``ratings`` new ratings to ``directory/ratings.csv``: the next day's events.

    Known users (nine in ten rows) and new ones, movies by a Zipf-like popularity, all dated
    after the file's last timestamp, so the appended rows are what a second night sees as new.
    Returns the rows appended (repeated (user, movie) picks are dropped)."""
    import duckdb

    path = directory / "ratings.csv"
    with duckdb.connect() as con:
        users, items, last = con.execute(
            "SELECT max(userId), (SELECT max(movieId) FROM read_csv($movies)), max(timestamp) "
            "FROM read_csv($ratings)",
            {"movies": str(directory / "movies.csv"), "ratings": str(path)},
        ).fetchall()[0]
    rng = np.random.default_rng(seed)
    known = rng.random(ratings) < 0.9
    new_users = max(1, ratings // 40)
    user = np.where(
        known, rng.integers(1, users + 1, ratings), users + 1 + rng.integers(0, new_users, ratings)
    )
    rank = rng.permutation(items)
    weight = 1.0 / (rank + 10.0) ** 1.1
    item = rng.choice(items, size=ratings, p=weight / weight.sum()) + 1
    _, keep = np.unique(user * (items + 1) + item, return_index=True)
    keep.sort()
    user, item = user[keep], item[keep]
    ts = last + 1 + np.sort(rng.integers(0, 86_400, len(user)))
    half = rng.integers(1, 11, len(user))
    with path.open("ab") as fh:
        fh.write(
            "".join(
                f"{u},{i},{h / 2:.1f},{t}\n" for u, i, h, t in zip(user, item, half, ts, strict=True)
            ).encode()
        )
    return len(user)


def main(argv: list[str] | None = None) -> Shape:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.synthetic_movielens", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--ratings", type=int, default=1_000_000, help="ratings to generate (1M … 25M)")
    parser.add_argument("--out", type=Path, required=True, help="directory for ratings.csv + movies.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    shape = generate(args.ratings, args.out, seed=args.seed)
    print(
        f"{shape.ratings:,} ratings by {shape.users:,} users on {shape.items:,} movies "
        f"→ {args.out} in {time.perf_counter() - t0:.1f} s"
    )
    return shape


if __name__ == "__main__":
    main()
