"""A tiny CSV catalogue (36 readers, 24 films in three genres) and the ``recflow.toml`` that
points the nightly at it: small enough that a whole nightly trains in a second, real enough
that it goes through every stage (load, validate, k-core, split, train, evaluate, publish).

Shared by the wheel test (a newcomer's first nightly, outside the checkout) and the
reliability harness (``benchmarks/reliability.py``), which kills the nightly and the service
built on it.
"""

from __future__ import annotations

import random
from pathlib import Path

CATALOGUE = "tiny"


def write_tiny_catalogue(root: Path) -> tuple[Path, Path]:
    """36 readers and 24 films in three genres; each reader mostly watches one genre."""
    rng = random.Random(7)
    genres = ["Comedy", "Drama", "Sci-Fi"]
    items = ["item_id,title,categories,year"]
    for item in range(1, 25):
        genre = genres[(item - 1) // 8]
        items.append(f"{item},{genre} story number {item},{genre},{1990 + item}")
    rows = ["user_id,item_id,rating,timestamp"]
    for user in range(1, 37):
        liked = list(range(1 + 8 * (user % 3), 9 + 8 * (user % 3)))
        picks = [*rng.sample(liked, 6), rng.randint(1, 24)]
        for step, item in enumerate(dict.fromkeys(picks)):
            rows.append(f"{user},{item},{rng.choice([4, 5])},{880_000_000 + 3600 * (user * 10 + step)}")
    interactions, item_file = root / "interactions.csv", root / "items.csv"
    interactions.write_text("\n".join(rows) + "\n")
    item_file.write_text("\n".join(items) + "\n")
    return interactions, item_file


def write_config(root: Path, interactions: Path, items: Path) -> Path:
    """``root/recflow.toml``: the ``tiny`` catalogue read from the two CSV files."""
    config = root / "recflow.toml"
    config.write_text(
        f'catalogue = "{CATALOGUE}"\n\n[source]\n'
        f'kind = "csv"\npath = "{interactions}"\nitems_path = "{items}"\nvalue_min = 1\nvalue_max = 5\n'
    )
    return config
