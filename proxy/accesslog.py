"""The access log: one JSON object per request, on the ``pkgate.access`` logger.

Fields: ``time`` (UTC, ISO 8601), ``client_ip`` (X-Forwarded-For believed only from
``trusted_proxies``), ``method``, ``path`` (the raw path; query values of secret-looking parameters
and anything shaped like a pkgate token masked), ``status``, ``bytes`` (body bytes sent),
``duration_ms``, ``token_id`` (the id, never the secret), ``ecosystem``, ``cache`` (``hit``,
``miss``, ``stale`` or null, from ``proxy.keys.REQUEST_CACHE``) and ``user_agent``.  ``bytes``
counts everything written for the answer, status line and headers included (nginx's
``$bytes_sent``), since a streamed body has no Content-Length to report.

Paths and user agents come from the client: they are length-capped, masked, and written only as
JSON string values, so they cannot forge a log line.  The Authorization header, cookies and a URL's
userinfo are never read here.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from tokenapi.clientip import Network, client_ip
from tokenapi.keys import REQUEST_TOKEN
from tokenapi.store import Token

from .keys import REQUEST_CACHE, REQUEST_ECOSYSTEM
from .settings import Settings

LOGGER_NAME = "pkgate.access"
MASK = "***"
MAX_PATH = 2048
MAX_USER_AGENT = 256

# Anything that looks like a pkgate secret, wherever a client put it.
_TOKEN_SHAPE = re.compile(r"pkg_[0-9A-Za-z]{8,}")
# Query parameters whose values are credentials by name.
_SECRET_PARAM = re.compile(r"token|secret|pass|key|auth|code|sig|session|cred", re.IGNORECASE)


def mask_tokens(text: str) -> str:
    """``text`` as valid UTF-8, with every token-shaped run replaced by ``pkg_***``."""
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


def access_record(
    request: web.BaseRequest,
    response: web.StreamResponse,
    seconds: float,
    trusted_proxies: Iterable[Network] = (),
) -> dict[str, Any]:
    """The log fields of one answered request."""
    token = request.get(REQUEST_TOKEN)
    user_agent = request.headers.get(hdrs.USER_AGENT)
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        # A request refused before routing is a BaseRequest: its peer is all there is.
        "client_ip": client_ip(request, trusted_proxies)
        if isinstance(request, web.Request)
        else request.remote or "unknown",
        "method": mask_tokens(request.method[:16]),
        "path": safe_path(request.rel_url),
        "status": response.status,
        "bytes": response.body_length,
        "duration_ms": round(seconds * 1000, 3),
        "token_id": token.id if isinstance(token, Token) else None,
        "ecosystem": request.get(REQUEST_ECOSYSTEM),
        "cache": request.get(REQUEST_CACHE),
        "user_agent": mask_tokens(user_agent[:MAX_USER_AGENT]) if user_agent else None,
    }


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook writing one JSON line per request."""

    # aiohttp builds the logger itself, so configuration travels as a class attribute
    # (see access_log_class); unconfigured, only the TCP peer is logged.
    trusted_proxies: tuple[Network, ...] = ()

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line for one answered request."""
        try:
            record = access_record(request, response, time, self.trusted_proxies)
            line = orjson.dumps(record).decode()
        except Exception:
            # A logging fault must never break serving; say so without the record.
            self.logger.exception("could not write an access log line")
            return
        self.logger.info(line)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def access_log_class(settings: Settings) -> type[JsonAccessLogger]:
    """The access logger class configured for ``settings`` (its trusted proxies)."""
    return type(
        "ConfiguredJsonAccessLogger",
        (JsonAccessLogger,),
        {"trusted_proxies": settings.trusted_proxies},
    )


def access_logger(stream: IO[str] | None = None) -> logging.Logger:
    """The ``pkgate.access`` logger writing bare JSON lines to ``stream`` (stderr by default)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    # Lines must be pure JSON, so they bypass the root handler's "time level name:" prefix.
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger
