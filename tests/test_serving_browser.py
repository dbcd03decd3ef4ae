"""The feed page and the API docs in headless Chromium, and a schemathesis run against the live
OpenAPI schema.

Chromium is Debian's (``make test`` installs it when missing); it is driven over the Chrome
DevTools Protocol with the ``websockets`` package, so nothing is downloaded at test time.
Clicks are real mouse events at the button's position, not ``element.click()`` in script.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.events import read_events
from tests.serving_fixtures import OUTLET, Catalogue, build_catalogue, serve

pytestmark = pytest.mark.slow  # headless Chromium and schemathesis

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal CDP client for one page: send commands, wait for their answers; the events
    that arrive meanwhile (``Network.requestWillBeSent``… once enabled) are kept in order."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if "method" in reply:
                self.events.append(reply)
            elif reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"page never satisfied {expression!r}")

    def click(self, selector: str) -> None:
        """A real left click at the centre of the element ``selector`` names."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser() -> Iterator[str]:
    """Headless Chromium with remote debugging; yields the DevTools HTTP endpoint."""
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed; `make test` installs Debian's package (apt-get install chromium)"
        )
    # Chromium's helper processes may still be writing the profile as it is removed.
    with tempfile.TemporaryDirectory(prefix="recflow-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1200,1600",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chromium did not open its DevTools port")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the browser and its helper processes
            proc.wait(20)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return build_catalogue(tmp_path_factory.mktemp("browser"))


def test_like_in_the_browser_changes_the_feed(catalogue: Catalogue, browser: str) -> None:
    with serve(catalogue.settings) as (_app, client):
        targets = httpx.get(f"{browser}/json/list").json()
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            tools.send("Page.enable")
            tools.send("Page.navigate", url=f"{client.base_url}/")
            tools.wait_until("document.body.dataset.loaded === '1'")
            cards = "JSON.stringify([...document.querySelectorAll('li.card')].map(li => li.dataset.itemId))"
            before = json.loads(tools.evaluate(cards))
            assert len(before) == 10
            assert "fresh_popular_fallback" in tools.evaluate("document.getElementById('status').textContent")
            # Each card is a story: its headline links to it, with outlet, age, summary and why.
            story = json.loads(
                tools.evaluate(
                    "JSON.stringify((() => { const li = document.querySelector('li.card');"
                    " const a = li.querySelector('a.title'); return {href: a && a.href,"
                    " meta: li.querySelector('.meta').textContent, why: li.querySelector('.why').textContent,"
                    " summary: li.querySelector('.summary').textContent}; })())"
                )
            )
            first = before[0]
            assert story["href"] == f"https://planet.example/{first}"
            assert story["meta"].startswith(f"{OUTLET} · ") and " ago · " in story["meta"], story
            assert story["summary"].endswith("story.") and story["why"], story

            liked = []
            for round_ in range(1, 4):
                liked.append(tools.evaluate("document.querySelector('li.card').dataset.itemId"))
                tools.click("li.card button.like")
                tools.wait_until(f"document.body.dataset.loaded === '{round_ + 1}'")
            after = json.loads(tools.evaluate(cards))
            status = tools.evaluate("document.getElementById('status').textContent")
        finally:
            tools.close()
    assert not set(liked) & set(after), "liked items must leave the feed"
    assert after != before
    assert status.startswith("personalized · 3 events"), status
    logged = [(e.item_id, e.event) for e in read_events(catalogue.settings.events_dir)]
    assert logged == [(item, "like") for item in liked]
    sessions = {e.session for e in read_events(catalogue.settings.events_dir)}
    assert len(sessions) == 1, "the page's cookie names one session"


def test_docs_and_redoc_render_offline(catalogue: Catalogue, browser: str, tmp_path: Path) -> None:
    """Swagger UI lists every operation and ReDoc renders them, with every request the
    pages make going to the service itself (their assets are installed, not from a CDN);
    ``python -m deployments.screenshot_docs`` takes the page as a PNG."""
    from deployments.screenshot_docs import screenshot_docs

    with serve(catalogue.settings) as (_app, client):
        base = str(client.base_url).rstrip("/")
        operations = sum(len(ops) for ops in client.get("/openapi.json").json()["paths"].values())
        targets = httpx.get(f"{browser}/json/list").json()
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            tools.send("Network.enable")
            tools.send("Page.enable")
            tools.send("Page.navigate", url=f"{base}/docs")
            tools.wait_until(f"document.querySelectorAll('#swagger-ui .opblock').length === {operations}")
            listed = json.loads(
                tools.evaluate(
                    "JSON.stringify([...document.querySelectorAll('.opblock-summary-path')]"
                    ".map(e => e.dataset.path))"
                )
            )
            tags = json.loads(
                tools.evaluate(
                    "JSON.stringify([...document.querySelectorAll('.opblock-tag')].map(e => e.dataset.tag))"
                )
            )
            tools.send("Page.navigate", url=f"{base}/redoc")
            redoc_operations = (
                "new Set([...document.querySelectorAll('[data-section-id*=\"operation/\"]')]"
                ".map(e => e.dataset.sectionId.split('operation/')[1])).size"
            )
            tools.wait_until(f"{redoc_operations} === {operations}")
            redoc_title = tools.evaluate("document.querySelector('h1').textContent")
            tools.evaluate("1")  # drain the events sent before this answer
            requested = {
                event["params"]["requestId"]: event["params"]["request"]["url"]
                for event in tools.events
                if event["method"] == "Network.requestWillBeSent"
            }
            blocked = {
                event["params"]["requestId"]
                for event in tools.events
                if event["method"] == "Network.loadingFailed"
                and event["params"].get("blockedReason") == "csp"
            }
        finally:
            tools.close()
    assert "/recommend/{user_id}" in listed and "/search" in listed and len(listed) == operations
    assert set(tags) == {"recommend", "catalogue", "service", "admin"}
    assert redoc_title.startswith("recflow")
    urls = set(requested.values())
    assert f"{base}/docs/assets/swagger-ui-bundle.js" in urls
    assert f"{base}/docs/assets/redoc.standalone.js" in urls
    assert f"{base}/openapi.json" in urls
    # ReDoc draws a logo from its CDN whatever its options: the page's CSP must stop it unsent.
    away = [
        url
        for rid, url in requested.items()
        if not url.startswith((f"{base}/", "data:", "blob:")) and rid not in blocked
    ]
    assert not away, f"requests left the host: {away}"

    png = screenshot_docs(tmp_path / "docs.png", height=900)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "a rendered page, not a blank one"


def test_schemathesis_finds_no_server_error(catalogue: Catalogue) -> None:
    """Every operation of the live schema, positive and negative cases: never a 5xx."""
    import hypothesis
    import schemathesis
    from schemathesis import GenerationMode

    failures: list[str] = []
    skipped: list[str] = []
    with serve(catalogue.settings) as (_app, client):
        url = str(client.base_url).rstrip("/")
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 13
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @hypothesis.settings(
                    max_examples=12,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(hypothesis.HealthCheck),
                    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                )
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def check(case: Any) -> None:
                    response = case.call(base_url=url, timeout=30)
                    if response.status_code >= 500:
                        failures.append(
                            f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:200]}"
                        )

                try:
                    check()
                except hypothesis.errors.Unsatisfiable:
                    # No parameters to make invalid (GET /health): nothing negative to send.
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    skipped.append(operation.label)
    assert not failures, "\n".join(failures[:10])
    assert len(skipped) < len(operations), skipped
