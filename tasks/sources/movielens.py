"""MovieLens in each of its real layouts, mapped to the one schema.

* ml-100k: ``u.data`` (tab: user, item, rating, timestamp) + ``u.item`` (pipe, latin-1,
  19 genre flags) + ``u.user``;
* ml-1m / ml-10m: ``ratings.dat`` + ``movies.dat`` (``::`` separated);
* ml-latest / ml-25m: ``ratings.csv`` + ``movies.csv`` (genres ``A|B``);
* RecBole atomic files: ``<name>.inter`` + ``<name>.item`` (+ ``.user``), headers ``field:type``.

Ratings become ``event_type="rating"`` with the rating as ``value``; genres become categories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.sources.common import (
    SourceData,
    SourceFormatError,
    finish_interactions,
    finish_items,
    out_of_range_rejects,
    read_delimited,
    require_columns,
    split_title_year,
    to_float,
    to_int,
)

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def detect_layout(directory: Path) -> str:
    """Name of the layout found in ``directory``; a clear error when none is."""
    if not directory.is_dir():
        raise SourceFormatError(f"MovieLens source {directory} is not a directory")
    if (directory / "u.data").exists():
        return "ml-100k"
    if (directory / "ratings.dat").exists():
        return "ml-1m"
    if (directory / "ratings.csv").exists():
        return "ml-latest"
    if list(directory.glob("*.inter")):
        return "atomic"
    raise SourceFormatError(
        f"{directory} holds no MovieLens data: expected u.data + u.item (ml-100k), "
        "ratings.dat + movies.dat (ml-1m), ratings.csv + movies.csv (ml-latest/ml-25m) "
        "or <name>.inter + <name>.item (RecBole atomic)"
    )


def read_movielens(directory: Path) -> SourceData:
    """Read whichever MovieLens layout ``directory`` holds."""
    layout = detect_layout(directory)
    reader = {"ml-100k": _read_100k, "ml-1m": _read_1m, "ml-latest": _read_latest, "atomic": _read_atomic}
    return reader[layout](directory)


def _ratings(raw: pd.DataFrame, user: str, item: str, rating: str, ts: str) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": raw[user],
            "item_id": raw[item],
            "value": to_float(raw[rating]),
            "ts": to_int(raw[ts]),
            "seq": raw["seq"],
            "row_number": raw["row_number"],
        }
    )
    return finish_interactions(df, event_type="rating")


def _read_100k(directory: Path) -> SourceData:
    data_path, item_path, user_path = directory / "u.data", directory / "u.item", directory / "u.user"
    raw, rej = read_delimited(
        data_path,
        table="interactions",
        sep="\t",
        header=False,
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    raw, bad_ts = out_of_range_rejects(raw, "timestamp", table="interactions", path=data_path)
    item_cols = ["item_id", "title", "release_date", "video_date", "url", *ML100K_GENRES]
    raw_items, rej_items = read_delimited(
        item_path, table="items", sep="|", header=False, names=item_cols, encoding="latin-1"
    )
    title, year = split_title_year(raw_items["title"])
    year = year.fillna(to_int(raw_items["release_date"].str[-4:]))
    flags = raw_items[ML100K_GENRES].apply(lambda c: c.str.strip() == "1")
    categories = [[g for g in ML100K_GENRES if row[g] and g != "unknown"] for _, row in flags.iterrows()]
    items = finish_items(
        pd.DataFrame(
            {
                "item_id": raw_items["item_id"],
                "title": title,
                "categories": categories,
                "year": year,
                "url": raw_items["url"].replace("", None),
                "row_number": raw_items["row_number"],
            }
        )
    )
    users = None
    files = {"interactions": data_path, "items": item_path}
    rejects = [rej, bad_ts, rej_items]
    if user_path.exists():
        raw_users, rej_users = read_delimited(
            user_path,
            table="users",
            sep="|",
            header=False,
            names=["user_id", "age", "gender", "occupation", "zip_code"],
        )
        users = _users(raw_users, ["age", "gender", "occupation", "zip_code"])
        files["users"] = user_path
        rejects.append(rej_users)
    return SourceData(
        "ml-100k",
        items,
        _ratings(raw, "user_id", "item_id", "rating", "timestamp"),
        users,
        files,
        pd.concat(rejects, ignore_index=True),
    )


def _read_1m(directory: Path) -> SourceData:
    data_path, item_path = directory / "ratings.dat", directory / "movies.dat"
    raw, rej = read_delimited(
        data_path,
        table="interactions",
        sep="::",
        header=False,
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    raw, bad_ts = out_of_range_rejects(raw, "timestamp", table="interactions", path=data_path)
    raw_items, rej_items = read_delimited(
        item_path,
        table="items",
        sep="::",
        header=False,
        names=["item_id", "title", "genres"],
        encoding="latin-1",
    )
    return SourceData(
        "ml-1m",
        _pipe_genre_items(raw_items),
        _ratings(raw, "user_id", "item_id", "rating", "timestamp"),
        None,
        {"interactions": data_path, "items": item_path},
        pd.concat([rej, bad_ts, rej_items], ignore_index=True),
    )


def _read_latest(directory: Path) -> SourceData:
    data_path, item_path = directory / "ratings.csv", directory / "movies.csv"
    raw, rej = read_delimited(data_path, table="interactions", sep=",", header=True)
    require_columns(raw, ["userId", "movieId", "rating", "timestamp"], data_path)
    raw, bad_ts = out_of_range_rejects(raw, "timestamp", table="interactions", path=data_path)
    raw_items, rej_items = read_delimited(item_path, table="items", sep=",", header=True)
    require_columns(raw_items, ["movieId", "title", "genres"], item_path)
    raw_items = raw_items.rename(columns={"movieId": "item_id"})
    return SourceData(
        "ml-latest",
        _pipe_genre_items(raw_items),
        _ratings(raw, "userId", "movieId", "rating", "timestamp"),
        None,
        {"interactions": data_path, "items": item_path},
        pd.concat([rej, bad_ts, rej_items], ignore_index=True),
    )


def _pipe_genre_items(raw: pd.DataFrame) -> pd.DataFrame:
    title, year = split_title_year(raw["title"])
    categories = [
        [g for g in str(s).split("|") if g and g != "(no genres listed)"] if isinstance(s, str) else []
        for s in raw["genres"]
    ]
    return finish_items(
        pd.DataFrame(
            {
                "item_id": raw["item_id"],
                "title": title,
                "categories": categories,
                "year": year,
                "row_number": raw["row_number"],
            }
        )
    )


def _atomic_frame(path: Path, table: str) -> pd.DataFrame:
    raw, rej = read_delimited(path, table=table, sep="\t", header=True)
    raw.columns = [c.split(":", 1)[0] if c not in ("row_number", "seq") else c for c in raw.columns]
    raw.attrs["rejects"] = rej
    return raw


def _first_present(df: pd.DataFrame, candidates: list[str]) -> str | None:
    return next((c for c in candidates if c in df.columns), None)


def _read_atomic(directory: Path) -> SourceData:
    inter_path = sorted(directory.glob("*.inter"))[0]
    stem = inter_path.stem
    item_path, user_path = directory / f"{stem}.item", directory / f"{stem}.user"
    raw = _atomic_frame(inter_path, "interactions")
    require_columns(raw, ["user_id", "item_id"], inter_path)
    rating = _first_present(raw, ["rating", "value", "label"])
    ts = _first_present(raw, ["timestamp", "ts", "time"])
    if ts is None:
        raise SourceFormatError(f"{inter_path}: no timestamp column (expected timestamp:float)")
    if rating is None:
        raw["rating"] = "1"
        rating = "rating"
    parse_rejects = raw.attrs["rejects"]
    raw, bad_ts = out_of_range_rejects(raw, ts, table="interactions", path=inter_path)
    interactions = _ratings(raw, "user_id", "item_id", rating, ts)
    rejects = [parse_rejects, bad_ts]
    files = {"interactions": inter_path}
    if not item_path.exists():
        raise SourceFormatError(f"{directory}: {inter_path.name} has no matching {item_path.name}")
    raw_items = _atomic_frame(item_path, "items")
    require_columns(raw_items, ["item_id"], item_path)
    title_col = _first_present(raw_items, ["movie_title", "title", "name"])
    year_col = _first_present(raw_items, ["release_year", "year"])
    cat_col = _first_present(raw_items, ["class", "genre", "genres", "categories"])
    titles = raw_items[title_col] if title_col else pd.Series([None] * len(raw_items))
    title, year_from_title = split_title_year(titles)
    year = to_int(raw_items[year_col]) if year_col else year_from_title
    categories = (
        [s.split() if isinstance(s, str) else [] for s in raw_items[cat_col]]
        if cat_col
        else [[] for _ in range(len(raw_items))]
    )
    items = finish_items(
        pd.DataFrame(
            {
                "item_id": raw_items["item_id"],
                "title": title,
                "categories": categories,
                "year": year,
                "row_number": raw_items["row_number"],
            }
        )
    )
    rejects.append(raw_items.attrs["rejects"])
    files["items"] = item_path
    users = None
    if user_path.exists():
        raw_users = _atomic_frame(user_path, "users")
        users = _users(raw_users, [c for c in raw_users.columns if c not in ("user_id", "row_number", "seq")])
        files["users"] = user_path
        rejects.append(raw_users.attrs["rejects"])
    return SourceData(stem, items, interactions, users, files, pd.concat(rejects, ignore_index=True))


def _users(raw: pd.DataFrame, attribute_columns: list[str]) -> pd.DataFrame:
    attrs = [json.dumps({c: row[c] for c in attribute_columns}) for _, row in raw.iterrows()]
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].astype("string").str.strip(),
            "attributes": attrs,
            "row_number": raw["row_number"],
        }
    )
