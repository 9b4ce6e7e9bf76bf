"""One place where failures become JSON answers: HTTP errors, domain errors, and the unexpected."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from tokenapi.failures import Failure, failure_for, http_failure, register

from .accesslog import safe_path
from .registry.policy import POLICY_HEADER, PolicyRefused, Refusal
from .registry.upstream import UpstreamError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A registry route's step, behind the gate: an answer at once (a warm hit) or a coroutine that
# gives one (the gate tells the two apart by the coroutine's exact type, which costs less than
# asking isinstance() of an answer: a StreamResponse is a MutableMapping, checked by ABCMeta).
Answer = Coroutine[Any, Any, web.StreamResponse]
Step = Callable[[web.Request], Answer | web.StreamResponse]


MAX_REASON_PHRASE = 300

_REASONS = {
    404: "Not found",
    405: "Method not allowed",
    413: "Request body is too large",
}


JSON_TYPE = "application/json"


def _keep_header(name: str) -> bool:
    # The body is replaced, so its own headers go; the rest (Allow, Location, ...) stay.
    return name.lower() not in {"content-type", "content-length"}


def json_error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """A ``{"error": message}`` answer."""
    return web.json_response({"error": message}, status=status, headers=headers)


register(UpstreamError, lambda exc: Failure(exc.status, exc.message))


def policy_refusal(refusal: Refusal) -> web.Response:
    """403 with the refusal as the JSON ``error`` and, for clients that print only the status
    line (yarn, pnpm, pip, poetry), as the reason phrase too (ASCII, one line)."""
    phrase = refusal.message.encode("ascii", "replace").decode().replace("\r", " ")
    response = json_error(403, refusal.message, headers={POLICY_HEADER: refusal.kind.value})
    response.set_status(403, phrase.replace("\n", " ")[:MAX_REASON_PHRASE])
    return response


def answer_failure(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON answer for a handler's failure ``exc`` (re-raised when not ours to answer).

    A failure after the answer's status line went out cannot become another answer (it would be
    written into the body): the connection is cut instead.
    """
    if answer_started(request):
        log.warning(
            "failure after the answer started on %s: %s",
            safe_path(request.rel_url),
            exc.__class__.__name__,
        )
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the answer had already started") from None
    return error_answer(request, exc)


def answer_started(request: web.BaseRequest) -> bool:
    """Whether bytes of an answer to ``request`` have been written already."""
    return request.writer.output_size > 0


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON answer for ``exc`` (re-raised when it is not a failure to answer here)."""
    if isinstance(exc, web.HTTPException):
        http = (
            None
            if exc.content_type == JSON_TYPE
            else http_failure(exc, keep_header=_keep_header, reasons=_REASONS)
        )
        if http is None:
            raise exc
        return json_error(http.status, http.message, headers=dict(http.headers))
    if isinstance(exc, PolicyRefused):
        return policy_refusal(exc.refusal)
    if isinstance(exc, UpstreamError):
        log.warning("upstream failure on %s: %s", safe_path(request.rel_url), exc.message)
    failure = failure_for(exc)
    if failure is not None:
        return json_error(failure.status, failure.message, headers=dict(failure.headers))
    if isinstance(exc, (ConnectionResetError, web.RequestPayloadError)):
        log.info("client went away: %s", exc.__class__.__name__)
        raise exc
    log.exception(
        "unhandled error on %s %s", request.method, safe_path(request.rel_url), exc_info=exc
    )
    return json_error(500, "Internal server error")
