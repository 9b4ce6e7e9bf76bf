"""The one mapping from failures to ``{"error": ...}`` answers, for the whole server.

Both error answers (the token API routes' ``webio.answering_errors`` and the server's
``proxy.errors.answer_failure``) ask ``failure_for(exc)``: a ``Failure`` (status, a message safe
to show, headers) or None when the exception is not a known failure.  The domain errors are
mapped here; the registry side adds its own (``UpstreamError``, ``PolicyRefused``) with
``register`` (``tokenapi`` never imports ``proxy``).  aiohttp's HTTP errors go through
``http_failure``, parametrised by each server's wording and kept headers.  Each message exists
once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from .errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from .mail import MailError

log = logging.getLogger(__name__)

E = TypeVar("E", bound=BaseException)

STORE_UNAVAILABLE = "The token store is unavailable; try again shortly"
MAIL_FAILED = "The email could not be sent; try again later"
CONFLICT = "The request conflicts with a concurrent change; try again"


@dataclass(frozen=True, slots=True)
class Failure:
    """How a failure is answered."""

    status: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


_MAPPERS: dict[type[BaseException], Callable[[Any], Failure]] = {}


def register(kind: type[E], mapper: Callable[[E], Failure]) -> None:
    """Answer exceptions of ``kind`` (and its subclasses) with what ``mapper`` says."""
    _MAPPERS[kind] = mapper


def failure_for(exc: BaseException) -> Failure | None:
    """The answer for ``exc``, or None when it is not a failure this mapping knows."""
    for kind in type(exc).__mro__:
        mapper = _MAPPERS.get(kind)
        if mapper is not None:
            return mapper(exc)
    return None


def http_failure(
    exc: web.HTTPException,
    *,
    keep_header: Callable[[str], bool],
    reasons: Mapping[int, str] | None = None,
) -> Failure | None:
    """The answer for an aiohttp HTTP error (None for statuses below 400, which pass through).

    The two servers differ only in the wording and the headers they keep: the registries replace
    some reason phrases (``reasons``) and keep every header but the body's, the token API keeps
    ``Allow`` only; ``keep_header`` gets each header name.
    """
    if exc.status < 400:
        return None
    message = (reasons or {}).get(exc.status) or exc.reason
    headers = {k: v for k, v in exc.headers.items() if keep_header(k)}
    return Failure(exc.status, message, headers)


def _store_unavailable(exc: StoreUnavailable) -> Failure:
    log.error("store unavailable: %s", exc)
    return Failure(503, STORE_UNAVAILABLE, {"Retry-After": "5"})


register(InvalidInput, lambda exc: Failure(400, str(exc)))
register(NotFound, lambda exc: Failure(404, "Not found"))
register(Conflict, lambda exc: Failure(409, CONFLICT))
register(MailError, lambda exc: Failure(503, MAIL_FAILED, {"Retry-After": "60"}))
register(StoreUnavailable, _store_unavailable)


__all__ = ["Failure", "failure_for", "http_failure", "register"]
