"""Re-run the README's example requests against a real service and rewrite their outputs.

``python -m deployments.readme_examples`` (``make readme-examples``) starts ``recflow serve``
on the live bundle of each catalogue the examples ask (MovieLens-100K, and news for the
``news`` block), sends every request below over HTTP and prints what came back, trimmed the
way the README shows it, with the port ``make demo`` serves that catalogue on. ``--write``
also replaces the text between ``<!-- examples:NAME -->`` and ``<!-- /examples:NAME -->`` in
README.md, so the examples there are whatever the program printed last, never a hand-edited
copy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Example:
    """One request of the README and how its answer is shown."""

    path: str
    comment: str
    show: Callable[[Any], str]


def _compact(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _recommend(body: dict[str, Any]) -> str:
    """The whole answer, one item per line, scores to 4 decimals."""
    head = {k: v for k, v in body.items() if k not in ("items", "cascade")}
    items = [
        {k: item[k] for k in ("item_id", "title", "categories", "year", "score", "rank") if k in item}
        | {"score": round(item["score"], 4)}
        for item in body["items"]
    ]
    lines = [_compact(i) for i in items]
    return _compact(head)[:-1] + ',\n "items":[' + ",\n          ".join(lines) + "]}"


def _fallback(body: dict[str, Any]) -> str:
    head = {k: body[k] for k in ("user_id", "strategy", "reason")}
    first = body["items"][0] if body["items"] else {}
    lead = _compact({"item_id": first.get("item_id"), "title": first.get("title")})[:-1]
    return _compact(head)[:-1] + f',"items":[{lead},...'


def _titles(body: Any) -> str:
    items = body["items"] if isinstance(body, dict) else body
    return " · ".join(str(i["title"]) for i in items)


def _titles_scores(body: Any) -> str:
    items = body["items"] if isinstance(body, dict) else body
    return " · ".join(f"{i['title']} {i['score']:.3f}" for i in items)


_STORY_FIELDS = ("title", "outlet", "published", "topic", "why", "link")


def _stories(body: dict[str, Any]) -> str:
    """A feed as a reader sees it: each story's headline, outlet, time, topic, why and link."""
    head = {k: body[k] for k in ("strategy", "pool_date", "bundle_version")}
    items = [_compact({k: item.get(k) for k in _STORY_FIELDS}) for item in body["items"]]
    return _compact(head)[:-1] + ',...,\n "items":[' + ",\n          ".join(items) + "]}"


EXAMPLES: dict[str, list[Example]] = {
    "recommend": [
        Example("/recommend/196?k=3", "", _recommend),
        Example("/users/196/history?limit=3", "# the latest ratings drive the list", _titles),
        Example("/recommend/999999?k=3", "# unknown user: marked fallback", _fallback),
        Example("/recommend/196?k=0", "# bad input: 422 with a message, never a 500", _compact),
    ],
    "similar": [
        Example("/items/50/similar?k=5", "# 50 = Star Wars (1977)", _titles_scores),
        Example("/search?q=space+adventure+with+aliens&k=5", "", _titles),
    ],
    "news": [
        Example("/feed?k=5", "", _stories),
    ],
}
CATALOGUE_OF = {"news": "news"}
"""The catalogue each block asks; the others ask MovieLens-100K."""
README_PORT = {"movielens-100k": 8000, "news": 8001}
"""The port each catalogue's service has in the README: where ``make demo`` serves it."""


def catalogue_of(block: str) -> str:
    return CATALOGUE_OF.get(block, "movielens-100k")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_service(port: int, catalogue: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "deployments.cli", "serve", "--catalogue", catalogue]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_healthy(client: httpx.Client, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise RuntimeError(f"recflow serve exited with {proc.returncode} before /health answered:\n{err}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"recflow serve did not answer /health within {timeout_s:.0f} s")


def render(clients: dict[str, httpx.Client]) -> dict[str, str]:
    """Each block of examples as the console text the README shows; ``clients`` maps a
    catalogue to a client of its service."""
    blocks: dict[str, str] = {}
    for name, examples in EXAMPLES.items():
        catalogue = catalogue_of(name)
        client = clients[catalogue]
        lines: list[str] = []
        for ex in examples:
            cmd = f"$ curl -s 'http://127.0.0.1:{README_PORT[catalogue]}{ex.path}'"
            lines.append(f"{cmd}   {ex.comment}".rstrip() if ex.comment else cmd)
            lines.append(ex.show(client.get(ex.path).json()))
            lines.append("")
        blocks[name] = "```console\n" + "\n".join(lines).rstrip() + "\n```"
    return blocks


def rewrite(readme: str, blocks: dict[str, str]) -> str:
    """``readme`` with every marked block replaced; a block without its markers is an error."""
    for name, text in blocks.items():
        pattern = re.compile(rf"(<!-- examples:{name} -->\n).*?(\n<!-- /examples:{name} -->)", re.S)
        match = pattern.search(readme)
        if match is None:
            raise ValueError(f"README.md has no <!-- examples:{name} --> … <!-- /examples:{name} --> block")
        readme = readme[: match.start()] + match.group(1) + text + match.group(2) + readme[match.end() :]
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the example blocks of README.md")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    clients: dict[str, httpx.Client] = {}
    try:
        for catalogue in dict.fromkeys(catalogue_of(name) for name in EXAMPLES):
            port = _free_port()
            procs.append(_start_service(port, catalogue))
            clients[catalogue] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            _wait_healthy(clients[catalogue], procs[-1])
        blocks = render(clients)
    finally:
        for client in clients.values():
            client.close()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    for text in blocks.values():
        print(text)
    if args.write:
        README.write_text(rewrite(README.read_text(), blocks))
        print(f"rewrote {len(blocks)} example blocks in {README}")


if __name__ == "__main__":
    main()
