"""How well the harvest's near-duplicate rule finds the same story from several outlets.

Runs on the news warehouse filled by ``recflow run scrape`` from the demo feeds (vectors are
encoded and cached on first use). The demo generator knows which articles tell the same
story (``DemoStory.story_id``), so the harvest's grouping can be scored against the truth:
pair precision (pairs grouped together that are the same story) and pair recall (same-story
pairs grouped together), for the harvest's rule and for cosine alone.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import numpy as np

from demo.stories import generate_stories
from storage.settings import Settings
from storage.warehouse import open_warehouse
from tasks.harvest import candidate_vectors, collapse_near_duplicates


def pair_scores(groups: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pair precision and recall of a grouping against true labels."""
    same_group = groups[:, None] == groups[None, :]
    same_story = truth[:, None] == truth[None, :]
    upper = np.triu(np.ones_like(same_group, dtype=bool), 1)
    tp = int((same_group & same_story & upper).sum())
    grouped = int((same_group & upper).sum())
    actual = int((same_story & upper).sum())
    return tp / max(grouped, 1), tp / max(actual, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalogue", default="news")
    args = parser.parse_args()
    settings = Settings(catalogue=args.catalogue)
    h = settings.harvest
    with open_warehouse(settings.warehouse_path) as con:
        rows = con.execute(
            """
            SELECT i.item_id, i.url, i.title || ' ' || coalesce(i.description, ''), i.published_ts,
                   coalesce(bool_or(o.merged_by = 'new' AND o.date_estimated), false)
            FROM items i LEFT JOIN item_outlets o USING (item_id)
            GROUP BY ALL ORDER BY i.published_ts, i.item_id
            """
        ).fetchall()
        vectors = candidate_vectors(con, settings.embedding, [r[0] for r in rows])
    newest = max(r[3] for r in rows)
    stories = generate_stories(settings.feeds.demo_seed, datetime.fromtimestamp(newest + 1, UTC))
    story_of = {s.url: s.story_id for s in stories}
    keep = [i for i, r in enumerate(rows) if r[1] in story_of]
    rows = [rows[i] for i in keep]
    vectors = vectors[keep]
    truth = np.array([story_of[r[1]] for r in rows])
    order = np.argsort(-np.array([r[3] for r in rows]), kind="stable")
    groups = collapse_near_duplicates(
        vectors,
        order,
        np.array([r[3] for r in rows]),
        np.array([r[4] for r in rows], dtype=bool),
        [r[2] for r in rows],
        h.near_duplicate_cosine,
        h.near_duplicate_hours,
    )
    precision, recall = pair_scores(groups, truth)
    print(
        f"{len(rows)} demo articles, {len(set(truth))} stories; harvest rule "
        f"(cosine >= {h.near_duplicate_cosine}, within {h.near_duplicate_hours:g} h, same figures): "
        f"pair precision {precision:.2f}, recall {recall:.2f}"
    )
    for cut in (0.6, 0.8):
        cosine_only = collapse_near_duplicates(
            vectors, order, np.zeros(len(rows)), np.ones(len(rows), dtype=bool), [""] * len(rows), cut, 1.0
        )
        p, r = pair_scores(cosine_only, truth)
        print(f"cosine >= {cut} alone: pair precision {p:.2f}, recall {r:.2f}")


if __name__ == "__main__":
    main()
