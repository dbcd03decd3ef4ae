"""Prometheus metrics and the body-size guard, as plain ASGI middleware.

Pure ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs the
endpoint in a separate task and copies the response body through a stream, which costs a
noticeable share of a sub-millisecond request. Here a request costs two ``perf_counter``
calls and one histogram observation.

Requests are labelled by their *route template* (``/recommend/{user_id}``), never the raw
path, so label cardinality stays bounded whatever ids callers send. With several uvicorn
workers each process keeps its own counters (scrape each, or run one worker per container).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series only add noise to every scrape

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceMetrics:
    """The service's own registry (not the process-global one: several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "recflow_http_requests_total",
            "HTTP requests by endpoint (route template), method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recflow_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by endpoint.",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bundle = Gauge(
            "recflow_bundle_info",
            "The live bundle (value 1) with its version and model as labels.",
            ["version", "model"],
            registry=self.registry,
        )
        self.events = Counter(
            "recflow_events_total",
            "Interactions accepted into the event log, by event type.",
            ["event"],
            registry=self.registry,
        )
        self.impressions_written = Counter(
            "recflow_impressions_written_total",
            "Impressions (listed answers) appended to the impression log.",
            registry=self.registry,
        )
        self.impressions_dropped = Counter(
            "recflow_impressions_dropped_total",
            "Impressions not logged: the writer's queue was full (or a write failed).",
            registry=self.registry,
        )
        self.global_items = Gauge(
            "recflow_global_items",
            "Items whose shared trending / click-through counts are held (update_mode global).",
            registry=self.registry,
        )
        self._bundle_labels: tuple[str, str] | None = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        """Count one request and time it.

        The labelled children are cached: ``labels()`` validates and locks on every call,
        ~10 µs a request for two series, and label sets are bounded (route templates).
        """
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(endpoint, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def set_bundle(self, version: str, model: str) -> None:
        """Keep exactly one ``recflow_bundle_info`` series: the live bundle's."""
        labels = (version, model)
        if labels == self._bundle_labels:
            return
        if self._bundle_labels is not None:
            self.bundle.remove(*self._bundle_labels)
        self.bundle.labels(*labels).set(1)
        self._bundle_labels = labels

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it, labelled by the route that answered it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.observe(endpoint, method, str(status), time.perf_counter() - started)


class BodyLimitMiddleware:
    """Answers 413 to a body over ``max_bytes``, declared (Content-Length) or streamed (chunked).

    Bodies are small JSON documents, so a body is read in full (up to the limit) before the
    app sees it; the app then reads it from memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send, f"Content-Length {declared}")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, f"at least {size} bytes")
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, what: str) -> None:
        detail = f"request body too large: {what}; the limit is {self.max_bytes} bytes"
        payload = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(payload)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
