"""Fetching feeds politely and defensively (httpx, asyncio).

Every due feed concurrently, bounded overall and per host, with connect/read/total timeouts,
retries with exponential backoff on timeouts, connection errors, 429 and 5xx, conditional GET
(``If-None-Match`` / ``If-Modified-Since`` from the feed's last good fetch: a 304 is not parsed
at all), a cap on the body size (an endless or oversized response stops at the cap), a redirect
limit with loop detection, and only plain http/https addresses — also for redirect targets.

Every connection, the first hop's and each redirect's, resolves its host and refuses
private, loopback, link-local, multicast and reserved addresses unless ``feeds.allow_hosts``
(or the demo address) allows them: the check runs where the socket is opened, on the
addresses actually connected to, so a name that changes its answer between a check and the
connect cannot slip through. A failure never raises: it becomes the feed's
:class:`FetchResult` status, and only failures that can pass (timeouts, connection errors,
429, 5xx) are retried.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from storage.settings import FeedsSettings, feed_url_problem

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass
class FetchResult:
    """One feed's fetch: the body for a 200, else why there is none."""

    url: str
    status: str
    """ok, not-modified, http-<code>, timeout, connect-error, too-large, redirect-loop,
    too-many-redirects, bad-scheme, bad-redirect, bad-url, refused-address, fetch-error."""
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


class AddressRefused(Exception):
    """A connection would reach a non-public address that no allow-list entry allows."""


# --- which addresses a feed may reach ---------------------------------------------------------


def _embedded_ipv4(ip: _IPAddress) -> _IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _kind(ip: _IPAddress) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


class AddressGuard:
    """Decides whether a connection to ``host:port`` (resolved to addresses) may be opened.

    Public addresses always may; any other one only when the host (as written in the URL,
    with or without the port) or the address matches ``feeds.allow_hosts`` or the demo address.
    """

    def __init__(self, entries: list[str]) -> None:
        self.hosts: set[tuple[str, int | None]] = set()
        self.networks: list[_IPNetwork] = []
        for entry in entries:
            if "/" in entry:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry))  # a bare address: one-address network
                continue
            except ValueError:
                pass
            parts = urlsplit(f"//{entry}")
            self.hosts.add((_normal_host(parts.hostname or ""), parts.port))

    @classmethod
    def from_settings(cls, settings: FeedsSettings) -> AddressGuard:
        """The allow-list, plus the demo address while the feed list is the demo or points at it."""
        entries = list(settings.allow_hosts)
        demo = (_normal_host(settings.demo_host), settings.demo_port)
        if not settings.feeds or any(_host_port(f.url) == demo for f in settings.feeds):
            entries.append(f"{settings.demo_host}:{settings.demo_port}")
        return cls(entries)

    def refusal(self, host: str, port: int, addresses: list[_IPAddress]) -> str | None:
        """Why connecting to ``host:port`` at ``addresses`` is refused (None: allowed)."""
        name = _normal_host(host)
        if (name, port) in self.hosts or (name, None) in self.hosts:
            return None
        for address in addresses:
            ip = _embedded_ipv4(address)
            if (ip.is_global and not ip.is_multicast) or any(
                a in net for net in self.networks for a in (ip, address)
            ):
                continue
            return (
                f"{host}:{port} resolves to {address}, a {_kind(ip)} address: refused "
                "(list the host in feeds.allow_hosts to fetch from it)"
            )
        return None


def _normal_host(host: str) -> str:
    host = host.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return _normal_host(parts.hostname or ""), parts.port or (443 if parts.scheme == "https" else 80)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check where each socket is opened: the host is
    resolved here, every address checked, and the connection made to a checked address."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))
        refusal = self.guard.refusal(host, port, addresses)
        if refusal:
            raise AddressRefused(refusal)
        failure: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_transport(settings: FeedsSettings) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections pass :class:`AddressGuard` (no proxies, no env)."""
    limits = httpx.Limits(
        max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    # httpx takes no network backend: give its transport a pool built with the guarded one, and
    # fail closed if httpx ever stops keeping its pool there.
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError(
            "this httpx keeps no connection pool in _pool: the address guard cannot be installed"
        )
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_GuardedBackend(AddressGuard.from_settings(settings)),
    )
    return transport


# --- one feed ---------------------------------------------------------------------------------


async def _fetch_once(
    transport: httpx.AsyncHTTPTransport, url: str, headers: dict[str, str], settings: FeedsSettings
) -> FetchResult:
    """One attempt: follow redirects by hand (limit, loops, addresses), read at most max_bytes.

    The transport is used directly, not through a client: a client would build the next
    request from any ``Location`` itself and raise on one it cannot parse."""
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.total_timeout_s,
    ).as_dict()
    seen = [url]
    current = url
    for _ in range(settings.max_redirects + 1):
        request = httpx.Request("GET", current, headers=headers, extensions={"timeout": timeout})
        response = await transport.handle_async_request(request)
        response.request = request
        try:
            if response.status_code in (301, 302, 303, 307, 308):
                current = _redirect_target(current, response, seen)
                continue
            return await _read(url, current, response, settings)
        finally:
            await response.aclose()
    raise _FetchFailed(
        "too-many-redirects", f"more than {settings.max_redirects} redirects: {' -> '.join(seen)}"
    )


def _redirect_target(current: str, response: httpx.Response, seen: list[str]) -> str:
    """Where a redirect points, checked like a configured feed URL; appends it to ``seen``."""
    location = response.headers.get("location")
    if not location:
        raise _FetchFailed(f"http-{response.status_code}", "redirect without Location", response.status_code)
    try:
        target = urljoin(current, location.strip())
        scheme = urlsplit(target).scheme.lower()
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise _FetchFailed(
            "bad-redirect", f"Location {location[:200]!r}: {exc}", response.status_code
        ) from exc
    if scheme not in ("http", "https"):
        raise _FetchFailed(
            "bad-scheme", f"{target[:200]!r}: only http and https are fetched", response.status_code
        )
    problem = feed_url_problem(target)
    if problem:
        raise _FetchFailed("bad-redirect", f"Location {location[:200]!r} {problem}", response.status_code)
    if target in seen:
        raise _FetchFailed("redirect-loop", " -> ".join([*seen, target]), http_status=response.status_code)
    seen.append(target)
    return target


async def _read(url: str, current: str, response: httpx.Response, settings: FeedsSettings) -> FetchResult:
    """A final (non-redirect) response as a result: 304, an HTTP error, or the capped body."""
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
    async for chunk in response.aiter_bytes():  # decoded: the cap also stops compression bombs
        size += len(chunk)
        if size > settings.max_bytes:
            raise _FetchFailed("too-large", f"body passed the cap of {settings.max_bytes:,} bytes", code)
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


async def _fetch_feed(
    transport: httpx.AsyncHTTPTransport,
    url: str,
    validators: tuple[str | None, str | None],
    settings: FeedsSettings,
    overall: asyncio.Semaphore,
    per_host: dict[str, asyncio.Semaphore],
) -> FetchResult:
    """Fetch one feed with retries and backoff, inside the overall and per-host bounds.

    Never raises for anything the feed or its server does: every exception becomes the feed's
    status, and only timeouts, connection errors, 429 and 5xx are retried."""
    etag, modified = validators
    headers = {
        "User-Agent": settings.user_agent,
        "Accept": "application/rss+xml, application/atom+xml, */*;q=0.5",
        "Accept-Encoding": "gzip, deflate",
    }
    if etag:
        headers["If-None-Match"] = etag
    if modified:
        headers["If-Modified-Since"] = modified
    started = time.perf_counter()
    attempt = 0
    while True:
        attempt += 1
        try:
            problem = feed_url_problem(url)
            if problem:
                raise _FetchFailed("bad-url", f"{url!r} {problem}")
            host, port = _host_port(url)
            host_gate = per_host.setdefault(f"{host}:{port}", asyncio.Semaphore(settings.max_per_host))
            async with host_gate, overall:
                result = await asyncio.wait_for(
                    _fetch_once(transport, url, headers, settings), timeout=settings.total_timeout_s
                )
            break
        except _FetchFailed as exc:
            failure = exc
        except AddressRefused as exc:
            failure = _FetchFailed("refused-address", str(exc))
        except (TimeoutError, httpx.TimeoutException) as exc:
            failure = _FetchFailed(
                "timeout", f"{type(exc).__name__} after {time.perf_counter() - started:.1f}s", retry=True
            )
        except httpx.UnsupportedProtocol as exc:
            failure = _FetchFailed("bad-scheme", str(exc))
        except httpx.InvalidURL as exc:
            failure = _FetchFailed("bad-url", str(exc))
        except (httpx.TransportError, OSError) as exc:
            failure = _FetchFailed("connect-error", f"{type(exc).__name__}: {exc}", retry=True)
        except Exception as exc:  # whatever else a hostile server provokes: this feed's failure only
            failure = _FetchFailed("fetch-error", f"{type(exc).__name__}: {exc}")
        if not failure.retry or attempt > settings.retries:
            result = FetchResult(url, failure.status, failure.http_status, detail=failure.detail[:2000])
            break
        await asyncio.sleep(settings.backoff_s * 2 ** (attempt - 1))
    result.attempts = attempt
    result.conditional = bool(etag or modified)
    result.seconds = time.perf_counter() - started
    return result


async def fetch_feeds_async(
    urls: list[str], validators: dict[str, tuple[str | None, str | None]], settings: FeedsSettings
) -> list[FetchResult]:
    """Fetch ``urls`` concurrently, started in the given order (wished feeds come first).

    One result per URL, in order; an exception that escaped a feed's own handling still
    becomes that feed's ``fetch-error`` rather than failing the others."""
    overall = asyncio.Semaphore(settings.max_connections)
    per_host: dict[str, asyncio.Semaphore] = {}
    async with guarded_transport(settings) as transport:
        tasks = [
            _fetch_feed(transport, url, validators.get(url, (None, None)), settings, overall, per_host)
            for url in urls
        ]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    results: list[FetchResult] = []
    for url, outcome in zip(urls, outcomes, strict=True):
        if isinstance(outcome, FetchResult):
            results.append(outcome)
        elif isinstance(outcome, Exception):
            results.append(
                FetchResult(url, "fetch-error", detail=f"{type(outcome).__name__}: {outcome}"[:2000])
            )
        else:  # cancellation or interrupt: not the feed's doing
            raise outcome
    return results


def fetch_feeds(
    urls: list[str], validators: dict[str, tuple[str | None, str | None]], settings: FeedsSettings
) -> list[FetchResult]:
    """Synchronous entry point of :func:`fetch_feeds_async` (runs its own event loop)."""
    return asyncio.run(fetch_feeds_async(urls, validators, settings))
