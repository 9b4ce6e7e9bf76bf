"""The one HTTP client pkgate uses to reach its upstream registries.

Only configured upstream origins are ever contacted.  Bodies are not decompressed by the client
(``auto_decompress=False``): handlers pass bytes through with their own ``Content-Encoding`` or
decode explicitly.  Client credentials never travel upstream: only an allow-list of request headers
is forwarded.  Failures surface as ``UpstreamError`` carrying the status pkgate answers with.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import hdrs
from yarl import URL

USER_AGENT = "pkgate/0.1 (+registry proxy)"

# Request headers a client may have that are worth passing upstream; nothing else goes.
FORWARDED_REQUEST_HEADERS = (
    hdrs.ACCEPT,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.RANGE,
    hdrs.IF_RANGE,
)

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)


class UpstreamError(Exception):
    """The upstream failed; ``status`` is what pkgate answers (404, 502 or 504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UpstreamObserver(Protocol):
    """Receives upstream latencies and failures (proxy.metrics.Metrics is one)."""

    def upstream_answered(self, origin: str, seconds: float, status: int) -> None: ...

    def upstream_failed(self, origin: str, kind: str) -> None: ...


def origin_of(url: URL) -> str:
    return str(url.origin())


def forwarded_headers(
    incoming: Mapping[str, str], allowed: Iterable[str] = FORWARDED_REQUEST_HEADERS
) -> dict[str, str]:
    """The allow-listed subset of a client's request headers."""
    out: dict[str, str] = {}
    for name in allowed:
        value = incoming.get(name)
        if value is not None:
            out[name] = value
    return out


class Upstream:
    """A pooled client restricted to a fixed set of upstream origins."""

    def __init__(
        self,
        origins: Iterable[str],
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        connections: int = 100,
        deadlines: Mapping[str, float] | None = None,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self.origins = frozenset(origin_of(URL(o)) for o in origins)
        self.observer = observer
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        # A total deadline per request kind ("metadata", "artifact"): a whole request, body
        # included, never takes longer however slowly the upstream drips its bytes.
        self._timeouts = {
            kind: aiohttp.ClientTimeout(
                total=seconds,
                connect=connect_timeout,
                sock_connect=connect_timeout,
                sock_read=timeout,
            )
            for kind, seconds in (deadlines or {}).items()
        }
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._connections, limit_per_host=self._connections, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            headers={hdrs.USER_AGENT: USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def allows(self, url: URL) -> bool:
        return url.is_absolute() and origin_of(url) in self.origins

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        what: str = "upstream",
        kind: str = "metadata",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request upstream; yields the response with its body unread.

        ``kind`` ("metadata" or "artifact") chooses the total deadline (connection, headers and
        body together); a retry gets what is left of it.
        Idempotent requests are retried once on a connection error.  Timeouts raise
        UpstreamError(504), connection failures UpstreamError(502).  Status codes are the
        caller's to judge (see ``raise_for_upstream_status``).
        """
        if self._session is None:
            raise UpstreamError(502, f"{what}: client not started")
        if not self.allows(url):
            # Never contact a host that is not a configured upstream.
            raise UpstreamError(502, f"{what}: refusing to contact an unconfigured origin")
        attempts = 2 if method in {"GET", "HEAD"} else 1
        origin = origin_of(url)
        observer = self.observer
        timeout = self._timeouts.get(kind, self._timeout)
        deadline = time.monotonic() + timeout.total if timeout.total is not None else None
        for attempt in range(attempts):
            started = time.perf_counter()
            if deadline is not None and attempt:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UpstreamError(504, f"{what} timed out")
                timeout = aiohttp.ClientTimeout(
                    total=left,
                    connect=timeout.connect,
                    sock_connect=timeout.sock_connect,
                    sock_read=timeout.sock_read,
                )
            try:
                resp = await self._session.request(
                    method,
                    url,
                    headers=dict(headers or {}),
                    data=data,
                    allow_redirects=False,
                    timeout=timeout,
                )
            except (TimeoutError, aiohttp.ServerTimeoutError):
                if observer is not None:
                    observer.upstream_failed(origin, "timeout")
                raise UpstreamError(504, f"{what} timed out") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if observer is not None:
                    observer.upstream_failed(origin, "connection")
                if attempt + 1 < attempts:
                    continue
                raise UpstreamError(
                    502, f"{what} connection failed ({exc.__class__.__name__})"
                ) from None
            except aiohttp.ClientError as exc:
                if observer is not None:
                    observer.upstream_failed(origin, "connection")
                raise UpstreamError(
                    502, f"{what} request failed ({exc.__class__.__name__})"
                ) from None
            if observer is not None:
                observer.upstream_answered(origin, time.perf_counter() - started, resp.status)
            try:
                yield resp
            except (TimeoutError, aiohttp.ServerTimeoutError):
                if observer is not None:
                    observer.upstream_failed(origin, "timeout")
                raise UpstreamError(504, f"{what} timed out while sending its body") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if observer is not None:
                    observer.upstream_failed(origin, "connection")
                raise UpstreamError(
                    502, f"{what} broke off while sending its body ({exc.__class__.__name__})"
                ) from None
            finally:
                resp.release()
            return


def raise_for_upstream_status(resp: aiohttp.ClientResponse, what: str = "upstream") -> None:
    """Map upstream failure statuses onto pkgate's: 404 stays 404, 5xx and oddities become 502."""
    status = resp.status
    if status < 300 or status == 304:
        return
    if status in (404, 410):
        raise UpstreamError(404, f"{what}: not found")
    if status >= 500:
        raise UpstreamError(502, f"{what} answered {status}")
    if status in (401, 403, 407):
        raise UpstreamError(502, f"{what} refused pkgate's request ({status})")
    raise UpstreamError(502, f"{what} answered unexpected status {status}")


def response_headers(resp: aiohttp.ClientResponse, keep: Iterable[str]) -> dict[str, str]:
    """The named upstream response headers that are present (hop-by-hop ones never)."""
    out: dict[str, str] = {}
    for name in keep:
        if name.lower() in HOP_BY_HOP:
            continue
        value = resp.headers.get(name)
        if value is not None:
            out[name] = value
    return out


__all__ = [
    "FORWARDED_REQUEST_HEADERS",
    "USER_AGENT",
    "Upstream",
    "UpstreamError",
    "UpstreamObserver",
    "forwarded_headers",
    "raise_for_upstream_status",
    "response_headers",
]
