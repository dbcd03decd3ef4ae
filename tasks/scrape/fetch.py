"""Fetching feeds politely and defensively (httpx, asyncio).

Every due feed concurrently, bounded overall and per host, with connect/read/total timeouts,
retries with exponential backoff on timeouts, connection errors, 429 and 5xx, conditional GET
(``If-None-Match`` / ``If-Modified-Since`` from the feed's last good fetch: a 304 is not parsed
at all), a cap on the body size (an endless or oversized response stops at the cap), a redirect
limit with loop detection, and only http/https — also for redirect targets. A failure never
raises: it becomes the feed's :class:`FetchResult` status.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from storage.settings import FeedsSettings


@dataclass
class FetchResult:
    """One feed's fetch: the body for a 200, else why there is none."""

    url: str
    status: str
    """ok, not-modified, http-<code>, timeout, connect-error, too-large, redirect-loop,
    too-many-redirects, bad-scheme, paused."""
    http_status: int | None = None
    body: bytes | None = None
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    final_url: str | None = None
    detail: str = ""
    attempts: int = 0
    conditional: bool = False
    seconds: float = 0.0


class _FetchFailed(Exception):
    def __init__(self, status: str, detail: str, http_status: int | None = None, retry: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.http_status = http_status
        self.retry = retry


async def _fetch_once(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], settings: FeedsSettings
) -> FetchResult:
    """One attempt: follow redirects by hand (limit, loops, schemes), read at most max_bytes."""
    seen = [url]
    current = url
    for _ in range(settings.max_redirects + 1):
        scheme = urlsplit(current).scheme.lower()
        if scheme not in ("http", "https"):
            raise _FetchFailed("bad-scheme", f"{current!r}: only http and https are fetched")
        async with client.stream("GET", current, headers=headers) as response:
            if response.status_code in (301, 302, 303, 307, 308):
                location = response.headers.get("location")
                if not location:
                    raise _FetchFailed("http-" + str(response.status_code), "redirect without Location")
                target = urljoin(current, location)
                if target in seen:
                    raise _FetchFailed(
                        "redirect-loop", " -> ".join([*seen, target]), http_status=response.status_code
                    )
                seen.append(target)
                current = target
                continue
            code = response.status_code
            if code == 304:
                return FetchResult(
                    url,
                    "not-modified",
                    304,
                    etag=response.headers.get("etag"),
                    last_modified=response.headers.get("last-modified"),
                    final_url=current,
                )
            if code >= 400:
                retry = code == 429 or code >= 500
                raise _FetchFailed(f"http-{code}", f"HTTP {code} from {current}", code, retry=retry)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > settings.max_bytes:
                raise _FetchFailed(
                    "too-large", f"Content-Length {int(declared):,} > cap {settings.max_bytes:,} bytes", code
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > settings.max_bytes:
                    raise _FetchFailed(
                        "too-large", f"body passed the cap of {settings.max_bytes:,} bytes", code
                    )
                chunks.append(chunk)
            return FetchResult(
                url,
                "ok",
                code,
                body=b"".join(chunks),
                content_type=response.headers.get("content-type"),
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
                final_url=current,
            )
    raise _FetchFailed(
        "too-many-redirects", f"more than {settings.max_redirects} redirects: {' -> '.join(seen)}"
    )


async def _fetch_feed(
    client: httpx.AsyncClient,
    url: str,
    validators: tuple[str | None, str | None],
    settings: FeedsSettings,
    overall: asyncio.Semaphore,
    per_host: dict[str, asyncio.Semaphore],
) -> FetchResult:
    """Fetch one feed with retries and backoff, inside the overall and per-host bounds."""
    etag, modified = validators
    headers = {
        "User-Agent": settings.user_agent,
        "Accept": "application/rss+xml, application/atom+xml, */*;q=0.5",
    }
    if etag:
        headers["If-None-Match"] = etag
    if modified:
        headers["If-Modified-Since"] = modified
    host = (urlsplit(url).hostname or "").lower() + f":{urlsplit(url).port or ''}"
    host_gate = per_host.setdefault(host, asyncio.Semaphore(settings.max_per_host))
    started = time.perf_counter()
    attempt = 0
    while True:
        attempt += 1
        try:
            async with host_gate, overall:
                result = await asyncio.wait_for(
                    _fetch_once(client, url, headers, settings), timeout=settings.total_timeout_s
                )
            break
        except _FetchFailed as exc:
            failure = exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            failure = _FetchFailed(
                "timeout", f"{type(exc).__name__} after {time.perf_counter() - started:.1f}s", retry=True
            )
        except httpx.TooManyRedirects as exc:
            failure = _FetchFailed("too-many-redirects", str(exc))
        except httpx.UnsupportedProtocol as exc:
            failure = _FetchFailed("bad-scheme", str(exc))
        except (httpx.TransportError, OSError) as exc:
            failure = _FetchFailed("connect-error", f"{type(exc).__name__}: {exc}", retry=True)
        if not failure.retry or attempt > settings.retries:
            result = FetchResult(url, failure.status, failure.http_status, detail=failure.detail)
            break
        await asyncio.sleep(settings.backoff_s * 2 ** (attempt - 1))
    result.attempts = attempt
    result.conditional = bool(etag or modified)
    result.seconds = time.perf_counter() - started
    return result


async def fetch_feeds_async(
    urls: list[str], validators: dict[str, tuple[str | None, str | None]], settings: FeedsSettings
) -> list[FetchResult]:
    """Fetch ``urls`` concurrently, started in the given order (wished feeds come first)."""
    overall = asyncio.Semaphore(settings.max_connections)
    per_host: dict[str, asyncio.Semaphore] = {}
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.total_timeout_s,
    )
    limits = httpx.Limits(
        max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
    )
    async with httpx.AsyncClient(
        timeout=timeout, limits=limits, follow_redirects=False, trust_env=False
    ) as client:
        tasks = [
            _fetch_feed(client, url, validators.get(url, (None, None)), settings, overall, per_host)
            for url in urls
        ]
        return list(await asyncio.gather(*tasks))


def fetch_feeds(
    urls: list[str], validators: dict[str, tuple[str | None, str | None]], settings: FeedsSettings
) -> list[FetchResult]:
    """Synchronous entry point of :func:`fetch_feeds_async` (runs its own event loop)."""
    return asyncio.run(fetch_feeds_async(urls, validators, settings))
