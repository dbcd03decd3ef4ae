"""Book catalogues: Goodbooks-10k's layout, or a generic books CSV.

Goodbooks-10k (``path`` = ``ratings.csv``, ``items_path`` = ``books.csv``, or ``books.csv``
found beside the ratings): ``ratings.csv`` is ``user_id,book_id,rating`` (1-5 stars, no
time); ``books.csv`` is ``book_id, goodreads_book_id, best_book_id, work_id, books_count,
isbn, isbn13, authors, original_publication_year, original_title, title, language_code,
average_rating, ratings_count, work_ratings_count, work_text_reviews_count, ratings_1 ..
ratings_5, image_url, small_image_url``. When ``book_tags.csv`` (``goodreads_book_id,
tag_id, count``) and ``tags.csv`` (``tag_id, tag_name``) lie beside ``books.csv``, a book's
most-used tags (shelf names such as ``to-read`` left out) are its categories.

A generic books CSV needs ``book_id`` (or ``item_id``) and ``title``; ``authors``
(``A, B`` or ``A|B``), ``categories`` or ``genres`` (``A|B``), ``description``, ``year``
(or ``original_publication_year``), ``url`` are used when present, and every other column
whose values are numbers (``average_rating``, ``pages``, ``price`` ...) is numeric metadata.
Its ratings need ``user_id``, ``book_id`` (or ``item_id``), ``rating``; a ``timestamp`` (Unix
seconds) is optional.

Without a time, ratings keep ``ts`` 0 and their order in the file (``seq``): the last line of
a user is the held-out one. Authors and numeric metadata go to ``SourceData.item_attributes``
(warehouse table ``item_attributes``), which ``models/side_features.py`` turns into the
two-tower's side features.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.sources.common import (
    SourceData,
    SourceFormatError,
    finish_interactions,
    finish_items,
    out_of_range_rejects,
    read_delimited,
    require_columns,
    to_float,
    to_int,
)

GOODBOOKS_NUMERIC = [
    "books_count",
    "original_publication_year",
    "average_rating",
    "ratings_count",
    "work_ratings_count",
    "work_text_reviews_count",
    "ratings_1",
    "ratings_2",
    "ratings_3",
    "ratings_4",
    "ratings_5",
]
"""Goodbooks columns that are numeric metadata (ids, ISBNs and image URLs are not)."""
NOT_NUMERIC = {
    "book_id",
    "item_id",
    "goodreads_book_id",
    "best_book_id",
    "work_id",
    "isbn",
    "isbn13",
    "row_number",
    "seq",
}
TEXT_COLUMNS = {
    "title",
    "original_title",
    "authors",
    "categories",
    "genres",
    "description",
    "url",
    "image_url",
    "small_image_url",
    "language_code",
}
SHELF_TAGS = {
    "to-read",
    "currently-reading",
    "favorites",
    "favourites",
    "owned",
    "books-i-own",
    "owned-books",
    "default",
    "library",
    "my-books",
    "kindle",
    "ebook",
    "ebooks",
    "to-buy",
    "wish-list",
    "re-read",
    "audiobook",
    "audiobooks",
}
"""Goodreads shelves that say what a reader did, not what a book is: never categories."""
TAGS_PER_BOOK = 5
NUMERIC_SHARE = 0.9
"""A generic column is numeric metadata when at least this share of its non-empty values parse."""


def split_authors(value: Any) -> list[str]:
    """``"J.K. Rowling, Mary GrandPré"`` or ``"A|B"`` → the names, trimmed, in order."""
    if not isinstance(value, str) or not value.strip():
        return []
    sep = "|" if "|" in value else ","
    return list(dict.fromkeys(a.strip() for a in value.split(sep) if a.strip()))


def _id_column(df: pd.DataFrame, path: Path) -> str:
    for col in ("book_id", "item_id"):
        if col in df.columns:
            return col
    raise SourceFormatError(
        f"{path}: no book id column; expected book_id (or item_id), found {list(df.columns)}"
    )


def _numeric_columns(raw: pd.DataFrame) -> list[str]:
    if "goodreads_book_id" in raw.columns:
        return [c for c in GOODBOOKS_NUMERIC if c in raw.columns]
    out = []
    for col in raw.columns:
        if col in NOT_NUMERIC or col in TEXT_COLUMNS or col in ("timestamp", "ts"):
            continue
        values = raw[col].dropna()
        values = values[values.astype(str).str.strip() != ""]
        if len(values) and pd.to_numeric(values, errors="coerce").notna().mean() >= NUMERIC_SHARE:
            out.append(col)
    return out


def _tags(books_path: Path) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """goodreads_book_id → its most-used non-shelf tags (``book_tags.csv`` + ``tags.csv``)."""
    book_tags_path, tags_path = books_path.parent / "book_tags.csv", books_path.parent / "tags.csv"
    if not (book_tags_path.is_file() and tags_path.is_file()):
        return {}, pd.DataFrame()
    book_tags, rej_bt = read_delimited(book_tags_path, table="book_tags", sep=",", header=True)
    tags, rej_t = read_delimited(tags_path, table="tags", sep=",", header=True)
    require_columns(book_tags, ["goodreads_book_id", "tag_id", "count"], book_tags_path)
    require_columns(tags, ["tag_id", "tag_name"], tags_path)
    names = dict(zip(tags["tag_id"].str.strip(), tags["tag_name"].str.strip().str.lower(), strict=True))
    frame = pd.DataFrame(
        {
            "book": book_tags["goodreads_book_id"].str.strip(),
            "tag": book_tags["tag_id"].str.strip().map(names),
            "count": to_float(book_tags["count"]),
        }
    ).dropna()
    frame = frame[~frame["tag"].isin(SHELF_TAGS) & (frame["count"] > 0)]
    frame = frame.sort_values(["book", "count", "tag"], ascending=[True, False, True], kind="stable")
    top = frame.groupby("book", sort=False).head(TAGS_PER_BOOK)
    by_book = {str(b): list(g["tag"]) for b, g in top.groupby("book", sort=False)}
    # tag files' unparseable lines are quarantined with the items
    rejects = pd.concat([rej_bt, rej_t], ignore_index=True).assign(table="items")
    return by_book, rejects


def _number_or_none(value: Any) -> float | None:
    """A finite float, else None (JSON has no NaN or infinity)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


def read_books_items(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``books.csv`` → (items in the one schema, item attributes, rejects)."""
    raw, rejects = read_delimited(path, table="items", sep=",", header=True)
    id_col = _id_column(raw, path)
    require_columns(raw, [id_col, "title"], path)
    goodbooks = "goodreads_book_id" in raw.columns
    authors = [split_authors(a) for a in (raw["authors"] if "authors" in raw.columns else [None] * len(raw))]
    if goodbooks:
        tags, tag_rejects = _tags(path)
        categories = [tags.get(str(g).strip(), []) for g in raw["goodreads_book_id"]]
        urls = "https://www.goodreads.com/book/show/" + raw["goodreads_book_id"].str.strip()
    else:
        tag_rejects = pd.DataFrame()
        cat_col = next((c for c in ("categories", "genres") if c in raw.columns), None)
        categories = [
            [c.strip() for c in v.split("|") if c.strip()] if isinstance(v, str) else []
            for v in (raw[cat_col] if cat_col else [None] * len(raw))
        ]
        urls = raw["url"] if "url" in raw.columns else pd.Series([None] * len(raw))
    year_col = next((c for c in ("year", "original_publication_year") if c in raw.columns), None)
    titles = raw["title"].str.strip()
    if "description" in raw.columns:
        descriptions = raw["description"]
    else:  # Goodbooks has no blurb: the text is who wrote it and what readers tag it as
        descriptions = pd.Series(
            [
                "; ".join(
                    p
                    for p in (
                        f"{t} by {', '.join(a)}" if a else t,
                        f"tags: {', '.join(c)}" if c else "",
                        f"original title: {o}" if isinstance(o, str) and o.strip() and o.strip() != t else "",
                    )
                    if p
                )
                if isinstance(t, str)
                else None
                for t, a, c, o in zip(
                    titles,
                    authors,
                    categories,
                    raw["original_title"] if "original_title" in raw.columns else [None] * len(raw),
                    strict=True,
                )
            ]
        )
    items = finish_items(
        pd.DataFrame(
            {
                "item_id": raw[id_col],
                "title": titles.where(titles != "", None),
                "categories": categories,
                "year": to_float(raw[year_col]).where(lambda s: s.abs() < 1e5).round().astype("Int64")
                if year_col
                else None,
                "description": descriptions,
                "url": urls,
                "row_number": raw["row_number"],
            }
        )
    )
    numeric = {c: to_float(raw[c]) for c in _numeric_columns(raw)}
    attributes = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "attributes": [
                {
                    "authors": authors[i],
                    "numeric": {c: _number_or_none(v.iloc[i]) for c, v in numeric.items()},
                }
                for i in range(len(raw))
            ],
        }
    )
    all_rejects = pd.concat([r for r in (rejects, tag_rejects) if len(r)] or [rejects], ignore_index=True)
    return items, attributes, all_rejects


def _not_a_number_rejects(raw: pd.DataFrame, column: str, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows whose ``column`` is given but no number (``five``): a rating NULL would pass as an
    implicit event, so they are rejected here under ``parse:not-a-number(<column>)``."""
    text = raw[column].fillna("").astype(str).str.strip()
    bad = (text != "") & pd.to_numeric(text, errors="coerce").isna()
    if not bad.any():
        return raw, pd.DataFrame()
    fields = [c for c in raw.columns if c not in ("row_number", "seq")]
    rejected = raw[bad]
    rejects = pd.DataFrame(
        {
            "table": "interactions",
            "source_file": str(path),
            "row_number": rejected["row_number"].astype("int64").to_numpy(),
            "rule": f"parse:not-a-number({column})",
            "payload": [
                {column: str(row[column]), "row": {f: _text(row[f]) for f in fields}}
                for row in rejected.to_dict("records")
            ],
        }
    )
    return raw[~bad].reset_index(drop=True), rejects


def _text(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def read_books(path: Path, items_path: Path | None) -> SourceData:
    """Ratings (``path``) and books (``items_path``, default ``books.csv`` beside the ratings)."""
    if path.is_dir():
        path = path / "ratings.csv"
    books_path = items_path if items_path is not None else path.parent / "books.csv"
    if not path.is_file():
        raise SourceFormatError(
            f"books ratings file {path} does not exist (expected ratings.csv: user_id,book_id,rating)"
        )
    if not books_path.is_file():
        raise SourceFormatError(
            f"books file {books_path} does not exist: set RECFLOW_SOURCE__ITEMS_PATH to the books CSV "
            "(book_id, title, ...)"
        )
    items, attributes, item_rejects = read_books_items(books_path)
    raw, rejects = read_delimited(path, table="interactions", sep=",", header=True)
    id_col = _id_column(raw, path)
    require_columns(raw, ["user_id", id_col, "rating"], path)
    raw, bad_rating = _not_a_number_rejects(raw, "rating", path)
    ts_col = next((c for c in ("timestamp", "ts") if c in raw.columns), None)
    bad_ts = pd.DataFrame()
    if ts_col is not None:
        raw, bad_ts = out_of_range_rejects(raw, ts_col, table="interactions", path=path)
    interactions = finish_interactions(
        pd.DataFrame(
            {
                "user_id": raw["user_id"],
                "item_id": raw[id_col],
                "value": to_float(raw["rating"]),
                "ts": to_int(raw[ts_col]) if ts_col else pd.Series(0, index=raw.index, dtype="Int64"),
                "seq": raw["seq"],
                "row_number": raw["row_number"],
            }
        ),
        event_type="rating",
    )
    parts = [r for r in (item_rejects, rejects, bad_rating, bad_ts) if len(r)]
    all_rejects = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["table", "source_file", "row_number", "rule", "payload"])
    )
    return SourceData(
        books_path.parent.name or "books",
        items,
        interactions,
        None,
        {"interactions": path, "items": books_path},
        all_rejects,
        item_attributes=attributes,
    )
