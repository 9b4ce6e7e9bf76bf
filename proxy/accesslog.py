"""The access log: one JSON object per request, formatted on the request path, written off it.

Fields: ``time`` (UTC, ISO 8601), ``client_ip`` (X-Forwarded-For believed only from
``trusted_proxies``), ``method``, ``path`` (the raw path; query values of secret-looking parameters
and anything shaped like a pkgate token masked), ``status``, ``bytes`` (body bytes sent),
``duration_ms``, ``cache`` (``hit``, ``miss``, ``stale`` or null, from the request's
``proxy.keys.RegistryFacts``), ``token_id`` (the id, never the secret), ``ecosystem`` and
``user_agent``.
``bytes`` counts everything written for the answer, status line and headers included (nginx's
``$bytes_sent``), since a streamed body has no Content-Length to report.

Paths and user agents come from the client: they are length-capped, masked, and written only as
JSON string values, so they cannot forge a log line.  The Authorization header, cookies and a URL's
userinfo are never read here.

How lines reach the disk (``AccessLogSink``): the request path only formats the line and
appends it to an in-memory list; a writer thread wakes every ``access_log_flush`` seconds (sooner
when a quarter of the buffer is used, and at once on shutdown) and writes everything pending in
one ``write()``, so a slow disk or a stalled pipe never blocks the event loop.  The buffer is
bounded (``max_pending`` bytes, 8 MiB by default, about 25,000 lines).  At the bound — the disk has
not accepted a write for that long — further lines are *not* kept: each one is counted
(``pkgate_access_log_lines_dropped`` in /metrics), a warning goes to the ``pkgate`` log once per
episode, and as soon as the disk accepts writes again one line
``{"event": "access_log_overflow", "dropped": N, ...}`` is written where the missing lines belong.
Serving never waits on the log.  On shutdown (SIGTERM) the sink writes everything pending before
the process exits; lines it still cannot write by then are counted and reported on stderr.

With ``access_log_file`` set the sink appends to that file (``O_APPEND``: workers sharing it never
split a line) and reopens it when it is renamed or removed (log rotation); otherwise it writes to
stderr, in writes of at most ``PIPE_BUF`` bytes on line boundaries so that lines of several
workers sharing one pipe never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import stat
import sys
import threading
import time as _time
from collections import deque
from pathlib import Path
from typing import Final

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from tokenapi.clientip import Network, client_ip

from .keys import REQUEST_FACTS, RegistryFacts
from .settings import Settings

LOGGER_NAME = "pkgate.access"
MASK = "***"
MAX_PATH = 2048
MAX_USER_AGENT = 256
DEFAULT_MAX_PENDING: Final = 8 * 1024 * 1024
# On shutdown, how long the sink keeps retrying a failing disk before counting lines as lost.
CLOSE_TIMEOUT: Final = 5.0

log = logging.getLogger("pkgate")

# Anything that looks like a pkgate secret, wherever a client put it.
_TOKEN_SHAPE = re.compile(r"pkg_[0-9A-Za-z]{8,}")
# Query parameters whose values are credentials by name.
_SECRET_PARAM = re.compile(r"token|secret|pass|key|auth|code|sig|session|cred", re.IGNORECASE)


def mask_tokens(text: str) -> str:
    """``text`` as valid UTF-8, with every token-shaped run replaced by ``pkg_***``."""
    if text.isascii():
        # The common case: no lone surrogates to repair, and usually nothing to mask.
        return _TOKEN_SHAPE.sub("pkg_" + MASK, text) if "pkg_" in text else text
    # Header bytes that are not UTF-8 arrive as lone surrogates; make them U+FFFD.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _TOKEN_SHAPE.sub("pkg_" + MASK, text)


def safe_path(url: URL) -> str:
    """The request path for the log: raw path, secret query values masked, capped in length."""
    path = url.raw_path
    if url.raw_query_string:
        parts = []
        for pair in url.raw_query_string.split("&"):
            name, sep, value = pair.partition("=")
            if sep and (_SECRET_PARAM.search(name) or _TOKEN_SHAPE.search(value)):
                value = MASK
            parts.append(f"{name}{sep}{value}")
        path = f"{path}?{'&'.join(parts)}"
    return mask_tokens(path[:MAX_PATH])


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds, formatted at most once per millisecond."""

    __slots__ = ("milli", "prefix", "second", "text")

    def __init__(self) -> None:
        self.milli = self.second = -1
        self.prefix = self.text = ""

    def now(self) -> str:
        milli = _time.time_ns() // 1_000_000
        if milli != self.milli:
            second, rest = divmod(milli, 1000)
            if second != self.second:
                self.prefix = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(second))
                self.second = second
            self.text = f"{self.prefix}.{rest:03d}Z"
            self.milli = milli
        return self.text


_clock = _Clock()


def _json(value: str | None) -> str:
    """``value`` as a JSON value: a quoted, escaped string, or null."""
    return orjson.dumps(value).decode()


# Methods logged as they are, as JSON (anything else a client sends is capped and masked).
_METHODS: Final = {method: _json(method) for method in hdrs.METH_ALL}
# Cache outcomes as JSON, and ".000" to ".999" for durations (formatting a float costs more).
_CACHE: Final = {
    outcome: _json(outcome)
    for outcome in (None, "hit", "miss", "stale", "revalidated", "bypass", "disk")
}
_THOUSANDTHS: Final = tuple(f".{n:03d}" for n in range(1000))
# A raw path written as it is: printable ASCII but for what JSON escapes ('"', '\\') and a
# query ('?', whose values may need masking), within the length cap.
_PLAIN_PATH: Final = re.compile(rf"/[!#->@-\[\]-~]{{0,{MAX_PATH - 1}}}")


class AccessLogSink:
    """Lines kept in memory by the request path and written in batches by a thread of its own.

    The request path takes no lock: it appends to a deque (atomic) and bumps counters only it
    writes; the writer thread pops lines and keeps counters of its own, so every shared variable
    has exactly one writer.
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        fd: int | None = None,
        flush_interval: float = 0.5,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if (path is None) == (fd is None):
            raise ValueError("an access log sink writes to a path or to a file descriptor")
        if not flush_interval > 0:
            raise ValueError("flush_interval must be positive")
        self.path = path
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._kick_every = max(1, max_pending // 4)
        self._owns_fd = fd is None
        self._fd = fd if fd is not None else self._open()
        # Pipes and sockets: keep each write within PIPE_BUF so concurrent writers never mix lines.
        self._chunk = 0 if stat.S_ISREG(os.fstat(self._fd).st_mode) else select.PIPE_BUF
        self._lines: deque[bytes] = deque()
        self._kick = threading.Event()
        self._progress = threading.Condition()
        # Written by the request path only.
        self._appended_bytes = 0
        self._appended = 0
        self._kick_next = self._kick_every  # appended bytes at which the writer is woken early
        self.lines_dropped = 0
        self._warned_epoch = -1
        # Written by the writer thread only.
        self._done_bytes = 0  # bytes of lines taken and written (or given up on)
        self._done = 0  # lines taken and written (or given up on)
        self._reported_dropped = 0
        self._room_epoch = 0  # bumped when the buffer has room again after drops
        self._failing = False
        self.lines_written = 0
        self.lines_lost = 0
        # Set by close().
        self._closing = False
        self._close_deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="pkgate-access-log", daemon=True)
        self._thread.start()

    @classmethod
    def for_settings(cls, settings: Settings) -> AccessLogSink | None:
        """The sink ``settings`` ask for: their file, stderr, or None with the log off."""
        if not settings.access_log:
            return None
        if settings.access_log_file is not None:
            return cls(path=settings.access_log_file, flush_interval=settings.access_log_flush)
        return cls(fd=sys.stderr.fileno(), flush_interval=settings.access_log_flush)

    @property
    def pending_bytes(self) -> int:
        """Bytes kept and not yet written."""
        return self._appended_bytes - self._done_bytes

    def _open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    # ------------------------------------------------------------------ request path

    def write(self, line: bytes) -> None:
        """Keep one complete line (ending in a newline); never blocks on the disk."""
        appended = self._appended_bytes + len(line)
        if appended - self._done_bytes <= self.max_pending:
            self._lines.append(line)
            self._appended_bytes = appended
            self._appended += 1
            if appended >= self._kick_next:
                # A quarter of the buffer kept since the last kick: wake the writer early.
                self._kick_next = appended + self._kick_every
                self._kick.set()
            return
        self.lines_dropped += 1
        if self._warned_epoch == self._room_epoch:
            return
        self._warned_epoch = self._room_epoch
        log.warning(
            "access log: %d bytes not yet written (the disk is not keeping up); further "
            "lines are counted as dropped until it does",
            self.max_pending,
        )

    # ------------------------------------------------------------------ control

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every line kept before this call has reached the file (or timeout)."""
        target = self._appended
        with self._progress:
            self._kick.set()
            return self._progress.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write everything pending and stop the writer; report lines that could not be written."""
        self._close_deadline = _time.monotonic() + timeout
        self._closing = True
        self._kick.set()
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():
            # Stuck inside write() (a pipe nobody reads): what is still pending is lost.
            self.lines_lost += self._appended - self._done
        if self.lines_lost:
            log.error("access log: %d line(s) could not be written at shutdown", self.lines_lost)
        if self._owns_fd and not self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(self._fd)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        lines = self._lines
        while True:
            self._kick.wait(self.flush_interval)
            self._kick.clear()
            closing = self._closing
            batch = [lines.popleft() for _ in range(len(lines))]
            size = sum(map(len, batch))
            dropped = self.lines_dropped - self._reported_dropped
            self._reported_dropped += dropped
            out = [*batch, _overflow_line(dropped)] if dropped else batch
            ok = self._write_batch(out) if out else True
            if ok:
                self.lines_written += len(batch)
            else:
                self.lines_lost += len(batch)
            with self._progress:
                self._done_bytes += size
                self._done += len(batch)
                self._progress.notify_all()
            if dropped and self.pending_bytes < self.max_pending // 2:
                self._room_epoch += 1  # the next drop starts a new episode, with a new warning
            if closing and not lines:
                return

    def _write_batch(self, batch: list[bytes]) -> bool:
        """Write ``batch`` completely, retrying a failing disk; False once closing gives up."""
        self._reopen_if_rotated()
        data = b"".join(batch)
        big = self._chunk and len(data) > self._chunk
        chunks = _chunks(batch, self._chunk) if big else [data]
        delay = 0.05
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except InterruptedError:
                    continue
                except OSError as exc:
                    if not self._failing:
                        self._failing = True
                        log.warning(
                            "access log: write failed (%s); keeping lines in memory and retrying",
                            errno.errorcode.get(exc.errno or 0, exc),
                        )
                    if self._closing and _time.monotonic() >= self._close_deadline:
                        return False
                    _time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    self._reopen_if_rotated()
        if self._failing:
            self._failing = False
            log.warning("access log: writes succeed again")
        return True

    def _reopen_if_rotated(self) -> None:
        if not self._owns_fd or self.path is None:
            return
        try:
            now = os.stat(self.path)
            current = os.fstat(self._fd)
            if (now.st_dev, now.st_ino) == (current.st_dev, current.st_ino):
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            fd = self._open()
        except OSError:
            return
        os.close(self._fd)
        self._fd = fd


def _overflow_line(dropped: int) -> bytes:
    return orjson.dumps(
        {"time": _clock.now(), "event": "access_log_overflow", "dropped": dropped},
        option=orjson.OPT_APPEND_NEWLINE,
    )


def _chunks(lines: list[bytes], limit: int) -> list[bytes]:
    """Whole lines grouped into writes of at most ``limit`` bytes (a longer line goes alone)."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for line in lines:
        if group and size + len(line) > limit:
            out.append(b"".join(group))
            group, size = [], 0
        group.append(line)
        size += len(line)
    if group:
        out.append(b"".join(group))
    return out


access_log_key = web.AppKey("access_log", AccessLogSink)


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook: formats one JSON line per request and hands it to the sink.

    aiohttp makes one logger per connection; what a connection's requests share (the address,
    the token, the mount, the user agent) is encoded once while it stays the same, and a line
    is one f-string of JSON values.
    """

    # aiohttp builds the logger itself (once per connection), so configuration travels as class
    # attributes (see access_log_class); unconfigured, only the TCP peer is logged.
    trusted_proxies: tuple[Network, ...] = ()
    sink: AccessLogSink | None = None

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # The connection's last (address, token id, mount, user agent), and the line's parts
        # they make: ``time`` to ``method`` (the address) and ``token_id`` to the end.
        self._shared: tuple[str, str | None, str | None, str | None] | None = None
        self._head = self._tail = ""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Format and queue the line for one answered request."""
        sink = self.sink
        if sink is None:
            return
        # One function, fields read in place: this runs once per request of every install.
        try:
            try:
                facts: RegistryFacts | None = request[REQUEST_FACTS]
            except KeyError:  # not a registry request
                facts = None
            if facts is not None:
                # The registry gate worked these out (the address with the same proxies).
                ip, token, ecosystem, cache = facts.ip, facts.token, facts.ecosystem, facts.cache
            else:
                ip, token, ecosystem, cache = None, None, None, None
            if ip is None:
                # A request refused before routing is a BaseRequest: its peer is all there is.
                if isinstance(request, web.Request):
                    ip = client_ip(request, self.trusted_proxies)
                else:
                    ip = request.remote or "unknown"
            token_id = token.id if token is not None else None
            # The parsed request line and headers, and below the response's status and length,
            # read from aiohttp's own slots rather than through its properties: a property call
            # per field was a tenth of the line's cost (aiohttp is pinned below 4; the access log
            # tests read every field these give).
            message = request._message
            user_agent = message.headers.get(hdrs.USER_AGENT)
            shared = (ip, token_id, ecosystem, user_agent)
            if shared != self._shared:
                self._shared = shared
                self._head = f'","client_ip":{_json(ip)},"method":'
                agent = _json(mask_tokens(user_agent[:MAX_USER_AGENT])) if user_agent else "null"
                self._tail = (
                    f',"token_id":{_json(token_id)},"ecosystem":{_json(ecosystem)},'
                    f'"user_agent":{agent}}}\n'
                )
            method = _METHODS.get(message.method)
            if method is None:
                method = _json(mask_tokens(message.method[:16]))
            path = message.path
            if _PLAIN_PATH.fullmatch(path) is None or "pkg_" in path:
                path = _json(safe_path(request.rel_url))
            else:
                path = f'"{path}"'  # nothing to mask or escape
            micros = int(time * 1_000_000 + 0.5)
            line = (
                f'{{"time":"{_clock.now()}{self._head}{method},"path":{path},'
                f'"status":{response._status},"bytes":{response._body_length},'
                f'"duration_ms":{micros // 1000}{_THOUSANDTHS[micros % 1000]},'
                f'"cache":{_CACHE.get(cache) or _json(cache)}{self._tail}'
            ).encode()
        except Exception:
            # A logging fault must never break serving; say so without the record.
            log.exception("could not format an access log line")
            return
        sink.write(line)

    @property
    def enabled(self) -> bool:
        return self.sink is not None


def access_log_class(
    settings: Settings, sink: AccessLogSink | None = None
) -> type[JsonAccessLogger]:
    """The access logger class writing to ``sink`` with ``settings``' trusted proxies."""
    return type(
        "ConfiguredJsonAccessLogger",
        (JsonAccessLogger,),
        {"trusted_proxies": settings.trusted_proxies, "sink": sink},
    )


def access_logger() -> logging.Logger:
    """The ``pkgate.access`` logger aiohttp is handed (it only checks that one is given)."""
    return logging.getLogger(LOGGER_NAME)
