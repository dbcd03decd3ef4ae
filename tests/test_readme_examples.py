"""The README's example blocks are the ones ``deployments.readme_examples`` rewrites."""

from __future__ import annotations

import pytest

from deployments.readme_examples import EXAMPLES, README, README_PORT, catalogue_of, rewrite
from storage.settings import Settings


def test_every_example_block_is_marked_in_the_readme() -> None:
    text = README.read_text()
    for name, examples in EXAMPLES.items():
        start, end = f"<!-- examples:{name} -->", f"<!-- /examples:{name} -->"
        assert start in text and end in text, name
        block = text[text.index(start) : text.index(end)]
        port = README_PORT[catalogue_of(name)]
        for example in examples:
            assert f"http://127.0.0.1:{port}{example.path}'" in block, example.path


def test_readme_ports_are_where_make_demo_serves_each_catalogue() -> None:
    """`recflow demo --port 8000` serves catalogue number i on 8000 + i."""
    catalogues = list(Settings().catalogues)
    assert {c: 8000 + catalogues.index(c) for c in README_PORT} == README_PORT


def test_rewrite_replaces_only_the_marked_block() -> None:
    readme = "intro\n<!-- examples:a -->\nold\n<!-- /examples:a -->\noutro\n"
    assert (
        rewrite(readme, {"a": "new\ntext"})
        == "intro\n<!-- examples:a -->\nnew\ntext\n<!-- /examples:a -->\noutro\n"
    )


def test_rewrite_names_a_missing_block() -> None:
    with pytest.raises(ValueError, match="examples:missing"):
        rewrite("no markers here", {"missing": "x"})
