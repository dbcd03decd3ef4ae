"""The feed page in headless Chromium, and a schemathesis run against the live OpenAPI schema.

Chromium is Debian's (``make test`` installs it when missing); it is driven over the Chrome
DevTools Protocol with the ``websockets`` package, so nothing is downloaded at test time.
Clicks are real mouse events at the button's position, not ``element.click()`` in script.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.events import read_events
from tests.serving_fixtures import Catalogue, build_catalogue, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal CDP client for one page: send commands, wait for their answers."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == message_id:
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
    with tempfile.TemporaryDirectory(prefix="recflow-chromium-") as profile:
        proc = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1200,1600",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
            proc.terminate()
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
