"""One place where failures become JSON answers: HTTP errors, domain errors, and the unexpected."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tokenapi.errors import InvalidInput, StoreUnavailable

from .registry.policy import POLICY_HEADER, PolicyRefused, Refusal
from .registry.upstream import UpstreamError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_REASON_PHRASE = 300

_REASONS = {
    404: "Not found",
    405: "Method not allowed",
    413: "Request body is too large",
}


def json_error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """A ``{"error": message}`` answer."""
    return web.json_response({"error": message}, status=status, headers=headers)


def policy_refusal(refusal: Refusal) -> web.Response:
    """403 with the refusal as the JSON ``error`` and, for clients that print only the status
    line (yarn, pnpm, pip, poetry), as the reason phrase too (ASCII, one line)."""
    phrase = refusal.message.encode("ascii", "replace").decode().replace("\r", " ")
    response = json_error(403, refusal.message, headers={POLICY_HEADER: refusal.kind.value})
    response.set_status(403, phrase.replace("\n", " ")[:MAX_REASON_PHRASE])
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON body; never let a traceback reach a client."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = _REASONS.get(exc.status) or exc.reason
        headers = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() not in {"content-type", "content-length"}
        }
        return json_error(exc.status, message, headers=headers)
    except PolicyRefused as exc:
        return policy_refusal(exc.refusal)
    except UpstreamError as exc:
        log.warning("upstream failure on %s: %s", request.rel_url.path, exc.message)
        return json_error(exc.status, exc.message)
    except InvalidInput as exc:
        return json_error(400, str(exc))
    except StoreUnavailable as exc:
        log.error("store unavailable: %s", exc)
        return json_error(
            503, "The token store is unavailable; try again shortly", headers={"Retry-After": "5"}
        )
    except (ConnectionResetError, web.RequestPayloadError) as exc:
        log.info("client went away: %s", exc.__class__.__name__)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.path)
        return json_error(500, "Internal server error")
