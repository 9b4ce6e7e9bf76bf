"""The gate of a registry mount: one middleware running its checks in order, then the route.

1. early answers, for requests that must be answered before authentication (npm's login
   requests get the advice on how to get a token, ``proxy.npm.login``);
2. the throttles (``proxy.ratelimit.Throttle.admit``): requests per address and per token;
3. authentication (``proxy.auth.Authenticator``): the token, resolved once, on the request;
4. the route; a refused guess (credentials pkgate never issued) is charged to the address's
   failure budget afterwards (``Throttle.guessed``), which may turn the 401 into a 429.

One middleware rather than one per check: each middleware layer costs a coroutine and a wrapper
on every request of an install, and the checks always run together, in this order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from .auth import Authenticator
from .errors import Handler
from .keys import REQUEST_FACTS, RegistryFacts
from .ratelimit import Throttle

# An answer given before the throttles and authentication, or None to go on.
EarlyAnswer = Callable[[web.Request], web.Response | None]

# On each registry sub-app: its early answers, which its routes' setup may add to.
early_answers_key: Final = web.AppKey("early_answers", list[EarlyAnswer])


def registry_gate(
    ecosystem: str, challenge: str, root: web.Application, early: list[EarlyAnswer]
) -> Middleware:
    """The middleware guarding one registry mount; shared state is read from ``root``."""
    throttle = Throttle(root)
    authenticate = Authenticator(ecosystem, challenge, root)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        facts = request[REQUEST_FACTS] = RegistryFacts(ecosystem)
        for answer in early:
            answered = answer(request)
            if answered is not None:
                return answered
        refused = throttle.admit(request, facts)
        if refused is not None:
            return refused
        refused = await authenticate(request, facts)
        if refused is None:
            return await handler(request)
        if facts.auth_failure == "invalid":
            return throttle.guessed(facts) or refused
        return refused

    return gate
